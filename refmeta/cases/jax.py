"""A reference case in JAX in one call, and its outputs back in one call (``refmeta[jax]``).

    jax.config.update("jax_enable_x64", True)        # the cases are float64
    fixture = refmeta.cases.jax.load("cases/maml-sinusoid-k1-second-order.json")
    fixture.inputs["support_x"]                      every input, a float64 jax array
    fixture.params                                   {parameter name: array}, haiku/flax layout
    fixture.apply(params, x)                         the case's network, a pure function
    fixture.loss(prediction, y, "mean")              the case's loss
    save_outputs(fixture, {"updated/dense0.w": ..., ...}, "theirs.npz")

then ``refmeta verify cases/maml-sinusoid-k1-second-order.json theirs.npz``.  Plain JAX: no
haiku or flax.  The fixture gives the network, the data and the I/O; the algorithm is yours.

The layout (haiku's and flax's where they agree):
    images      NHWC: every input with 4 or more axes of a case with a conv layer,
                (..., n, C, H, W) -> (..., n, H, W, C)
    dense       w (in, out), b (out,): the case's
    conv2d      w HWIO (the case's OIHW transposed (2, 3, 1, 0)), b (out,)
    batch_norm  offset, scale (C,): flax's (haiku keeps (1, 1, 1, C): reshape)
    causal_conv1d  w (k, in, out) (WIO), b: the case's
    lstm_gates  w_x (in, 4H), w_h (r, 4H), b (4H,) with the gate blocks in hk.LSTM's order
                (i, g, f, o); hk.LSTM's one w is concatenate([w_x, w_h]), and its bias is b
                minus 1 on the f block (hk.LSTM adds 1 to the forget gate; here nothing is
                added, so that every conversion stays a permutation)
Integer-valued inputs (labels, indices) are int64.

``apply(params, x, *state, network=None, use=None, fast_weights=None, intermediates=False)``
runs one network of the case (default the first; ``fixture.networks`` lists them, as in
``refmeta.cases.porting``): a cell takes ``(x, (r, c))`` and returns (h, c); a recurrent
network takes x (T, n, in) from zero state.  Batch norm takes its statistics per leading index
(per task).  ``use=`` runs one of the computations its entries' ``used_by`` name (Meta
Networks: b's "classifier" or "slow head", u's "representation" or "slow head"; default the
first).  ``fast_weights={weight name: array}`` adds Meta Networks' fast term to the layers of
that use marked ``augmented`` (a slow head is run without them).

``save_outputs(fixture, outputs, path)`` takes {output name: array in this layout}, converts
each back to the case's layout and writes THEIRS.npz atomically; it refuses unknown names,
dtypes other than float64, wrong shapes (saying the expected one) and NaN or inf.
"""

import functools
import math

import numpy as np

try:
    import jax
    import jax.numpy as jnp
    from jax import lax
except ImportError:
    raise ImportError("refmeta.cases.jax needs JAX, which is not installed: "
                      "pip install 'refmeta[jax]'") from None

from refmeta.cases import layouts, porting

__all__ = ["Fixture", "load", "save_outputs", "to_case_layout"]
HIGHEST = lax.Precision.HIGHEST


def load(case_json):
    """The Fixture of the case at ``case_json`` (its NPZ beside it); see the module docstring.

    Raises ValueError when JAX runs in float32, for a case that cannot be read, or a layer the
    fixture does not know (naming it).
    """
    if not jax.config.jax_enable_x64:
        raise ValueError("JAX computes in float32 (jax_enable_x64 is off); the fixtures are float64 "
                         "and the cases need it (tolerances near 1e-10): call "
                         "jax.config.update(\"jax_enable_x64\", True) at start-up")
    return Fixture(porting.read(case_json, "jax"))


def save_outputs(fixture, outputs, path):
    """Write {output name: array in this layout} as THEIRS.npz for ``refmeta verify``; returns
    the path.  ValueError/TypeError for an unknown name, a dtype other than float64, a wrong
    shape or NaN."""
    return layouts.write_npz(fixture.port, to_case_layout(fixture, outputs), path)


def to_case_layout(fixture, outputs):
    """{output name: NumPy array in the case's layout}, checked as ``save_outputs`` does."""
    return layouts.case_layout(fixture.port, outputs, "jax", np.asarray)


