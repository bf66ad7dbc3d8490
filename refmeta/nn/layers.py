"""Layers and the two model families of the papers: an MLP and the 4-block conv net.

Layers are pure functions over arrays.  **Every layer takes arbitrary leading
(task) axes on the data and on the params, and broadcasts them** against each
other: an unbatched kernel applies to a meta-batch of images, a meta-batch of
kernels (``trees.broadcast_tasks``) to a meta-batch of images, task by task.

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

Models are ``*_init(rng, ...) -> params`` (host float64) and ``*_apply(params, x, ...)``;
``*_describe(...)`` returns a JSON-able description complete enough to rebuild the
model in another framework.  Initialisation follows PyTorch's defaults:
w, b ~ U(±1/√fan_in) (kaiming-uniform with a = √5), BN β = 0, γ = 1.

Kinks.  ``relu`` and ``max_pool_2x2`` report their inputs to ``refmeta.nn.kinks``, which reads
them only while a reference case is built (the margins of docs/reference-cases.md).

Checks.  The initialisers refuse sizes that are not integers ≥ 1, unknown variants and a
``rng`` that is not a ``numpy.random.Generator``.  The apply functions run inside the
algorithms' differentiated code, whose entry points check the params against ``init``'s
template, so they keep only cheap checks of names and shapes (never a scan of the values).
``batch_norm`` and ``batch_moments`` are also public doors: by default they refuse NaN or
inf, an unknown mode, ε ≤ 0 and a "running" mode without statistics; ``conv4_apply``
calls them with ``check=False``.
"""

import autograd.numpy as anp
import numpy as np
from autograd.extend import defvjp, primitive

from refmeta import checks
from refmeta.nn import conv, kinks

__all__ = ["dense", "relu", "tanh", "conv2d", "max_pool_2x2", "batch_norm", "batch_moments",
           "update_running", "mlp_init", "mlp_apply", "mlp_describe", "conv4_init",
           "conv4_apply", "conv4_bn_state", "conv4_describe", "sigmoid", "lstm_init", "lstm_cell"]

ACTIVATIONS = ("relu", "tanh")
BN_MODES = ("transductive", "running")
BN_AFFINE = ("offset", "scale", "both", "none")
CONV4_VARIANTS = ("stride", "maxpool")
POOL_ROUNDINGS = ("floor", "ceil")
N_BLOCKS = 4


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


# ----- the MLP -----
def _uniform(rng, fan_in, shape):
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape)


def mlp_init(rng, sizes, weight_std=None):
    """Params {"dense{i}.w": (d_i, d_{i+1}), "dense{i}.b": (d_{i+1},)} for layer sizes d_0..d_L.

    weight_std None: w, b ~ U(±1/√d_i) (PyTorch nn.Linear); a float: w ~ N(0, std²), b = 0.
    """
    checks.generator(rng)
    sizes = _layer_sizes(sizes)
    if weight_std is not None:
        checks.positive("weight_std", weight_std)
    params = {}
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if weight_std is None:
            params[f"dense{i}.w"] = _uniform(rng, d_in, (d_in, d_out))
            params[f"dense{i}.b"] = _uniform(rng, d_in, (d_out,))
        else:
            params[f"dense{i}.w"] = weight_std * rng.standard_normal((d_in, d_out))
            params[f"dense{i}.b"] = np.zeros(d_out)
    return params


def _layer_sizes(sizes):
    """The layer sizes d_0..d_L (at least two), each an integer ≥ 1, as a list of ints."""
    if not isinstance(sizes, (list, tuple, np.ndarray)):
        raise TypeError(f"sizes must be a list of layer sizes d_0..d_L; got {type(sizes).__name__}")
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least input and output sizes; got {list(sizes)!r}")
    return [checks.integer(f"sizes[{i}]", d, minimum=1) for i, d in enumerate(sizes)]


def _mlp_depth(params):
    """L, the number of dense layers "dense0" .. "dense{L-1}" in params (each with w and b)."""
    n_layers = sum(1 for name in params if name.endswith(".w") and name.startswith("dense"))
    missing = [f"dense{i}.{leaf}" for i in range(n_layers) for leaf in ("w", "b")
               if f"dense{i}.{leaf}" not in params]
    if not n_layers or missing:
        raise ValueError(f"mlp_apply expects the params of mlp_init, dense0.w/b .. dense{{L-1}}.w/b; "
                         f"got the keys {sorted(params)}")
    return n_layers


def mlp_apply(params, x, activation="relu"):
    """x (..., n, d_0) -> (..., n, d_L); hidden layers use ``activation``, the last is linear."""
    checks.choice("activation", activation, ACTIVATIONS)
    nonlinearity = relu if activation == "relu" else tanh
    n_layers = _mlp_depth(params)
    for i in range(n_layers):
        x = dense(x, params[f"dense{i}.w"], params[f"dense{i}.b"])
        if i < n_layers - 1:
            x = nonlinearity(x)
    return x


