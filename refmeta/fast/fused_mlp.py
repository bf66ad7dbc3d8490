"""An MLP with squared-error loss whose gradient and Hessian-vector product are written out.

``losses.model_loss(models.mlp_apply, losses.mse)`` is the readable definition, and autograd
differentiates it one array operation at a time.  On a small model such as the sinusoid
MLP 1-40-40-1 that costs far more in Python than in arithmetic: a second-order MAML
meta-gradient makes about 130 primitive calls, and autograd about 10 000 Python calls to
trace and differentiate them.  This module computes the same function with three
hand-differentiated functions on one flat parameter vector θ, so autograd sees a handful of
primitives instead:

    loss(θ)        forward pass and the loss, one per task                        (1)
    ∇loss(θ)       backpropagation                                                 (2)
    H(θ) v         Pearlmutter's R-operator, R_v{∇loss(θ)} (Neural Computation, 1994) (3)

autograd's VJP of (1) is g·(2), and its VJP of (2) is (3) (H is symmetric), so the exact
second-order MAML meta-gradient, (I − αH)… ∇L^Q, comes out of the unchanged ``refmeta.maml``.
Third derivatives in θ are not provided: autograd raises NotImplementedError.

Model, with a_0 = x, layers l = 0 … L−1, σ = ReLU (derivative 0 at 0) or tanh:

    z_l = a_l W_l + b_l,    a_{l+1} = σ(z_l),    prediction p = z_{L−1}
    loss = c Σ_{n,d} (p − y)²,   c = 1/(n·d) for reduction "mean", 1/d for "sum"  (losses.mse)

Backpropagation, δ = ∂loss/∂z:

    δ_{L−1} = 2c (p − y);   ∇W_l = a_lᵀ δ_l,   ∇b_l = Σ_n δ_l,   δ_{l−1} = (δ_l W_lᵀ) ⊙ σ'(z_{l−1})

R-operator along v = (V_l, v_l), R{·} the directional derivative of each quantity above:

    R{a_0} = 0,   R{z_l} = R{a_l} W_l + a_l V_l + v_l,   R{a_{l+1}} = σ'(z_l) ⊙ R{z_l}
    R{δ_{L−1}} = 2c R{z_{L−1}}
    R{∇W_l} = R{a_l}ᵀ δ_l + a_lᵀ R{δ_l},   R{∇b_l} = Σ_n R{δ_l}
    R{δ_{l−1}} = (R{δ_l} W_lᵀ + δ_l V_lᵀ) ⊙ σ'(z_{l−1}) + (δ_l W_lᵀ) ⊙ σ''(z_{l−1}) ⊙ R{z_{l−1}}

with σ' = 1 − a², σ'' = −2a(1 − a²) for tanh and σ' = [z > 0], σ'' = 0 for ReLU.

Use::

    mlp = FusedMLP((1, 40, 40, 1), activation="relu")
    config = maml.MAMLConfig(model=mlp.model())  # a contract.Model whose loss is mlp.loss_fn
    flat = mlp.pack(params)                      # {"mlp.flat": (P,)} from models.mlp_init's tree
    g = maml.meta_gradient(flat, episode, config)
    mlp.unpack(g)                                # back to {"dense0.w": …}
    mlp.meta_gradient(flat, episode, config)     # the same, MAML's Eq. (3) written out, no autograd

Every leading axis of θ (the task axis that ``maml`` adds) must match x's leading axes:
the tests check (1)–(3) and the MAML meta-gradient against the generic path and against
finite differences.
"""

import autograd.numpy as anp
import numpy as np
from autograd.extend import Box, defvjp, primitive
from autograd.tracer import getval

from refmeta import contract
from refmeta.nn.models import ACTIVATIONS, mlp_apply, mlp_init

FLAT = "mlp.flat"
REDUCTIONS = ("mean", "sum")


