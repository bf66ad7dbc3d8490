"""Layers: dense, convolution, max-pool, batch norm and the LSTM cell, as pure functions.

**Every layer takes arbitrary leading (task) axes on the data and on the params, and
broadcasts them** against each other: an unbatched kernel applies to a meta-batch of images,
a meta-batch of kernels (``trees.broadcast_tasks``) to a meta-batch of images, task by task.
The networks built from these layers (the MLP and the 4-block conv net) are in
``refmeta.nn.models``.

    dense        y = x W + b                        x (..., n, d_in), W (..., d_in, d_out)
    relu         max(x, 0), derivative 0 at 0 (as PyTorch)
    conv2d       y[m,f] = Σ_c w[f,c] ⋆ x[m,c] + b[f] x (..., n, C, H, W), w (..., F, C, 3, 3) OIHW
                 3×3, zero padding 1 on every side (PyTorch ``padding=1``), stride 1 or 2,
                 H' = (H + 2 − 3) // stride + 1.  TF 'SAME' pads (0, 1) at stride 2 for even
                 H, so a stride-2 TF net sees shifted windows: port weights with care.
    max_pool_2x2 y = max of each 2×2 window, stride 2; the gradient goes to the first maximum
                 in row-major order (PyTorch's choice; autograd's ``max`` would split ties).
                 rounding "floor" (H' = ⌊H/2⌋, PyTorch's default): an odd last row or column
                 is dropped; "ceil" (H' = ⌈H/2⌉: Chainer's default cover_all=True, PyTorch's
                 ceil_mode=True without padding): its windows cover that row or column alone.
    batch_norm, batch_moments, update_running    in ``refmeta.nn.norm`` (imported here)
    lstm_cell    [i, f, g, o] = x W_x + h W_h + b,  c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g),
                 h' = σ(o) ⊙ tanh(c')      x (..., n, d_in), h (..., n, d_h), c (..., n, H),
                 W_x (..., d_in, 4H), W_h (..., d_h, 4H), b (..., 4H); gate order i, f, g, o
                 (PyTorch's).  d_h may differ from H: the attention LSTM of Matching Networks
                 feeds [h, r] (2H) as its recurrent input.  One bias (PyTorch has b_ih + b_hh).

``lstm_init(rng, ...)`` returns host float64 params, drawn as PyTorch's nn.LSTMCell draws them.

Primitives.  dense and relu are one autograd primitive each, with their VJPs written out
(x̄ = ḡ Wᵀ, W̄ = xᵀ ḡ, b̄ = Σ ḡ; x̄ = ḡ · [x > 0]) from primitives that have theirs, so they
differentiate to any order at the cost of one recorded operation instead of three (a matrix
product, a broadcast and a sum) or two (a comparison and a product).  The convolution and the
pool are the primitives of ``refmeta.nn.conv`` and ``refmeta.nn.pool``.

Kinks.  ``relu`` and ``max_pool_2x2`` report their inputs to ``refmeta.nn.kinks``, which reads
them only while a reference case is built (the margins of docs/reference-cases.md).

Checks.  ``lstm_init`` refuses sizes that are not integers ≥ 1 and a ``rng`` that is not a
``numpy.random.Generator``.  The layers run inside the algorithms' differentiated code, whose
entry points check the params against ``init``'s template, so they keep only cheap checks of
names and shapes (never a scan of the values).
"""

import autograd.numpy as anp
import numpy as np
from autograd.extend import defvjp, primitive
from autograd.tracer import getval

from refmeta import checks
from refmeta.nn import conv, kinks, pool
from refmeta.nn.conv import sum_to
from refmeta.nn.norm import BN_MODES, batch_moments, batch_norm, update_running  # noqa: F401

__all__ = ["dense", "relu", "tanh", "conv2d", "max_pool_2x2", "batch_norm", "batch_moments",
           "update_running", "sigmoid", "lstm_init", "lstm_cell"]

POOL_ROUNDINGS = ("floor", "ceil")


# ----- batched matrix products with their adjoints -----
@primitive
def _matmul(a, b):
    """a @ b over the last two axes (both ndim ≥ 2), leading axes broadcast; raw arrays."""
    return np.matmul(a, b)


@primitive
def _matmul_nt(a, b):
    """a @ bᵀ, bᵀ swapping b's last two axes (a view: BLAS reads it transposed)."""
    return np.matmul(a, b.swapaxes(-1, -2))