def mlp_describe(sizes, activation="relu", weight_std=None):
    """A JSON-able description of ``mlp_apply`` with these sizes."""
    sizes = _layer_sizes(sizes)
    checks.choice("activation", activation, ACTIVATIONS)
    layers = []
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append({"type": "dense", "in_features": d_in, "out_features": d_out,
                       "weight": f"dense{i}.w", "bias": f"dense{i}.b",
                       "weight_layout": "(in, out): y = x @ w + b"})
        if i < len(sizes) - 2:
            layers.append({"type": activation})
    init = ("w, b ~ U(-1/sqrt(in), 1/sqrt(in)) (PyTorch nn.Linear)" if weight_std is None
            else f"w ~ N(0, {weight_std}^2), b = 0")
    return {"model": "mlp", "sizes": list(sizes), "activation": activation, "layers": layers,
            "input_layout": "(..., n, d_in)", "init": init, "dtype": "float64"}


# ----- the conv4 network (MAML's stride-2 and the metric learners' max-pool variants) -----
def _check_conv4(in_channels, n_out, hidden, variant, bn_affine, image_size):
    """The arguments shared by ``conv4_init`` and ``conv4_describe``."""
    checks.integer("in_channels", in_channels, minimum=1)
    if n_out is not None:
        checks.integer("n_out", n_out, minimum=1)
    checks.integer("hidden", hidden, minimum=1)
    checks.choice("variant", variant, CONV4_VARIANTS)
    checks.choice("bn_affine", bn_affine, BN_AFFINE)
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        checks.integer("image_size[0]", image_size[0], minimum=1)
        checks.integer("image_size[1]", image_size[1], minimum=1)
    elif isinstance(image_size, (tuple, list)):
        raise ValueError(f"image_size must be an integer or a pair (H, W); got {image_size!r}")
    else:
        checks.integer("image_size", image_size, minimum=1)


def _head_features(hidden, variant, image_size):
    """Feature count entering the head: hidden, or hidden·H·W after four 2×2 pools."""
    height, width = (image_size, image_size) if np.ndim(image_size) == 0 else image_size
    if variant == "stride":
        return hidden
    for _ in range(N_BLOCKS):
        height, width = height // 2, width // 2
    if height < 1 or width < 1:
        raise ValueError(f"image_size {image_size!r} is too small for 4 pools (16 at least)")
    return hidden * height * width


def conv4_init(rng, in_channels=1, n_out=5, hidden=64, variant="stride", bn_affine="offset",
               image_size=28):
    """Params "conv{i}.w" (F, C, 3, 3), "conv{i}.b", "bn{i}.offset"/"bn{i}.scale" (F,) as
    ``bn_affine`` asks, "out.w" (d, n_out), "out.b" unless n_out is None.

    ``image_size`` (int or (H, W)) only matters for the "maxpool" head, which flattens.
    """
    checks.generator(rng)
    _check_conv4(in_channels, n_out, hidden, variant, bn_affine, image_size)
    params, channels = {}, in_channels
    for i in range(N_BLOCKS):
        params[f"conv{i}.w"] = _uniform(rng, channels * 9, (hidden, channels, 3, 3))
        params[f"conv{i}.b"] = _uniform(rng, channels * 9, (hidden,))
        if bn_affine in ("offset", "both"):
            params[f"bn{i}.offset"] = np.zeros(hidden)
        if bn_affine in ("scale", "both"):
            params[f"bn{i}.scale"] = np.ones(hidden)
        channels = hidden
    if n_out is not None:
        features = _head_features(hidden, variant, image_size)
        params["out.w"] = _uniform(rng, features, (features, n_out))
        params["out.b"] = _uniform(rng, features, (n_out,))
    return params


def conv4_bn_state(hidden=64):
    """Initial running statistics {"bn{i}.mean": zeros (F,), "bn{i}.var": ones (F,)} (host)."""
    checks.integer("hidden", hidden, minimum=1)
    return {f"bn{i}.{stat}": (np.zeros if stat == "mean" else np.ones)(hidden)
            for i in range(N_BLOCKS) for stat in ("mean", "var")}