class FusedMLP:
    """Layer sizes d_0 … d_L and the hidden activation; see the module docstring."""

    def __init__(self, sizes, activation="relu"):
        sizes = tuple(sizes)
        if len(sizes) < 2 or not all(isinstance(d, int) and d >= 1 for d in sizes):
            raise ValueError(f"sizes must be at least two positive integers d_0 … d_L; got {sizes!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")
        self.sizes, self.activation = sizes, activation
        self.layout, offset = [], 0           # (name, shape, start) in θ, in the order w0, b0, w1, …
        for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            for name, shape in ((f"dense{i}.w", (d_in, d_out)), (f"dense{i}.b", (d_out,))):
                self.layout.append((name, shape, offset))
                offset += d_in * d_out if len(shape) == 2 else d_out
        self.size = offset

    def pack(self, params):
        """{"dense{i}.w", "dense{i}.b"} (leaves (..., shape)) -> {"mlp.flat": (..., P)}."""
        expected = sorted(name for name, _, _ in self.layout)
        if sorted(params) != expected:
            raise ValueError(f"pack: expected the leaves {expected}; got {sorted(params)}")
        batch = anp.shape(params[self.layout[0][0]])[:-2]
        parts = []
        for name, shape, _ in self.layout:
            if anp.shape(params[name]) != batch + shape:
                raise ValueError(f"pack: {name} must have shape {batch + shape}; got {anp.shape(params[name])}")
            parts.append(anp.reshape(params[name], batch + (-1,)))
        return {FLAT: anp.concatenate(parts, axis=-1)}

    def unpack(self, flat):
        """{"mlp.flat": (..., P)} -> the models.mlp_apply tree with the same leading axes."""
        theta = flat[FLAT] if isinstance(flat, dict) else flat
        return dict(_split(self, theta))

    def model(self):
        """This MLP as a ``contract.Model`` on θ = {"mlp.flat": (P,)}: init packs
        ``models.mlp_init``'s tree, apply is ``models.mlp_apply`` on the unpacked θ, and the
        loss is ``loss_fn`` (reductions "mean" and "sum")."""
        name = f"fused mlp {'-'.join(map(str, self.sizes))} {self.activation}, mse"
        return contract.Model(lambda rng: self.pack(mlp_init(rng, self.sizes)),
                              lambda params, x: mlp_apply(self.unpack(params), x, self.activation),
                              self.loss_fn, name)

    def loss_fn(self, params, x, y, reduction):
        """The ``maml`` / ``reptile`` loss interface: one loss (1) per task, shape x.shape[:-2]."""
        theta = params[FLAT]
        self._check(theta, x, y, reduction)
        if isinstance(x, Box) or isinstance(y, Box):
            raise NotImplementedError("fused_mlp differentiates with respect to θ only (x and y are "
                                      "data); use models.mlp_apply for input gradients")
        return _loss(_Pass(self, reduction, x, y, getval(theta)), theta)

    def _check(self, theta, x, y, reduction):
        if reduction not in REDUCTIONS:
            raise ValueError(f"FusedMLP loss reduction must be one of {REDUCTIONS}; got {reduction!r}")
        batch, n = anp.shape(x)[:-2], anp.shape(x)[-2]
        expected = {"theta": batch + (self.size,), "x": batch + (n, self.sizes[0]),
                    "y": batch + (n, self.sizes[-1])}
        for name, value in (("theta", theta), ("x", x), ("y", y)):
            if anp.shape(value) != expected[name]:
                raise ValueError(f"FusedMLP {self.sizes}: {name} must have shape {expected[name]} "
                                 f"(leading axes from x {anp.shape(x)}); got {anp.shape(value)}")

    def meta_gradient(self, params, episode, config):
        """MAML's meta-gradient, ``maml.meta_gradient(params, episode, config)`` with
        ``config.model = self.model()``, by the paper's chain rule written out, with no autograd:

            θ_i^(j+1) = θ_i^(j) − α ∇L_i^S(θ_i^(j))                   (MAML (1), k times)
            g_i = (I − αH_0)(I − αH_1)…(I − αH_{k−1}) ∇L_i^Q(θ_i^(k))   (MAML (3); FOMAML: g_i = ∇L_i^Q)
            meta-gradient = Σ_i g_i, or its mean over the T tasks (config.task_reduction)

        with H_j v from (3) above, applied right to left.  Same conventions as ``refmeta.maml``
        (config is a ``maml.MAMLConfig``; its model is not read: this MLP is the model);
        params {"mlp.flat": (P,)}, episode a meta-batch (T, n, d).
        """
        theta = params[FLAT]
        if isinstance(theta, Box):
            raise TypeError("FusedMLP.meta_gradient is not differentiable: differentiate "
                            "maml.loss with config.model = FusedMLP.model() instead")
        if anp.shape(theta) != (self.size,):
            raise ValueError(f"meta_gradient takes meta-parameters {{'{FLAT}': ({self.size},)}}; "
                             f"got shape {anp.shape(theta)}")
        n_tasks = anp.shape(episode.support_x)[0]
        thetas, passes = [anp.broadcast_to(theta, (n_tasks, self.size))], []
        for _ in range(config.inner_steps):
            passes.append(self._pass(config.inner_reduction, episode.support_x, episode.support_y, thetas[-1]))
            thetas.append(thetas[-1] - config.inner_lr * _backprop(passes[-1]))
        query = self._pass(config.query_reduction, episode.query_x, episode.query_y, thetas[-1])
        g = _backprop(query)                                          # ∇L_i^Q(θ_i^(k))
        if not config.first_order:
            for j in reversed(range(config.inner_steps)):            # g ← (I − αH_j) g
                g = g - config.inner_lr * _hessian_vector(passes[j], thetas[j], g)
        total = g.sum(axis=0)
        return {FLAT: total / n_tasks if config.task_reduction == "mean" else total}

    def _pass(self, reduction, x, y, theta):
        self._check(theta, x, y, reduction)
        return _Pass(self, reduction, x, y, theta)


