"""Fast paths: models that supply their own derivatives, for speed only.

``fused_mlp``: the MLP with squared-error loss, its gradient by backpropagation and its
Hessian-vector product by Pearlmutter's R-operator written out as autograd primitives, so the
unchanged ``refmeta.maml`` (second order included) and ``refmeta.reptile`` train a small MLP
through a handful of primitives; ``FusedMLP.meta_gradient`` is MAML's Eq. (3) written out.

Nothing here is needed for a correct result: each fast path computes what a generic
``contract.Model`` computes, equal to it to rounding in the tests (the MAML meta-gradient
included), and refuses the derivatives it does not provide.  The algorithms, the reference
cases and ``nn`` never import this package; the demos and the benchmarks choose it.
"""
