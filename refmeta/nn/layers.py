"""Layers: dense, convolution, max-pool, batch norm and the LSTM cell, as pure functions.

**Every layer takes arbitrary leading (task) axes on the data and on the params, and
broadcasts them** against each other: an unbatched kernel applies to a meta-batch of images,
a meta-batch of kernels (``trees.broadcast_tasks``) to a meta-batch of images, task by task.
The networks built from these layers (the MLP and the 4-block conv net) are in
``refmeta.nn.models``.

    dense        y = x W + b                        x (..., n, d_in), W (..., d_in, d_out)
    conv2d       y[m,f] = Σ_c w[f,c] ⋆ x[m,c] + b[f] x (..., n, C, H, W), w (..., F, C, 3, 3) OIHW
                 3×3, zero padding 1 on every side (PyTorch ``padding=1``), stride 1 or 2,
                 H' = (H + 2 − 3) // stride + 1.  TF 'SAME' pads (0, 1) at stride 2 for even
                 H, so a stride-2 TF net sees shifted windows: port weights with care.
    max_pool_2x2 y = max of each 2×2 window, stride 2; the gradient goes to the first maximum
                 in row-major order (PyTorch's choice; autograd's ``max`` would split ties).
                 rounding "floor" (H' = ⌊H/2⌋, PyTorch's default): an odd last row or column
                 is dropped; "ceil" (H' = ⌈H/2⌉: Chainer's default cover_all=True, PyTorch's
                 ceil_mode=True without padding): its windows cover that row or column alone.
    batch_norm   y = γ (x − μ) / √(σ² + ε) + β,  μ, σ² per channel over the example and
                 spatial axes, separately for every leading index; σ² is biased (÷ m).
                 mode "transductive": μ, σ² of the current batch (MAML's code, train and test);
                 mode "running": μ, σ² given (running_mean, running_var (..., C)).
                 β (offset) and γ (scale) are each optional: None means not learned.
    update_running   r ← (1 − momentum) r + momentum · batch     (PyTorch's convention)
    lstm_cell    [i, f, g, o] = x W_x + h W_h + b,  c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g),
                 h' = σ(o) ⊙ tanh(c')      x (..., n, d_in), h (..., n, d_h), c (..., n, H),
                 W_x (..., d_in, 4H), W_h (..., d_h, 4H), b (..., 4H); gate order i, f, g, o
                 (PyTorch's).  d_h may differ from H: the attention LSTM of Matching Networks
                 feeds [h, r] (2H) as its recurrent input.  One bias (PyTorch has b_ih + b_hh).

``lstm_init(rng, ...)`` returns host float64 params, drawn as PyTorch's nn.LSTMCell draws them.

Kinks.  ``relu`` and ``max_pool_2x2`` report their inputs to ``refmeta.nn.kinks``, which reads
them only while a reference case is built (the margins of docs/reference-cases.md).

Checks.  ``lstm_init`` refuses sizes that are not integers ≥ 1 and a ``rng`` that is not a
``numpy.random.Generator``.  The layers run inside the algorithms' differentiated code, whose
entry points check the params against ``init``'s template, so they keep only cheap checks of
names and shapes (never a scan of the values).  ``batch_norm`` and ``batch_moments`` are also
public doors: by default they refuse NaN or inf, an unknown mode, ε ≤ 0 and a "running" mode
without statistics; ``models.conv4_apply`` calls them with ``check=False``.
"""

import autograd.numpy as anp
import numpy as np
from autograd.extend import defvjp, primitive

from refmeta import checks
from refmeta.nn import conv, kinks

__all__ = ["dense", "relu", "tanh", "conv2d", "max_pool_2x2", "batch_norm", "batch_moments",
           "update_running", "sigmoid", "lstm_init", "lstm_cell"]

BN_MODES = ("transductive", "running")
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