class Fixture:
    """A case in JAX: see the module docstring."""

    def __init__(self, port):
        self.port, self.case = port, port.document
        self.conventions, self.hyperparameters = port.document["conventions"], port.document["hyperparameters"]
        images = any(e["type"] == "conv2d" for n in port.networks.values() for e in n.layers)
        self.inputs = {name: jnp.asarray(np.moveaxis(a, -3, -1) if images and a.ndim >= 4 else a)
                       for name, a in port.inputs.items()}
        self.params = {name: jnp.asarray(layouts.to_framework(port.layouts[name], a, "jax"))
                       for name, a in port.params.items()}
        self.networks = {name: functools.partial(_apply, network, port.statistics)
                         for name, network in port.networks.items()}

    def apply(self, params, x, *state, network=None, **options):
        """The network (default the first) on x: a pure function of {parameter name: array}."""
        if network is not None and network not in self.networks:
            raise ValueError(f"unknown network {network!r}; case {self.case['id']} has "
                             f"{', '.join(self.networks)}")
        return self.networks[network or next(iter(self.networks))](params, x, *state, **options)

    def loss(self, prediction, target, reduction=None):
        """The case's loss of ``prediction`` against ``target``, reduced over the examples."""
        reduction = reduction or self.port.reduction
        if reduction not in porting.REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(porting.REDUCTIONS)} (the case's "
                             f"conventions name them); got {reduction!r}")
        if self.port.loss == "mse":
            per_example = jnp.mean((prediction - target) ** 2, axis=-1)
        else:
            log_p = jax.nn.log_softmax(prediction) if self.port.loss == "cross_entropy" else prediction
            per_example = -jnp.take_along_axis(log_p, target[..., None].astype(int), -1)[..., 0]
        if reduction == "sum":
            return jnp.sum(per_example)
        scale = prediction.shape[-1] if reduction == "n_way_times_mean" else 1
        return scale * jnp.mean(per_example)


# ----- the network -----
def _apply(network, statistics, params, x, state=None, fast_weights=None, intermediates=False,
           use=None):
    run = network.run(use)
    fast_weights = fast_weights or {}
    unknown = set(fast_weights) - {network.layers[i].get("weight") for i in run
                                   if network.layers[i].get("augmented")}
    if unknown:
        raise ValueError(f"fast_weights for {sorted(unknown)}: no augmented layer of network "
                         f"{network.name!r}" + (f" in its use {use!r}" if use else "") + " reads them")
    layers, outputs = [network.layers[i] for i in run], []
    if network.kind == "cell":
        return _lstm(layers[0], params, x, state)
    if network.kind == "recurrent":                        # x (T, ..., in), from zero state
        cell, layers = layers[0], layers[1:]
        h = c = jnp.zeros(x.shape[1:-1] + (params[cell["recurrent_weight"]].shape[0],))
        for step in x:
            h, c = _lstm(cell, params, step, (h, c))
        x = h
        outputs.append(h)
    spatial = bool(layers) and layers[0]["type"] in ("conv2d", "batch_norm", "max_pool")
    for entry in layers:
        x = _layer(entry, params, x, fast_weights.get(entry.get("weight")), spatial, statistics)
        spatial = spatial and entry["type"] not in ("mean", "flatten")
        outputs.append(x)
    return (x, outputs) if intermediates else x


ACTIVATIONS = {None: lambda x: x, "relu": jax.nn.relu, "tanh": jnp.tanh}


def _layer(entry, params, x, fast, spatial, statistics):
    """One layer entry on x (images NHWC)."""
    kind = entry["type"]
    if kind in ("dense", "conv2d"):
        linear = _dense if kind == "dense" else functools.partial(_conv2d, entry)
        phi = ACTIVATIONS[entry.get("activation")]
        out = phi(linear(x, params[entry["weight"]], params.get(entry.get("bias"))))
        return out if fast is None else out + phi(linear(x, fast, None))
    if kind == "batch_norm":
        return _batch_norm(entry, params, x, spatial, statistics)
    if kind == "max_pool":
        return _max_pool(entry, x)
    if kind == "mean":
        return jnp.mean(x, axis=(-3, -2))
    if kind == "flatten":                                  # (C, H, W) order, as the case
        return jnp.reshape(jnp.moveaxis(x, -1, -3), x.shape[:-3] + (-1,))
    if kind == "causal_conv1d":
        return _causal_conv1d(entry, params, x)
    if kind == "gated_concat":
        filter_, gate = (_causal_conv1d(branch, params, x) for branch in entry["branches"])
        return jnp.concatenate([x, jnp.tanh(filter_) * jax.nn.sigmoid(gate)], axis=-1)
    if kind == "causal_attention":
        return _causal_attention(entry, params, x)
    return ACTIVATIONS[kind](x)


