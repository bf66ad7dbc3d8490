"""Functional optimizers over parameter trees, in the style of JAX's ``example_libraries``.

An optimizer is a pair of pure functions: ``init(params) -> state`` and
``update(params, grads, state, ...) -> (params, state)``. Nothing is mutated.

SGD:   θ ← θ − η g        (one array: ``descend``, one autograd primitive, as MAML's inner step)
Adam (Kingma & Ba 2015, Algorithm 1), with t counting from 1:
       m ← β1 m + (1 − β1) g
       v ← β2 v + (1 − β2) g²
       θ ← θ − η · (m / (1 − β1ᵗ)) / (√(v / (1 − β2ᵗ)) + ε)
Global-norm clipping (Pascanu et al. 2013; Chainer's GradientClipping):
       g ← g · min(1, c / ‖g‖),  ‖g‖² = Σ over every leaf of Σ g²

Checks.  The updates refuse a learning rate that is negative or not finite, Adam's β1, β2
outside [0, 1) and ε ≤ 0; ``adam_update`` and ``clip_by_global_norm`` also refuse NaN or inf
in the gradients (and Adam in the params), naming the leaf.  ``check=False`` skips them, for a
caller that validated its inputs at its own entry.
"""

import math
from collections import namedtuple

import autograd.numpy as anp
from autograd.extend import defvjp, primitive

from refmeta import checks
from refmeta.nn import trees
from refmeta.nn.conv import sum_to

__all__ = ["AdamState", "descend", "sgd_update", "adam_init", "adam_update", "clip_by_global_norm"]

AdamState = namedtuple("AdamState", ["step", "m", "v"])


@primitive
def descend(theta, grad, lr):
    """θ − lr · g for one array, as one recorded operation (a product and a difference would be
    two): MAML's inner step, which its meta-gradient differentiates through."""
    return theta - lr * grad


defvjp(descend, lambda ans, theta, grad, lr: lambda h: sum_to(h, anp.shape(theta)),
       lambda ans, theta, grad, lr: lambda h: sum_to(-lr * h, anp.shape(grad)))


def sgd_update(params, grads, lr, check=True):
    """One step of plain gradient descent: θ − lr · g, ``descend`` on every leaf."""
    if check:
        checks.nonnegative("lr", lr)
    return trees.map_tree(lambda theta, g: descend(theta, g, lr), params, grads)


def adam_init(params):
    """Zero first and second moments, step 0."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of arrays; got {type(params).__name__}")
    if not params:
        raise ValueError("params is an empty tree: Adam has nothing to optimise")
    return AdamState(step=0, m=trees.zeros_like(params), v=trees.zeros_like(params))


def adam_update(params, grads, state, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, check=True):
    """One Adam step. Returns (new_params, new_state)."""
    if check:
        _check_adam(params, grads, state, lr, b1, b2, eps)
    step = state.step + 1
    m = trees.map_tree(lambda m, g: b1 * m + (1 - b1) * g, state.m, grads)
    v = trees.map_tree(lambda v, g: b2 * v + (1 - b2) * g ** 2, state.v, grads)
    m_hat_scale, v_hat_scale = 1.0 / (1 - b1 ** step), 1.0 / (1 - b2 ** step)
    new_params = trees.map_tree(
        lambda p, m, v: p - lr * (m * m_hat_scale) / (anp.sqrt(v * v_hat_scale) + eps),
        params, m, v)
    return new_params, AdamState(step=step, m=m, v=v)


def clip_by_global_norm(grads, max_norm, check=True):
    """g · min(1, max_norm / ‖g‖), ‖g‖ over every leaf; ``max_norm`` None leaves g as it is.

    ‖g‖ is read to the host once (a Python float) to choose the branch.
    """
    if max_norm is None:
        return grads
    if check:
        checks.positive("max_norm", max_norm)
    norm = math.sqrt(float(trees.vdot(grads, grads)))
    if check and not math.isfinite(norm):
        checks.finite_tree("grads", grads)                  # names a NaN or inf leaf
        raise ValueError(f"the global norm of grads overflows (every leaf is finite, ‖g‖ = {norm})")
    return trees.scale(grads, max_norm / norm) if norm > max_norm else grads


def _check_adam(params, grads, state, lr, b1, b2, eps):
    checks.nonnegative("lr", lr)
    checks.probability("b1", b1, high_open=True)
    checks.probability("b2", b2, high_open=True)
    checks.positive("eps", eps)
    checks.instance("state", state, AdamState)
    checks.finite_tree("params", params)
    checks.finite_tree("grads", grads)