def conv4_apply(params, x, variant="stride", bn_mode="transductive", bn_state=None,
                bn_eps=1e-3, return_bn_moments=False):
    """x (..., n, C, H, W) -> logits (..., n, n_out), or the embedding (..., n, d) without "out.w".

    bn_state: {"bn{i}.mean", "bn{i}.var"} (..., F) for bn_mode "running".
    return_bn_moments: also return {"bn{i}.mean", "bn{i}.var" (unbiased)} of each BN input,
        for ``update_running(bn_state, moments, momentum)``.
    """
    _check_conv4_apply(params, variant, bn_mode, bn_state, bn_eps)
    moments, stats = {}, bn_state or {}
    for i in range(N_BLOCKS):
        x = conv2d(x, params[f"conv{i}.w"], params[f"conv{i}.b"],
                   stride=2 if variant == "stride" else 1)
        if return_bn_moments:
            moments[f"bn{i}.mean"], moments[f"bn{i}.var"] = batch_moments(x, 2, unbiased=True,
                                                                          check=False)
        x = batch_norm(x, params.get(f"bn{i}.offset"), params.get(f"bn{i}.scale"), bn_mode,
                       stats.get(f"bn{i}.mean"), stats.get(f"bn{i}.var"), bn_eps, spatial_dims=2,
                       check=False)
        # relu then pool, computed as pool then relu: they commute (relu is monotone), also
        # in the gradient (a window whose max is ≤ 0 gets 0 either way), on 4× fewer pixels.
        x = relu(max_pool_2x2(x) if variant == "maxpool" else x)
    if variant == "stride":
        x = anp.mean(x, axis=(-2, -1))                       # (..., n, F)
    else:
        x = anp.reshape(x, anp.shape(x)[:-3] + (-1,))        # (..., n, F·H·W), C-order
    if "out.w" in params:
        x = dense(x, params["out.w"], params["out.b"])
    return (x, moments) if return_bn_moments else x


def _check_conv4_apply(params, variant, bn_mode, bn_state, bn_eps):
    """Names and keys only (the values are the caller's to check)."""
    checks.choice("variant", variant, CONV4_VARIANTS)
    checks.choice("bn_mode", bn_mode, BN_MODES)
    checks.positive("bn_eps", bn_eps)
    needed = [f"conv{i}.{leaf}" for i in range(N_BLOCKS) for leaf in ("w", "b")]
    missing = [name for name in needed + ["out.b"] * ("out.w" in params) if name not in params]
    if missing:
        raise ValueError(f"conv4_apply: params lack {missing}; build them with conv4_init")
    if bn_mode == "running":
        if bn_state is None:
            raise ValueError("bn_mode 'running' needs bn_state; got None")
        missing = [f"bn{i}.{stat}" for i in range(N_BLOCKS) for stat in ("mean", "var")
                   if f"bn{i}.{stat}" not in bn_state]
        if missing:
            raise ValueError(f"conv4_apply: bn_state lacks {missing}; build it with conv4_bn_state")


def conv4_describe(in_channels=1, n_out=5, hidden=64, variant="stride", bn_affine="offset",
                   bn_mode="transductive", bn_eps=1e-3, image_size=28):
    """A JSON-able description of ``conv4_apply`` with these settings."""
    _check_conv4(in_channels, n_out, hidden, variant, bn_affine, image_size)
    checks.choice("bn_mode", bn_mode, BN_MODES)
    checks.positive("bn_eps", bn_eps)
    layers = []
    for i in range(N_BLOCKS):
        layers += [
            {"type": "conv2d", "in_channels": hidden if i else in_channels, "out_channels": hidden,
             "kernel_size": [3, 3], "stride": 2 if variant == "stride" else 1,
             "padding": {"top": 1, "bottom": 1, "left": 1, "right": 1},
             "operation": "cross-correlation (PyTorch Conv2d, padding=1)",
             "weight": f"conv{i}.w", "weight_layout": "OIHW (out, in, kh, kw)", "bias": f"conv{i}.b"},
            {"type": "batch_norm", "num_features": hidden, "eps": bn_eps, "mode": bn_mode,
             "statistics": "per channel over (example, H, W), per task; biased variance",
             "offset": f"bn{i}.offset" if bn_affine in ("offset", "both") else None,
             "scale": f"bn{i}.scale" if bn_affine in ("scale", "both") else None,
             "running_stats": [f"bn{i}.mean", f"bn{i}.var"] if bn_mode == "running" else None},
            {"type": "relu"}]
        if variant == "maxpool":
            layers.append({"type": "max_pool", "kernel_size": [2, 2], "stride": 2, "padding": 0,
                           "ceil_mode": False, "ties": "gradient to the first max, row-major"})
    layers.append({"type": "mean", "axes": ["H", "W"]} if variant == "stride" else
                  {"type": "flatten", "order": "C, H, W (row-major, as torch x.view(n, -1))"})
    if n_out is not None:
        layers.append({"type": "dense", "in_features": _head_features(hidden, variant, image_size),
                       "out_features": n_out, "weight": "out.w", "bias": "out.b",
                       "weight_layout": "(in, out): y = x @ w + b"})
    return {"model": "conv4", "variant": variant, "in_channels": in_channels, "hidden": hidden,
            "n_out": n_out, "image_size": image_size, "bn_affine": bn_affine, "bn_mode": bn_mode,
            "bn_eps": bn_eps, "input_layout": "(..., n, C, H, W)", "layers": layers,
            "dtype": "float64", "init": "conv, dense: w, b ~ U(±1/sqrt(fan_in)) (PyTorch default, "
                                        "kaiming-uniform a=sqrt(5)); bn offset 0, scale 1"}


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
