"""Functional optimizers over parameter trees, in the style of JAX's ``example_libraries``.

An optimizer is a pair of pure functions: ``init(params) -> state`` and
``update(params, grads, state, ...) -> (params, state)``. Nothing is mutated.

SGD:   θ ← θ − η g
Adam (Kingma & Ba 2015, Algorithm 1), with t counting from 1:
       m ← β1 m + (1 − β1) g
       v ← β2 v + (1 − β2) g²
       θ ← θ − η · (m / (1 − β1ᵗ)) / (√(v / (1 − β2ᵗ)) + ε)
"""

from collections import namedtuple

import autograd.numpy as anp

from refmeta.nn import trees

AdamState = namedtuple("AdamState", ["step", "m", "v"])


def sgd_update(params, grads, lr):
    """One step of plain gradient descent: θ − lr · g."""
    return trees.subtract(params, trees.scale(grads, lr))


def adam_init(params):
    """Zero first and second moments, step 0."""
    return AdamState(step=0, m=trees.zeros_like(params), v=trees.zeros_like(params))


def adam_update(params, grads, state, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """One Adam step. Returns (new_params, new_state)."""
    step = state.step + 1
    m = trees.map_tree(lambda m, g: b1 * m + (1 - b1) * g, state.m, grads)
    v = trees.map_tree(lambda v, g: b2 * v + (1 - b2) * g ** 2, state.v, grads)
    m_hat_scale, v_hat_scale = 1.0 / (1 - b1 ** step), 1.0 / (1 - b2 ** step)
    new_params = trees.map_tree(
        lambda p, m, v: p - lr * (m * m_hat_scale) / (anp.sqrt(v * v_hat_scale) + eps),
        params, m, v)
    return new_params, AdamState(step=step, m=m, v=v)