def _sum_to(g, shape):
    """g summed over the axes it was broadcast along (extra leading ones, size-1 ones)."""
    if anp.shape(g) == shape:
        return g
    extra = anp.ndim(g) - len(shape)
    axes = tuple(range(extra)) + tuple(extra + i for i, size in enumerate(shape)
                                       if size == 1 and anp.shape(g)[extra + i] != 1)
    return anp.reshape(anp.sum(g, axis=axes), shape)


# Each adjoint is one matrix product (autograd's own matmul VJP adds reshapes and always
# sums size-1 axes, a full copy of the gradient); the three products are closed under
# taking adjoints, so they differentiate to any order.
defvjp(_matmul, lambda ans, a, b: lambda g: _sum_to(_matmul_nt(g, b), anp.shape(a)),
       lambda ans, a, b: lambda g: _sum_to(_matmul_tn(a, g), anp.shape(b)))
defvjp(_matmul_nt, lambda ans, a, b: lambda g: _sum_to(_matmul(g, b), anp.shape(a)),
       lambda ans, a, b: lambda g: _sum_to(_matmul_tn(g, a), anp.shape(b)))
defvjp(_matmul_tn, lambda ans, a, b: lambda g: _sum_to(_matmul_nt(b, g), anp.shape(a)),
       lambda ans, a, b: lambda g: _sum_to(_matmul(a, g), anp.shape(b)))


# ----- dense, activations, convolution and pooling -----
def dense(x, w, b):
    """x (..., n, d_in), w (..., d_in, d_out), b (..., d_out) -> (..., n, d_out)."""
    if anp.ndim(w) < 2 or anp.ndim(x) < 2 or anp.shape(x)[-1] != anp.shape(w)[-2]:
        raise ValueError(f"dense: w (..., d_in, d_out) {anp.shape(w)} expects x (..., n, d_in); "
                         f"got x {anp.shape(x)}")
    if anp.ndim(b) < 1 or anp.shape(b)[-1] != anp.shape(w)[-1]:
        raise ValueError(f"dense: b must have d_out={anp.shape(w)[-1]} entries; got b {anp.shape(b)}")
    return _plus_per_channel(_matmul(x, w), b, -1)


def relu(x):
    """max(x, 0), with derivative 0 at 0 (as PyTorch)."""
    kinks.relu(x)                       # a case builder records the margin; otherwise nothing
    return x * (x > 0)


def tanh(x):
    return anp.tanh(x)


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
    *_, n, channels, height, width = anp.shape(x)
    *_, filters, w_channels = anp.shape(w)[:-2]
    if w_channels != channels:
        raise ValueError(f"conv2d: kernel {anp.shape(w)} expects C={w_channels} input channels; "
                         f"got x {anp.shape(x)} with C={channels}")
    patches = conv.im2col(x, stride)                        # (..., C·9, n·H'·W')
    kernel = anp.reshape(w, anp.shape(w)[:-3] + (channels * 9,))  # (..., F, C·9)
    out = _matmul(kernel, patches)                          # (..., F, n·H'·W')
    out_h, out_w = conv.conv_out_size(height, stride), conv.conv_out_size(width, stride)
    out = anp.swapaxes(anp.reshape(out, anp.shape(out)[:-1] + (n, out_h, out_w)), -4, -3)
    if b is None:
        return out                                          # (..., n, F, H', W')
    if anp.ndim(b) < 1 or anp.shape(b)[-1] != filters:
        raise ValueError(f"conv2d: bias must have F={filters} entries; got b {anp.shape(b)}")
    return _plus_per_channel(out, b, -3)


def _plus_per_channel(y, p, channel):
    """y + p, p (..., C) broadcast along the channel axis of y (its gradient: one reduction)."""
    view = anp.shape(p)[:-1] + (1, anp.shape(p)[-1]) + (1,) * (-1 - channel)
    return y + conv.spread_channels(p, np.broadcast_shapes(anp.shape(y), view), channel)