@primitive
def _matmul_tn(a, b):
    """aᵀ @ b."""
    return np.matmul(a.swapaxes(-1, -2), b)


# Each adjoint is one matrix product (autograd's own matmul VJP adds reshapes and always
# sums size-1 axes, a full copy of the gradient); the three products are closed under
# taking adjoints, so they differentiate to any order.
defvjp(_matmul, lambda ans, a, b: lambda g: sum_to(_matmul_nt(g, b), anp.shape(a)),
       lambda ans, a, b: lambda g: sum_to(_matmul_tn(a, g), anp.shape(b)))
defvjp(_matmul_nt, lambda ans, a, b: lambda g: sum_to(_matmul(g, b), anp.shape(a)),
       lambda ans, a, b: lambda g: sum_to(_matmul_tn(g, a), anp.shape(b)))
defvjp(_matmul_tn, lambda ans, a, b: lambda g: sum_to(_matmul_nt(b, g), anp.shape(a)),
       lambda ans, a, b: lambda g: sum_to(_matmul(a, g), anp.shape(b)))


# ----- dense and the activations -----
@primitive
def _dense(x, w, b):
    """x @ w + b, b (..., d_out) broadcast over the example axis; raw arrays."""
    return conv.in_place(np.add, np.matmul(x, w), b[..., None, :])


defvjp(_dense, lambda ans, x, w, b: lambda g: sum_to(_matmul_nt(g, w), anp.shape(x)),
       lambda ans, x, w, b: lambda g: sum_to(_matmul_tn(x, g), anp.shape(w)),
       lambda ans, x, w, b: lambda g: conv.sum_channels(g, anp.shape(b), -1))


def dense(x, w, b):
    """x (..., n, d_in), w (..., d_in, d_out), b (..., d_out) -> (..., n, d_out)."""
    if anp.ndim(w) < 2 or anp.ndim(x) < 2 or anp.shape(x)[-1] != anp.shape(w)[-2]:
        raise ValueError(f"dense: w (..., d_in, d_out) {anp.shape(w)} expects x (..., n, d_in); "
                         f"got x {anp.shape(x)}")
    if anp.ndim(b) < 1 or anp.shape(b)[-1] != anp.shape(w)[-1]:
        raise ValueError(f"dense: b must have d_out={anp.shape(w)[-1]} entries; got b {anp.shape(b)}")
    return _dense(x, w, b)


@primitive
def _relu(x):
    return np.maximum(x, 0)


defvjp(_relu, lambda ans, x: (lambda positive: lambda g: g * positive)(getval(x) > 0))


def relu(x):
    """max(x, 0), with derivative 0 at 0 (as PyTorch)."""
    kinks.relu(x)                       # a case builder records the margin; otherwise nothing
    return _relu(x)


def tanh(x):
    return anp.tanh(x)


# ----- convolution and pooling -----
def conv2d(x, w, b=None, stride=1):
    """3×3 convolution, zero padding 1, stride 1 or 2 (cross-correlation, as PyTorch).

    Args:
        x: (..., n, C, H, W).  w: (..., F, C, 3, 3).  b: (..., F) or None.
    Returns:
        (..., n, F, H', W') with H' = (H − 1) // stride + 1.
    """
    checks.integer("conv2d stride", stride, minimum=1, maximum=2)
    if anp.ndim(x) < 4:
        raise ValueError(f"conv2d expects x (..., n, C, H, W); got shape {anp.shape(x)}")
    if anp.ndim(w) < 4 or anp.shape(w)[-2:] != (3, 3):
        raise ValueError(f"conv2d expects a kernel (..., F, C, 3, 3); got shape {anp.shape(w)}")
    channels, (filters, w_channels) = anp.shape(x)[-3], anp.shape(w)[-4:-2]
    if w_channels != channels:
        raise ValueError(f"conv2d: kernel {anp.shape(w)} expects C={w_channels} input channels; "
                         f"got x {anp.shape(x)} with C={channels}")
    if b is not None and (anp.ndim(b) < 1 or anp.shape(b)[-1] != filters):
        raise ValueError(f"conv2d: bias must have F={filters} entries; got b {anp.shape(b)}")
    return conv.conv3x3(x, w, b, stride)                     # (..., n, F, H', W')


