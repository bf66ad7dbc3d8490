"""Batch norm: the layer and the primitives under it.

    batch_norm   y = γ (x − μ) / √(σ² + ε) + β,  μ, σ² per channel over the example and
                 spatial axes, separately for every leading index; σ² is biased (÷ m).
                 mode "transductive": μ, σ² of the current batch (MAML's code, train and test);
                 mode "running": μ, σ² given (running_mean, running_var (..., C)).
                 β (offset) and γ (scale) are each optional: None means not learned.
    batch_moments    μ and σ² (biased or unbiased) of a batch, per channel: (..., C) each
    update_running   r ← (1 − momentum) r + momentum · batch     (PyTorch's convention)

x is (..., n, C, H, W) (``spatial_dims`` 2) or (..., n, C) (0); "per channel" means over the n
and spatial axes, m of them, keeping the leading axes and C.  Per-channel arrays are (..., C).

The transductive mode is one primitive, and the running mode one ``channel_affine``:

    transductive(x, γ, β) -> (y, μ, s),   s = (σ² + ε)^(−1/2),  x̂ = (x − μ) s,  y = γ x̂ + β
        R₁ = Σ ḡ,  R₂ = Σ ḡ x̂  (over the n and spatial axes)
        γ̄ = R₂,  β̄ = R₁
        x̄ = γ s (ḡ − R₁/m − x̂ R₂/m)  +  ḡ_μ / m  −  x̂ s² ḡ_s / m           (ḡ_μ, ḡ_s: for μ, s)
    channel_affine(x, a, k, e, b, c) = a x + b (e − c) + k     a, b, c, k (..., C), along the channel axis
        x̄ = a ḡ,  ē = b ḡ,  ā = Σ ḡ x,  b̄ = Σ ḡ (e − c),  c̄ = −b Σ ḡ,  k̄ = Σ ḡ
    channel_dot(u, v, c) = Σ u (v − c) over the n and spatial axes            (..., C)
        ū = (v − c) ḡ,  v̄ = u ḡ,  c̄ = −ḡ Σ u

Each VJP is built from these primitives and ``refmeta.nn.conv``'s spread_channels and
sum_channels, which have theirs, so autograd differentiates batch norm to any order (second-order
MAML through the inner loop).  ``transductive`` returns μ and s beside y so that its VJP has
them; the layer reads y through ``_output``, which sends μ and s zero gradients of their (C-sized)
shapes (autograd's own indexing of the triple would build a zero array of y's size).

Passes over x.  The forward pass: one reduction for μ, x − μ into a new array, one reduction
for σ², then γ s and β applied in place.  The backward pass: Σ ḡ, Σ ḡ (x − μ) with the center μ,
and x̄ = γ s ḡ + b (x − μ) + k in one ``channel_affine`` with the center μ.  A center is
subtracted a block of channels at a time (``CHUNK_BYTES``), so neither x − μ nor b (x − μ) is
ever a whole temporary array: the VJP keeps x (which the forward pass reads anyway), not x̂.

Checks.  ``batch_norm`` and ``batch_moments`` are public doors: by default they refuse NaN or
inf, an unknown mode, ε ≤ 0 and a "running" mode without statistics; ``models.conv4_apply``
calls them with ``check=False``.
"""

import autograd.numpy as anp
import numpy as np
from autograd.extend import defvjp, defvjp_argnums, primitive

from refmeta import checks
from refmeta.nn.conv import in_place, spread_channels, sum_channels, sum_to

__all__ = ["batch_norm", "batch_moments", "update_running", "transductive", "channel_affine",
           "channel_dot", "BN_MODES"]

BN_MODES = ("transductive", "running")
CHUNK_BYTES = 2 << 20      # the size of the blocks in which a temporary array is made
_DOT = {-1: "...nc,...nc->...c", -3: "...nchw,...nchw->...c"}    # channel axis -> einsum


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


def _count(shape, channel):
    """m: how many entries each channel's statistics read (the example and spatial axes)."""
    return int(np.prod(shape[channel - 1:], dtype=np.int64)) // max(shape[channel], 1)


def _spread(p, channel):
    """Raw p (..., C) as (..., 1, C, 1, …), to broadcast along x's channel axis."""
    return p.reshape(p.shape[:-1] + (1, p.shape[-1]) + (1,) * (-1 - channel))