def max_pool_2x2(x, rounding="floor"):
    """x (..., n, C, H, W) -> (..., n, C, H', W'), H' = ⌊H/2⌋ ("floor") or ⌈H/2⌉ ("ceil");
    see the module docstring for the odd edge and for ties."""
    checks.choice("rounding", rounding, POOL_ROUNDINGS)
    smallest = 2 if rounding == "floor" else 1
    if anp.ndim(x) < 4 or anp.shape(x)[-1] < smallest or anp.shape(x)[-2] < smallest:
        raise ValueError(f"max_pool_2x2 expects x (..., n, C, H, W) with H, W ≥ {smallest}; "
                         f"got {anp.shape(x)} (rounding {rounding!r})")
    kinks.max_pool(x, rounding)         # a case builder records the margin; otherwise nothing
    if rounding == "ceil":
        x = _repeat_odd_edges(x)
    return conv.max_pool(x)


def _repeat_odd_edges(x):
    """x with an odd last row (column) repeated once: the floor pool of the result is the ceil
    pool of x.  The copy follows its original in row-major window order, so the gradient's first
    maximum is always the original (the copy's share is zero) and ties resolve as in x."""
    if anp.shape(x)[-2] % 2:
        x = anp.concatenate([x, x[..., -1:, :]], axis=-2)
    if anp.shape(x)[-1] % 2:
        x = anp.concatenate([x, x[..., :, -1:]], axis=-1)
    return x


# ----- batch norm -----
def _stat_axes(x, spatial_dims):
    """(channel axis, reduction axes) of x (..., n, C, *spatial)."""
    if spatial_dims is None:
        spatial_dims = 2 if anp.ndim(x) >= 4 else 0
    if isinstance(spatial_dims, bool) or spatial_dims not in (0, 2):
        raise ValueError(f"spatial_dims must be 0 or 2 (or None); got {spatial_dims!r}")
    if anp.ndim(x) < 2 + spatial_dims:
        raise ValueError(f"batch norm expects x (..., n, C{', H, W' if spatial_dims else ''}); "
                         f"got {anp.shape(x)}")
    channel = -1 - spatial_dims
    return channel, (channel - 1,) + tuple(range(channel + 1, 0))


def _per_channel(p, x, channel, name):
    """Broadcast p (..., C) against x (..., n, C, *spatial)."""
    if anp.ndim(p) < 1 or anp.shape(p)[-1] != anp.shape(x)[channel]:
        raise ValueError(f"batch norm: {name} must have C={anp.shape(x)[channel]} entries; "
                         f"got {anp.shape(p)}")
    view = anp.shape(p)[:-1] + (1, anp.shape(p)[-1]) + (1,) * (-1 - channel)
    return conv.spread_channels(p, np.broadcast_shapes(anp.shape(x), view), channel)


@primitive
def _standardize(x, axes, eps):
    """x̂ = (x − μ) / √(σ² + ε), μ and σ² (biased) over ``axes``; raw arrays."""
    centred = x - x.mean(axis=axes, keepdims=True)
    return centred / ((centred * centred).mean(axis=axes, keepdims=True) + eps) ** 0.5


def _standardize_vjp(ans, x, axes, eps):
    """ḡ ↦ (ḡ − mean ḡ − x̂ · mean(ḡ x̂)) / √(σ² + ε), in anp so it differentiates again."""
    centred = x - anp.mean(x, axis=axes, keepdims=True)
    inv_std = 1.0 / anp.sqrt(anp.mean(centred * centred, axis=axes, keepdims=True) + eps)
    return lambda g: inv_std * (g - anp.mean(g, axis=axes, keepdims=True)
                                - ans * anp.mean(g * ans, axis=axes, keepdims=True))


defvjp(_standardize, _standardize_vjp)


