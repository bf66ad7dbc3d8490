"""The 2×2 max-pool under ``layers.max_pool_2x2``: three primitives closed under adjoints.

    max_pool(x) -> (y, right, lower)   y (..., H//2, W//2), the maximum of every 2×2 window of
                                       x (..., H, W), and the window's choice (below)
    pool_scatter(y, choice, shape)     y put back at the chosen position of each window, zeros elsewhere
    pool_gather(x, choice)             the entry of x at the chosen position of each window

Windows have stride 2; a last row or column past the last whole window (odd H or W) is dropped.
A window is pooled in two halvings, its two columns first, then its two rows:

    columns  c[..., h, q] = max(x[..., h, 2q], x[..., h, 2q + 1])                (..., H, W//2)
    rows     y[..., p, q] = max(c[..., 2p, q], c[..., 2p + 1, q])                (..., H//2, W//2)

The choice is the two halvings' picks: ``right`` (..., H, W//2), true where a row's second column
wins, and ``lower`` (..., H//2, W//2), true where the second row wins.  ``second_wins`` decides a
pair: the second only if it is strictly larger, so a tie goes to the first.  The gradient of a
window therefore goes to one entry, the *first* maximum in row-major order (the first row holding
the maximum, its first column holding it), as in PyTorch; autograd's ``max`` would split ties.
Tests swap ``second_wins`` for ``≥`` (the last maximum) to show that no reference case hinges on a
tie (docs/reference-cases.md).

The forward pass makes the choice on its way to y and returns it beside y; the layer reads y
through ``pooled``, whose VJP sends the choice zero gradients (it is boolean, and constant).

VJPs.  The pool is linear once the choice is fixed, and the choice is constant wherever the
derivative exists, so

    max_pool:      x̄ = pool_scatter(ḡ, choice(x))
    pool_scatter:  ȳ = pool_gather(ḡ, choice)         (scatter and gather are each other's adjoint)
    pool_gather:   x̄ = pool_scatter(ḡ, choice)

and autograd differentiates through them to any order.  The scatter is two halvings undone, each
exact: the gradient ḡ goes to the lower row as ḡ·lower and to the upper as ḡ − ḡ·lower (ḡ or 0),
then likewise to the right and left columns.

Inside the primitives only operators, ufuncs with ``out=`` views, ``numpy.where``, basic slicing
and ``numpy.empty_like`` are used, so the arrays never leave their device.  A new array takes the
layout of the one it comes from (``empty_like`` keeps the order of the axes in memory), so a
channel-major array (see ``refmeta.nn.conv``) stays channel-major through the pool and back.
"""

import autograd.numpy as anp
import numpy as np
from autograd.extend import defvjp, primitive
from autograd.tracer import getval

__all__ = ["max_pool", "pooled", "pool_scatter", "pool_gather", "window_choice", "second_wins"]


def second_wins(first, second):
    """True where the second of a pair is its maximum: strictly larger, a tie goes to the first."""
    return second > first


def _halves(x, axis):
    """The (first, second) entries of the pairs along the last (-1) or second-last (-2) axis, views
    of x cut to an even length."""
    even = 2 * (x.shape[axis] // 2)
    if axis == -1:
        return x[..., 0:even:2], x[..., 1:even:2]
    return x[..., 0:even:2, :], x[..., 1:even:2, :]


@primitive
def max_pool(x):
    """(y, right, lower): y[..., p, q] = max of the 2×2 window (p, q) of x (..., H, W), y (..., H // 2,
    W // 2), and the picks of the two halvings, which the VJP reads (``pooled`` passes y on)."""
    left, right = _halves(x, -1)
    pick_right = second_wins(left, right)
    top, bottom = _halves(np.maximum(left, right), -2)          # each row's pair maximum
    return np.maximum(top, bottom), pick_right, second_wins(top, bottom)


def window_choice(x):
    """(right (..., H, W//2), lower (..., H//2, W//2)): the picks of the two halvings (raw arrays)."""
    return max_pool.fun(x)[1:]


@primitive
def pooled(triple):
    """y of max_pool's (y, right, lower)."""
    return triple[0]


def _pooled_vjp(ans, triple):
    zeros = anp.zeros_like(triple[1]), anp.zeros_like(triple[2])      # the picks: no gradient
    return lambda g: (g,) + zeros


@primitive
def pool_scatter(y, choice, x_shape):
    """The adjoint of pool_gather: y[..., p, q] goes to the chosen entry of window (p, q), zeros
    to the rest (and to the dropped odd row and column) of an array of ``x_shape``."""
    right, lower = choice
    height, width = 2 * (x_shape[-2] // 2), 2 * (x_shape[-1] // 2)
    columns = np.empty_like(y, shape=y.shape[:-2] + (height, width // 2))  # y's layout
    top, bottom = _halves(columns, -2)
    np.multiply(y, lower, out=bottom)                           # ḡ·lower to the second row
    np.subtract(y, bottom, out=top)                             # ḡ − ḡ·lower to the first
    x = np.empty_like(y, shape=tuple(x_shape))
    left, right_half = _halves(x[..., :height, :], -1)
    np.multiply(columns, right[..., :height, :], out=right_half)
    np.subtract(columns, right_half, out=left)
    x[..., height:, :] = 0                                      # the dropped row and column
    x[..., :height, width:] = 0
    return x


@primitive
def pool_gather(x, choice):
    """y[..., p, q] = x at the chosen entry of window (p, q)."""
    right, lower = choice
    height = 2 * (x.shape[-2] // 2)
    columns = np.where(right[..., :height, :], *reversed(_halves(x[..., :height, :], -1)))
    return np.where(lower, *reversed(_halves(columns, -2)))


defvjp(max_pool, lambda ans, x: (lambda choice, shape: lambda g: pool_scatter(g[0], choice, shape))(
    (getval(ans[1]), getval(ans[2])), x.shape))
defvjp(pooled, _pooled_vjp)
defvjp(pool_gather, lambda ans, x, choice: lambda g: pool_scatter(g, choice, x.shape))
defvjp(pool_scatter, lambda ans, y, choice, x_shape: lambda g: pool_gather(g, choice))