def _split(mlp, theta, reshape=anp.reshape):
    """(name, view) of every layer's weights inside the flat θ (..., P)."""
    batch = anp.shape(theta)[:-1]
    for name, shape, start in mlp.layout:
        stop = start + (shape[0] * shape[1] if len(shape) == 2 else shape[0])
        yield name, reshape(theta[..., start:stop], batch + shape)


# Below, inside the primitives, arrays are plain (numpy, CuPy, StrictArray): array methods
# and numpy functions (which dispatch to the array's own module) skip autograd's wrappers.

class _Pass:
    """The forward pass at one value of θ, shared by (1), (2) and (3) at that θ.

    ``loss_fn`` makes one per call, from θ's value; the primitives below take it alongside θ
    (which autograd differentiates), so each loss evaluation runs the network forward once and
    backpropagates at most once, however many derivatives autograd asks of it.
    """

    def __init__(self, mlp, reduction, x, y, theta):
        self.mlp, self.weights = mlp, _weights(mlp, theta)
        self.pre, self.act = [], [x]             # z_l and a_l (a_0 = x)
        for l, (w, b) in enumerate(self.weights):
            self.pre.append(_mm(self.act[l], w) + b[..., None, :])
            if l < len(self.weights) - 1:
                z = self.pre[l]
                self.act.append(z * (z > 0) if mlp.activation == "relu" else np.tanh(z))
        self.slopes = [_slopes(mlp.activation, z, a) for z, a in zip(self.pre[:-1], self.act[1:])]
        n, d = anp.shape(y)[-2], anp.shape(y)[-1]
        self.c = 1.0 / (n * d) if reduction == "mean" else 1.0 / d
        self.residual = self.pre[-1] - y
        self.batch = theta.shape[:-1]
        self._backward = None

    def backward(self):
        """δ_l and δ_l W_lᵀ for every layer, computed on first use."""
        if self._backward is None:
            deltas, backs = [None] * len(self.weights), [None] * len(self.weights)
            deltas[-1] = 2 * self.c * self.residual
            for l in reversed(range(1, len(self.weights))):
                backs[l] = _mm(deltas[l], _t(self.weights[l][0]))
                deltas[l - 1] = backs[l] * self.slopes[l - 1][0]
            self._backward = deltas, backs
        return self._backward