def batch_moments(x, spatial_dims=None, unbiased=False, check=True):
    """Per-channel mean and variance over the example and spatial axes, per leading index.

    Args:
        x: (..., n, C, H, W) or (..., n, C).  spatial_dims: 2 or 0; None infers 2 when
            ndim ≥ 4, else 0 (pass it for dense features with two or more leading axes).
        unbiased: divide the squared deviations by m − 1 instead of m (PyTorch's running_var).
        check: refuse NaN or inf in x and an empty batch (False: the caller checked).
    Returns:
        (mean, var), each (..., C).
    """
    channel, axes = _stat_axes(x, spatial_dims)
    if check:
        checks.boolean("unbiased", unbiased)
        _check_batch(x, axes)
    mean = anp.mean(x, axis=axes, keepdims=True)
    var = anp.mean((x - mean) * (x - mean), axis=axes, keepdims=True)
    if unbiased:
        count = int(np.prod([anp.shape(x)[a] for a in axes]))    # m = n·H·W
        var = var * (count / max(count - 1, 1))
    squeeze = lambda s: anp.reshape(s, anp.shape(s)[:channel - 1] + (anp.shape(x)[channel],))
    return squeeze(mean), squeeze(var)


def batch_norm(x, offset=None, scale=None, mode="transductive", running_mean=None,
               running_var=None, eps=1e-3, spatial_dims=None, check=True):
    """Batch normalisation (see the module docstring); the output has x's shape.

    Args:
        x: (..., n, C, H, W) or (..., n, C).  offset β, scale γ: (..., C) or None.
        mode: "transductive" or "running".  running_mean, running_var: (..., C), for "running".
        eps: ε > 0.  spatial_dims: as in ``batch_moments``.
        check: refuse NaN or inf in any array, an unknown mode, ε ≤ 0, an empty batch and a
            running mode without statistics (False: the caller checked).
    """
    channel, axes = _stat_axes(x, spatial_dims)
    if check:
        _check_batch_norm(x, axes, offset, scale, mode, running_mean, running_var, eps)
    if mode == "transductive":
        y = _standardize(x, axes, eps)
    else:
        y = ((x - _per_channel(running_mean, x, channel, "running_mean"))
             / anp.sqrt(_per_channel(running_var, x, channel, "running_var") + eps))
    if scale is not None:
        y = y * _per_channel(scale, x, channel, "scale")
    return y if offset is None else y + _per_channel(offset, x, channel, "offset")


def _check_batch(x, axes):
    checks.finite("batch norm x", x)
    if any(anp.shape(x)[a] == 0 for a in axes):
        raise ValueError(f"batch norm needs at least one value per channel; got x {anp.shape(x)}")


def _check_batch_norm(x, axes, offset, scale, mode, running_mean, running_var, eps):
    checks.choice("batch norm mode", mode, BN_MODES)
    checks.positive("batch norm eps", eps)
    for name, p in (("offset", offset), ("scale", scale)):
        if p is not None:
            checks.finite(f"batch norm {name}", p)
    if mode == "transductive":
        _check_batch(x, axes)
        return
    checks.finite("batch norm x", x)
    if running_mean is None or running_var is None:
        raise ValueError("batch norm mode 'running' needs running_mean and running_var; got None")
    checks.finite("batch norm running_mean", running_mean)
    checks.nonnegative_array("batch norm running_var", running_var)


def update_running(running, batch, momentum):
    """(1 − momentum)·running + momentum·batch, for arrays or for dict trees leaf by leaf."""
    checks.probability("momentum", momentum)
    if isinstance(running, dict):
        checks.instance("batch", batch, dict)
        if set(batch) != set(running):
            raise ValueError(f"update_running: batch lacks {sorted(set(running) - set(batch))} and "
                             f"has unexpected {sorted(set(batch) - set(running))}")
        return {name: _update_running(running[name], batch[name], momentum) for name in running}
    return _update_running(running, batch, momentum)


def _update_running(running, batch, momentum):
    return (1 - momentum) * running + momentum * batch


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