def max_pool_2x2(x, rounding="floor"):
    """x (..., n, C, H, W) -> (..., n, C, H', W'), H' = ⌊H/2⌋ ("floor") or ⌈H/2⌉ ("ceil");
    see the module docstring for the odd edge and ``refmeta.nn.pool`` for ties."""
    checks.choice("rounding", rounding, POOL_ROUNDINGS)
    smallest = 2 if rounding == "floor" else 1
    if anp.ndim(x) < 4 or anp.shape(x)[-1] < smallest or anp.shape(x)[-2] < smallest:
        raise ValueError(f"max_pool_2x2 expects x (..., n, C, H, W) with H, W ≥ {smallest}; "
                         f"got {anp.shape(x)} (rounding {rounding!r})")
    kinks.max_pool(x, rounding)         # a case builder records the margin; otherwise nothing
    if rounding == "ceil":
        x = _repeat_odd_edges(x)
    return pool.pooled(pool.max_pool(x))


def _repeat_odd_edges(x):
    """x with an odd last row (column) repeated once: the floor pool of the result is the ceil
    pool of x.  The copy follows its original in row-major window order, so the gradient's first
    maximum is always the original (the copy's share is zero) and ties resolve as in x."""
    if anp.shape(x)[-2] % 2:
        x = anp.concatenate([x, x[..., -1:, :]], axis=-2)
    if anp.shape(x)[-1] % 2:
        x = anp.concatenate([x, x[..., :, -1:]], axis=-1)
    return x


# ----- the LSTM cell -----
def sigmoid(x):
    """1 / (1 + e^{−x}), computed as (1 + tanh(x/2)) / 2, which never overflows."""
    return 0.5 * (anp.tanh(0.5 * x) + 1.0)


def lstm_init(rng, input_size, hidden_size, recurrent_size=None, forget_bias=0.0):
    """Params {"w_x": (d_in, 4H), "w_h": (d_h, 4H), "b": (4H,)} of ``lstm_cell`` (host float64).

    w_x, w_h, b ~ U(±1/√H) (PyTorch nn.LSTMCell); ``forget_bias`` is added to the f gate's
    bias (TensorFlow's LSTM uses 1.0).  recurrent_size d_h defaults to H.
    """
    checks.generator(rng)
    checks.integer("input_size", input_size, minimum=1)
    checks.integer("hidden_size", hidden_size, minimum=1)
    recurrent_size = hidden_size if recurrent_size is None else recurrent_size
    checks.integer("recurrent_size", recurrent_size, minimum=1)
    checks.number("forget_bias", forget_bias)
    bound = 1.0 / np.sqrt(hidden_size)
    b = rng.uniform(-bound, bound, size=4 * hidden_size)
    b[hidden_size:2 * hidden_size] += forget_bias
    return {"w_x": rng.uniform(-bound, bound, size=(input_size, 4 * hidden_size)),
            "w_h": rng.uniform(-bound, bound, size=(recurrent_size, 4 * hidden_size)), "b": b}


def lstm_cell(x, h, c, w_x, w_h, b):
    """One LSTM step (see the module docstring): returns (h', c'), each (..., n, H)."""
    hidden = anp.shape(w_x)[-1] // 4 if anp.ndim(w_x) >= 2 else 0
    if hidden < 1 or anp.ndim(w_h) < 2 or anp.shape(w_x)[-1] != 4 * hidden \
            or anp.shape(w_h)[-1] != 4 * hidden:
        raise ValueError(f"lstm_cell: w_x (..., d_in, 4H) {anp.shape(w_x)} and w_h (..., d_h, 4H) "
                         f"{anp.shape(w_h)} need the same 4H ≥ 4 columns")
    if anp.ndim(h) < 2 or anp.shape(h)[-1] != anp.shape(w_h)[-2]:
        raise ValueError(f"lstm_cell: w_h {anp.shape(w_h)} expects h (..., n, {anp.shape(w_h)[-2]}); "
                         f"got {anp.shape(h)}")
    if anp.ndim(c) < 2 or anp.shape(c)[-1] != hidden:
        raise ValueError(f"lstm_cell: expects c (..., n, H={hidden}); got {anp.shape(c)}")
    gates = dense(x, w_x, b) + anp.matmul(h, w_h)             # (..., n, 4H)
    i, f, g, o = (gates[..., k * hidden:(k + 1) * hidden] for k in range(4))
    c_next = sigmoid(f) * c + sigmoid(i) * anp.tanh(g)
    return sigmoid(o) * anp.tanh(c_next), c_next