def _weights(mlp, theta):
    """[(W_l, b_l)] as views into θ."""
    views = list(_split(mlp, theta, reshape=lambda a, shape: a.reshape(shape)))
    return [(w, b) for (_, w), (_, b) in zip(views[0::2], views[1::2])]


def _t(a):
    return a.swapaxes(-1, -2)


def _mm(a, b):
    """a @ b; an outer product (inner dimension 1, as the sinusoid's d_0 = d_L = 1) as a
    broadcast product, since numpy's batched matmul takes a slow loop there."""
    return a * b if a.shape[-1] == 1 else a @ b


def _slopes(activation, z, a):
    """σ'(z) and σ''(z) (None for ReLU), given a = σ(z)."""
    if activation == "relu":
        return (z > 0).astype(z.dtype), None
    slope = 1 - a * a
    return slope, -2 * a * slope


@primitive
def _loss(state, theta):
    """(1): per-task loss, shape x.shape[:-2]."""
    return state.c * (state.residual * state.residual).sum(axis=(-2, -1))


def _backprop(state):
    """(2): ∇loss(θ), shape (..., P), by backpropagation."""
    deltas, _ = state.backward()
    return _flatten([(_mm(_t(a), delta), delta.sum(axis=-2)) for a, delta in zip(state.act, deltas)],
                    state.batch)


@primitive
def _gradient(state, theta, g):
    """(2) scaled per task, g ∇loss(θ) with g (...): the VJP of (1)."""
    return g[..., None] * _backprop(state)


@primitive
def _hessian_vector(state, theta, v):
    """(3): H(θ) v, shape (..., P), by the R-operator; v has θ's shape."""
    deltas, backs = state.backward()
    directions = _weights(state.mlp, v)
    n_layers = len(state.weights)
    r_pre, r_act = [], [None]                                  # R{a_0} = 0
    for l, ((w, _), (vw, vb)) in enumerate(zip(state.weights, directions)):
        r_z = _mm(state.act[l], vw) + vb[..., None, :]
        r_pre.append(r_z if l == 0 else r_z + _mm(r_act[l], w))
        if l < n_layers - 1:
            r_act.append(state.slopes[l][0] * r_pre[l])
    r_delta = 2 * state.c * r_pre[-1]
    grads = [None] * n_layers
    for l in reversed(range(n_layers)):
        r_w = _mm(_t(state.act[l]), r_delta)
        grads[l] = (r_w if l == 0 else r_w + _mm(_t(r_act[l]), deltas[l]), r_delta.sum(axis=-2))
        if l > 0:
            slope, curvature = state.slopes[l - 1]
            r_back = _mm(r_delta, _t(state.weights[l][0])) + _mm(deltas[l], _t(directions[l][0]))
            r_delta = r_back * slope
            if curvature is not None:
                r_delta = r_delta + backs[l] * curvature * r_pre[l - 1]
    return _flatten(grads, state.batch)


def _flatten(grads, batch):
    return np.concatenate([g.reshape(batch + (-1,)) for pair in grads for g in pair], axis=-1)


# autograd: the VJP of (1) is g·(2) and the VJP of g·(2) in θ is (3) of g·v (H is symmetric).  (3) is linear
# in v with the same symmetric H; its derivative in θ (third derivatives) is not provided, and
# autograd raises NotImplementedError as soon as θ reaches (3) inside a trace.
defvjp(_loss, lambda ans, state, theta: lambda g: _gradient(state, theta, g), argnums=[1])
defvjp(_gradient,
       lambda ans, state, theta, g: lambda v: _hessian_vector(state, theta, anp.reshape(g, anp.shape(g) + (1,)) * v),
       lambda ans, state, theta, g: lambda v: anp.sum(v * _gradient(state, theta, anp.ones_like(g)), axis=-1),
       argnums=[1, 2])
defvjp(_hessian_vector, lambda ans, state, theta, v: lambda g: _hessian_vector(state, theta, g), argnums=[2])
