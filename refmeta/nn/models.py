"""The two model families of the papers, built from ``refmeta.nn.layers``: an MLP and the
4-block conv net.

    mlp      dense → activation → … → dense (the last layer linear)    x (..., n, d_0)
    conv4    4 × {3×3 conv, batch norm, ReLU} with stride 2 (MAML's "stride" variant), or
             4 × {3×3 conv, batch norm, ReLU, 2×2 max-pool} (the metric learners' "maxpool"),
             then the mean over H, W ("stride") or the flattened C, H, W ("maxpool"), then an
             optional dense head                                        x (..., n, C, H, W)

Like the layers, a model takes arbitrary leading (task) axes on the data and on the params.
Models are ``*_init(rng, ...) -> params`` (host float64) and ``*_apply(params, x, ...)``;
``*_describe(...)`` returns a JSON-able description complete enough to rebuild the model in
another framework.  Initialisation follows PyTorch's defaults: w, b ~ U(±1/√fan_in)
(kaiming-uniform with a = √5), BN β = 0, γ = 1.

Checks.  The initialisers and ``*_describe`` refuse sizes that are not integers ≥ 1, unknown
variants and a ``rng`` that is not a ``numpy.random.Generator``.  The apply functions run
inside the algorithms' differentiated code, whose entry points check the params against
``init``'s template, so they keep only cheap checks of names and keys (never a scan of the
values), and call batch norm with ``check=False``.
"""

import autograd.numpy as anp
import numpy as np

from refmeta import checks
from refmeta.nn.layers import (BN_MODES, batch_moments, batch_norm, conv2d, dense, max_pool_2x2,
                               relu, tanh)

__all__ = ["mlp_init", "mlp_apply", "mlp_describe", "conv4_init", "conv4_apply", "conv4_bn_state",
           "conv4_describe"]

ACTIVATIONS = ("relu", "tanh")
BN_AFFINE = ("offset", "scale", "both", "none")
CONV4_VARIANTS = ("stride", "maxpool")
N_BLOCKS = 4


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
        for ``layers.update_running(bn_state, moments, momentum)``.
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