def _statistics_shape(x_shape, channel):
    return tuple(x_shape[:channel - 1]) + (x_shape[channel],)


# ----- the primitives -----
def _channel_chunks(shape, channel, itemsize):
    """Index tuples of consecutive blocks of channels, about CHUNK_BYTES of x each: a temporary
    made per block stays in the cache (in a channel-major array each block is contiguous)."""
    per_channel = int(np.prod(shape, dtype=np.int64)) // max(shape[channel], 1) * itemsize
    size = max(1, CHUNK_BYTES // max(per_channel, 1))
    tail = (slice(None),) * (-1 - channel)
    return [(Ellipsis, slice(start, start + size)) + tail for start in range(0, shape[channel], size)]


def _minus(v, center, channel):
    """v − c along the channel axis, raw; v itself where c is None."""
    return v if center is None else v - _spread(center, channel)


@primitive
def channel_dot(u, v, channel, center=None):
    """Σ u·(v − c) over the example and spatial axes: u, v (..., n, C, *spatial), the center c
    (..., C) or None -> (..., C).  v − c is made a block of channels at a time."""
    if center is None:
        return np.einsum(_DOT[channel], u, v)
    lead = np.broadcast_shapes(u.shape[:channel - 1], v.shape[:channel - 1], center.shape[:-1])
    out = np.empty(lead + (v.shape[channel],), dtype=np.result_type(u, v, center), like=v)
    view = _spread(center, channel)
    for block in _channel_chunks(v.shape, channel, out.dtype.itemsize):
        out[..., block[1]] = np.einsum(_DOT[channel], u[block], v[block] - view[block])
    return out


def _statistics_sum(h, channel):
    return sum_channels(h, _statistics_shape(anp.shape(h), channel), channel)


defvjp(channel_dot,
       lambda ans, u, v, channel, c=None: lambda g: sum_to(
           channel_affine(v, g, None if c is None else -g * c, channel), anp.shape(u)),
       lambda ans, u, v, channel, c=None: lambda g: sum_to(channel_affine(u, g, None, channel),
                                                           anp.shape(v)),
       None,
       lambda ans, u, v, channel, c=None: lambda g: sum_to(-g * _statistics_sum(u, channel),
                                                           anp.shape(c)))


@primitive
def channel_affine(x, scale, offset, channel, extra=None, extra_scale=None, extra_center=None):
    """a x + b (e − c) + k: scale a, offset k, extra_scale b and extra_center c (..., C) or None,
    along the channel axis; x and the extra term e (or None) (..., n, C, *spatial).  The extra
    term is added a block of channels at a time."""
    y = x * _spread(scale, channel) if scale is not None else x.copy()     # a new array
    if extra is not None:
        b = _spread(extra_scale, channel)
        term_shape = np.broadcast_shapes(extra.shape, b.shape)
        if np.broadcast_shapes(y.shape, term_shape) != y.shape:
            y = y + _minus(extra, extra_center, channel) * b
        else:
            center = None if extra_center is None else _spread(extra_center, channel)
            for block in _channel_chunks(term_shape, channel, y.dtype.itemsize):
                y[block] += (extra[block] - (0 if center is None else center[block])) * b[block]
    return y if offset is None else in_place(np.add, y, _spread(offset, channel))


def _scaled(h, shape, scale, channel):
    """h·a summed to ``shape`` (the VJP of a x for x), h itself where a is None."""
    return sum_to(h if scale is None else channel_affine(h, scale, None, channel), shape)


defvjp(channel_affine,
       lambda ans, x, a, k, channel, e=None, b=None, c=None: lambda h: _scaled(h, anp.shape(x), a, channel),
       lambda ans, x, a, k, channel, e=None, b=None, c=None: lambda h: sum_to(channel_dot(h, x, channel),
                                                                              anp.shape(a)),
       lambda ans, x, a, k, channel, e=None, b=None, c=None: lambda h: sum_channels(h, anp.shape(k),
                                                                                    channel),
       None,
       lambda ans, x, a, k, channel, e=None, b=None, c=None: lambda h: _scaled(h, anp.shape(e), b, channel),
       lambda ans, x, a, k, channel, e=None, b=None, c=None: lambda h: sum_to(
           channel_dot(h, e, channel, c), anp.shape(b)),
       lambda ans, x, a, k, channel, e=None, b=None, c=None: lambda h: sum_to(
           -b * _statistics_sum(h, channel), anp.shape(c)))


@primitive
def transductive(x, scale, offset, channel, eps):
    """(y, μ, s): y = γ (x − μ) s + β, μ and s = (σ² + ε)^(−1/2) of x, per channel (..., C)."""
    axes = _stat_axes(x, -1 - channel)[1]
    mean = x.mean(axis=axes, keepdims=True)
    y = x - mean                                                        # x − μ, a new array
    inv_std = 1 / np.sqrt(np.einsum(_DOT[channel], y, y) / _count(x.shape, channel) + eps)
    y = in_place(np.multiply, y, _spread(inv_std if scale is None else inv_std * scale, channel))
    if offset is not None:                                              # γ s (x − μ) + β
        y = in_place(np.add, y, _spread(offset, channel))
    return y, mean.reshape(_statistics_shape(x.shape, channel)), inv_std


def _transductive_vjp(argnums, ans, args, kwargs):
    x, scale, offset, channel, _ = args
    mean, inv_std = ans[1], ans[2]                                  # y itself is not kept

    def vjp(g):                                                     # g: (ḡ for y, μ, s)
        g_y = g[0]
        r1 = _statistics_sum(g_y, channel)                                          # Σ ḡ
        r2 = channel_dot(g_y, x, channel, mean) * inv_std                          # Σ ḡ x̂
        gain = inv_std if scale is None else inv_std * scale                       # γ s
        grads = {1: lambda: sum_to(r2, anp.shape(scale)), 2: lambda: sum_to(r1, anp.shape(offset))}
        grads[0] = lambda: _input_grad(g, x, mean, r1, r2, gain, inv_std, channel)
        return tuple(grads[argnum]() for argnum in argnums)
    return vjp


def _input_grad(g, x, mean, r1, r2, gain, inv_std, channel):
    """x̄ = γ s ḡ + (x − μ)·b + k: the terms from y, then from μ (ḡ_μ / m) and s (−s³ ḡ_s / m)."""
    g_y, g_mean, g_inv_std = g[0], g[1], g[2]
    shape = anp.shape(x)
    count = _count(shape, channel)
    b, k = -gain * r2 * inv_std / count, -gain * r1 / count
    b_stats, k_stats = -inv_std ** 3 * g_inv_std / count, g_mean / count
    if anp.shape(g_y) == shape:
        return channel_affine(g_y, gain, k + k_stats, channel, x, b + b_stats, mean)
    # y has task axes x lacks (the scale or offset has them): μ and s are x's, not per task
    centred = x - spread_channels(mean, shape, channel)
    return (sum_to(channel_affine(g_y, gain, k, channel, centred, b), shape)
            + channel_affine(centred, b_stats, k_stats, channel))


defvjp_argnums(transductive, _transductive_vjp)


@primitive
def _output(triple):
    """y of transductive's (y, μ, s)."""
    return triple[0]


def _output_vjp(ans, triple):
    zeros = anp.zeros_like(triple[1]), anp.zeros_like(triple[2])      # y itself is not kept
    return lambda g: (g,) + zeros


defvjp(_output, _output_vjp)


# ----- the layer -----
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
        count = _count(anp.shape(x), channel)                    # m = n·H·W
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
    for name, p in (("offset", offset), ("scale", scale), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if p is not None and (anp.ndim(p) < 1 or anp.shape(p)[-1] != anp.shape(x)[channel]):
            raise ValueError(f"batch norm: {name} must have C={anp.shape(x)[channel]} entries; "
                             f"got {anp.shape(p)}")
    if mode == "transductive":
        return _output(transductive(x, scale, offset, channel, eps))
    inv_std = 1.0 / anp.sqrt(running_var + eps)                      # (..., C)
    gain = inv_std if scale is None else scale * inv_std             # γ / √(σ² + ε)
    shift = -running_mean * gain if offset is None else offset - running_mean * gain
    return channel_affine(x, gain, shift, channel)                   # γ (x − μ)/√(σ² + ε) + β


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