def _dense(x, w, b):
    y = jnp.matmul(x, w, precision=HIGHEST)
    return y if b is None else y + b


def _conv2d(entry, x, w, b):
    pad = entry.get("padding", 0)
    pad = pad if isinstance(pad, dict) else dict(top=pad, bottom=pad, left=pad, right=pad)
    stride = entry["stride"]
    flat = jnp.reshape(x, (-1,) + x.shape[-3:])
    y = lax.conv_general_dilated(flat, w, (stride, stride), ((pad["top"], pad["bottom"]),
                                                             (pad["left"], pad["right"])),
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=HIGHEST)
    y = jnp.reshape(y, x.shape[:-3] + y.shape[1:])
    return y if b is None else y + b


def _batch_norm(entry, params, x, spatial, statistics):
    if entry["mode"] == "transductive":                    # per channel over (n, H, W), biased
        axes = (-4, -3, -2) if spatial else (-2,)
        mean = jnp.mean(x, axis=axes, keepdims=True)
        var = jnp.mean((x - mean) ** 2, axis=axes, keepdims=True)
    else:
        mean, var = (statistics[name] for name in entry["running_stats"])
    y = (x - mean) / jnp.sqrt(var + entry["eps"])
    if entry.get("scale"):
        y = y * params[entry["scale"]]
    return y + params[entry["offset"]] if entry.get("offset") else y


def _pair(value):
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def _max_pool(entry, x):
    """On (..., H, W, C); ceil_mode as PyTorch's: a last window that starts inside the input."""
    kernel, stride = _pair(entry["kernel_size"]), _pair(entry["stride"])
    padding = _pair(entry.get("padding", 0))
    pads = []
    for size, k, s, p in zip(x.shape[-3:-1], kernel, stride, padding):
        steps = (size + 2 * p - k) / s
        out = (math.ceil(steps) if entry.get("ceil_mode") else math.floor(steps)) + 1
        if entry.get("ceil_mode") and (out - 1) * s >= size + p:
            out -= 1
        pads.append((p, max((out - 1) * s + k - size - p, 0)))
    lead = (1,) * (x.ndim - 3)
    return lax.reduce_window(x, -jnp.inf, lax.max, lead + kernel + (1,), lead + stride + (1,),
                             [(0, 0)] * (x.ndim - 3) + pads + [(0, 0)])


def _lstm(entry, params, x, state):
    """One cell in hk.LSTM's gate order (i, g, f, o): returns (h', c')."""
    recurrent, c = state
    z = _dense(x, params[entry["weight"]], params.get(entry.get("bias")))
    i, g, f, o = jnp.split(z + jnp.matmul(recurrent, params[entry["recurrent_weight"]],
                                          precision=HIGHEST), 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


def _causal_conv1d(entry, params, x):
    """y_t = b + Σ_j x_{t−(k−1−j)·dilation} @ w[j] on (..., T, C), x_s = 0 for s < 0."""
    w, steps, dilation = params[entry["weight"]], x.shape[-2], entry["dilation"]
    width = w.shape[0]
    padded = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [((width - 1) * dilation, 0), (0, 0)])
    y = sum(_dense(padded[..., j * dilation:j * dilation + steps, :], w[j], None) for j in range(width))
    return y if not entry.get("bias") else y + params[entry["bias"]]


def _causal_attention(entry, params, x):
    query, key, value = (_dense(x, params[b["weight"]], params.get(b.get("bias")))
                         for b in entry["branches"])
    logits = jnp.matmul(query, jnp.swapaxes(key, -1, -2), precision=HIGHEST) / math.sqrt(entry["key_size"])
    steps = x.shape[-2]
    future = jnp.triu(jnp.ones((steps, steps), dtype=bool), 1)
    probs = jax.nn.softmax(jnp.where(future, -jnp.inf, logits), axis=-1)
    return jnp.concatenate([x, jnp.matmul(probs, value, precision=HIGHEST)], axis=-1)
