"""What the case builders share: the Recipe and Array records, the default tolerance, the loss
descriptions, the synthetic episode of the classification cases and its batch-norm
perturbation, and the framework layouts written into every layer entry."""

import math
from typing import Callable, NamedTuple

import numpy as np

from refmeta.device import backend

RTOL = 1e-10          # see default_tolerance and docs/reference-cases.md, "Tolerances"
ATOL_FACTOR = 1e-10
NOISE_FACTOR = 1e-12  # rounding noise of a structurally zero gradient, × its group's scale
NOT_APPLICABLE = "not applicable: "
ONE_TASK = NOT_APPLICABLE + "one task: the case computes a single episode"


class Recipe(NamedTuple):
    """A case before it is computed: what ``refmeta.cases.build`` turns into the case.

    ``header`` holds the JSON-able keys "algorithm", "description", "seed", "model", "loss",
    "conventions", "hyperparameters" and "procedure"; ``inputs`` {name: Array} the host arrays
    drawn from the seed (params, data, draws).  ``outputs(values)`` computes the case's outputs,
    {name: Array} on the host, from ``values`` {input name: array}, host or device arrays of
    the inputs' names and shapes, and from nothing else: moved inputs give their own outputs.
    """
    header: dict
    inputs: dict
    outputs: Callable


class Array(NamedTuple):
    """One input or output of a case: a host array and what it means.

    ``zero_because`` (outputs only) marks an output that is 0 in exact arithmetic and says
    why; the JSON records it as ``structurally_zero`` and such an output carries only
    rounding noise, so no test asks a small error in it to fail.
    """
    value: object
    meaning: str
    rtol: float = None
    atol: float = None
    zero_because: str = None


def default_tolerance(scale):
    """(rtol, atol) = (1e-10, 1e-10 · scale rounded up to a power of ten).

    ``scale`` is the largest |value| in the output's group: every output whose name shares the
    part before the first "/" (all of ``meta_gradient/...``), or the output alone.  An element
    passes when |theirs − reference| ≤ atol + rtol·|reference|.  atol covers entries that are
    small because terms cancelled (a conv bias before batch norm has a meta-gradient of pure
    rounding noise): their rounding error scales with the terms, i.e. with the group's
    magnitude, not with the entry's.
    """
    if not scale > 0.0:
        return RTOL, ATOL_FACTOR
    return RTOL, power_of_ten_above(ATOL_FACTOR * scale)


def power_of_ten_above(x):
    """The smallest power of ten ≥ x (x > 0)."""
    return 10.0 ** math.ceil(math.log10(x))


def tree_arrays(prefix, tree, meaning, zero_because=None):
    """{prefix/name: Array} for every leaf of a params tree; ``zero_because`` maps a leaf name
    to the reason its output is structurally zero."""
    zero_because = zero_because or {}
    return {f"{prefix}/{name}": Array(np.asarray(tree[name]), meaning,
                                      zero_because=zero_because.get(name))
            for name in sorted(tree)}


def values_under(values, prefix):
    """{name: value} of the entries of ``values`` named ``prefix/name``."""
    return {name[len(prefix) + 1:]: value for name, value in values.items()
            if name.startswith(prefix + "/")}


def host(tree):
    """A tree of device or host arrays, read to the host explicitly (the outputs' last step)."""
    return backend.to_host(tree)


def tolerances(outputs):
    """{name: (rtol, atol)} of every output: its own, or ``default_tolerance`` of its group."""
    scales = group_scales(outputs)
    found = {}
    for name, array in outputs.items():
        rtol, atol = default_tolerance(scales[name.split("/")[0]])
        found[name] = (rtol if array.rtol is None else array.rtol,
                       atol if array.atol is None else array.atol)
    return found


def group_scales(outputs):
    """{group: max |value| over the outputs named group/...} (a name without "/" is a group)."""
    scales = {}
    for name, array in outputs.items():
        group = name.split("/")[0]
        finite = np.abs(np.asarray(array.value, dtype=np.float64))
        finite = finite[np.isfinite(finite)]
        largest = float(finite.max()) if finite.size else 0.0
        scales[group] = max(scales.get(group, 0.0), largest)
    return scales


MSE_LOSS = {"type": "mse", "per_example": "mean over the output dimension of (prediction − y)^2",
            "reduction_over_examples": "see conventions"}
CE_LOSS = {"type": "cross_entropy", "per_example": "−log softmax(logits)[label]",
           "labels": "integers 0..n_way−1 stored as float64 (support_y, query_y)",
           "reduction_over_examples": "see conventions; n_way_times_mean = n_way × mean"}
ADAM_META = {"meta_optimizer": "adam", "adam_b1": 0.9, "adam_b2": 0.999, "adam_eps": 1e-8,
             "adam_state": "fresh: zero moments, step 1 is the first"}

# Why an output is 0 in exact arithmetic (the JSON's "structurally_zero"; docs, "Outputs that
# are zero by construction")
CONV_BIAS_BEFORE_BN = ("the conv bias is followed by batch norm, which subtracts each channel's "
                       "mean over the batch: the bias cancels from every output, so its gradient "
                       "is 0 in exact arithmetic and rounding noise (~1e-16) in practice")
KEY_BIAS = ("the key bias adds q_t·b_k to every logit of row t, the same for every key s, and the "
            "softmax over s is unchanged by it: its gradient is 0 in exact arithmetic and rounding "
            "noise (~1e-19) in practice")


def synthetic_episode(rng, n_way, k_shot, n_query_per_class, image_size):
    """Host (support_x (N·K, 1, s, s), support_y, query_x (N·n_query_per_class, ...), query_y):
    one random "character" per class plus noise; the support is class-major, the queries
    shuffled."""
    characters = rng.uniform(0.0, 1.0, (n_way, 1, 1, image_size, image_size))
    draw = lambda n: (characters + 0.1 * rng.standard_normal((n_way, n, 1, image_size, image_size))
                      ).reshape((n_way * n, 1, image_size, image_size))
    support_x, query_x = draw(k_shot), draw(n_query_per_class)
    order = rng.permutation(n_way * n_query_per_class)
    return (support_x, np.repeat(np.arange(n_way), k_shot), query_x[order],
            np.repeat(np.arange(n_way), n_query_per_class)[order])


def query_counts(n_way, n_query_per_class):
    """The hyperparameters that say how many queries a classification case has."""
    return {"n_query_per_class": n_query_per_class, "n_query_total": n_way * n_query_per_class}


def perturbed_batch_norm(rng, params, width, prefix=""):
    """params with the four conv4 batch-norm layers' offsets drawn U(±0.1) and scales 1 + U(±0.1)
    (draws in the order bn0.offset, bn0.scale, bn1.offset, …), so that a case tests them."""
    return dict(params, **{f"{prefix}bn{i}.{k}": v + rng.uniform(-0.1, 0.1, width) for i in range(4)
                           for k, v in (("offset", 0.0), ("scale", 1.0))})


# ----- layer entries: the layouts of PyTorch and JAX/haiku (docs, "The model description") -----
GATE_NAMES = {"i": "input gate", "f": "forget gate", "g": "cell input (tanh)", "a": "cell input (tanh)",
              "o": "output gate"}


def _blocks(order, wanted):
    """Block indices that reorder gate blocks from ``order`` into ``wanted`` (a ≡ g)."""
    same = lambda gate: "g" if gate == "a" else gate
    return [[same(gate) for gate in order].index(gate) for gate in wanted]


def lstm_layer(role, weight, recurrent_weight, bias, input_size, recurrent_size, hidden_size,
               gate_order, recurrent_input="h"):
    """The entry of one LSTM cell: z = x @ weight + r @ recurrent_weight + bias (r: the recurrent
    input, h or [h, read]), split into 4 contiguous blocks of hidden_size columns in gate_order."""
    order = list(gate_order)
    cell = "a" if "a" in order else "g"
    torch_blocks, haiku_blocks = _blocks(order, "ifgo"), _blocks(order, "igfo")
    torch = (f"nn.LSTMCell({input_size}, {hidden_size}): weight_ih = weight[:, P].T, "
             f"weight_hh = recurrent_weight[:, P].T, bias_ih = bias[P], bias_hh = 0, with P the "
             f"columns of blocks {torch_blocks} (PyTorch's order i, f, g, o)")
    haiku = (f"hk.LSTM({hidden_size}): its one hk.Linear on concat([x, h]) has w = "
             f"concatenate([weight, recurrent_weight])[:, P], b = bias[P] with P the columns of "
             f"blocks {haiku_blocks} (haiku's order i, g, f, o), minus 1 on the f block of b "
             "(hk.LSTM adds 1 to the forget gate)")
    if recurrent_size != hidden_size:
        torch = (f"write the cell out (nn.LSTMCell's recurrent input must have {hidden_size} "
                 f"features; this one has {recurrent_size}): gates = x @ weight + {recurrent_input} "
                 f"@ recurrent_weight + bias, or, transposed, weight_ih = weight[:, P].T and "
                 f"weight_hh = recurrent_weight[:, P].T with P the columns of blocks {torch_blocks} "
                 "(PyTorch's order i, f, g, o)")
        haiku = (f"write the cell out (hk.LSTM's recurrent input is its own h): hk.Linear "
                 f"w = concatenate([weight, recurrent_weight]) on concat([x, {recurrent_input}]), "
                 "b = bias, in this entry's gate order")
    return {"type": "lstm_gates", "role": role, "weight": weight, "recurrent_weight": recurrent_weight,
            "bias": bias, "input_size": input_size, "recurrent_size": recurrent_size,
            "hidden_size": hidden_size, "recurrent_input": recurrent_input, "gate_order": order,
            "gate_columns": f"contiguous: gate k of gate_order is columns k·{hidden_size} … "
                            f"(k+1)·{hidden_size} − 1 of weight, recurrent_weight and bias",
            "weight_layout": f"weight ({input_size}, {4 * hidden_size}), recurrent_weight "
                             f"({recurrent_size}, {4 * hidden_size}), bias ({4 * hidden_size},): "
                             f"z = x @ weight + {recurrent_input} @ recurrent_weight + bias",
            "computes": f"{', '.join(order)} = the blocks of z; c' = σ(f) ⊙ c + σ(i) ⊙ tanh({cell}); "
                        "h' = σ(o) ⊙ tanh(c')",
            "torch_layout": torch, "haiku_layout": haiku}


def _padding(layer):
    padding = layer.get("padding", 0)
    if isinstance(padding, dict):
        return padding
    return {"top": padding, "bottom": padding, "left": padding, "right": padding}


def framework_layouts(layer):
    """{"torch_layout": ..., "haiku_layout": ...} of one layer entry ({} if it reads no params
    and its computation is the same in every framework)."""
    kind, has_bias = layer["type"], bool(layer.get("bias"))
    if kind == "dense":
        return {"torch_layout": "nn.Linear(in, out" + ("" if has_bias else ", bias=False") + "): "
                                "weight = w.T (out, in)" + (", bias = b" if has_bias else ""),
                "haiku_layout": "hk.Linear(out" + ("" if has_bias else ", with_bias=False") + "): "
                                "w = w (in, out), the same" + (", b = b" if has_bias else "")}
    if kind == "conv2d":
        pad, stride = _padding(layer), layer["stride"]
        return {"torch_layout": f"nn.Conv2d(in, out, 3, stride={stride}, padding=1"
                                + ("" if has_bias else ", bias=False") + "): weight = w (OIHW, the "
                                "same)" + (", bias = b" if has_bias else "") + "; data (n, C, H, W)",
                "haiku_layout": f"hk.Conv2D(out, 3, stride={stride}, padding=(({pad['top']}, "
                                f"{pad['bottom']}), ({pad['left']}, {pad['right']}))"
                                + ("" if has_bias else ", with_bias=False") + "): w = "
                                "w.transpose(2, 3, 1, 0) (HWIO)" + (", b = b" if has_bias else "")
                                + "; data NHWC = x.transpose(0, 2, 3, 1) (or data_format='NCHW'); "
                                "not padding='SAME', which pads (0, 1) at stride 2"}
    if kind == "batch_norm":
        scale = layer.get("scale") is not None
        offset = layer.get("offset") is not None
        return {"torch_layout": "F.batch_norm(x, None, None, weight=" + ("scale" if scale else "None")
                                + ", bias=" + ("offset" if offset else "None") + ", training=True, "
                                f"eps={layer['eps']}) (nn.BatchNorm2d in train mode: weight = scale, "
                                "bias = offset, each (C,); it normalises with the biased variance)",
                "haiku_layout": f"hk.BatchNorm(create_scale={scale}, create_offset={offset}, "
                                f"decay_rate=0.9, eps={layer['eps']})(x, is_training=True) on NHWC "
                                "data: " + ", ".join(f"{k} = {k}.reshape(1, 1, 1, C)" for k, on in
                                                     (("scale", scale), ("offset", offset)) if on)}
    if kind == "causal_conv1d":
        k, d = layer["kernel_size"], layer["dilation"]
        return {"torch_layout": f"nn.Conv1d(in, out, {k}, dilation={d}) on (C, T) = x.T after "
                                f"F.pad(x, ({(k - 1) * d}, 0)) (left only): weight = w.permute(2, 1, "
                                "0) (out, in, k), bias = b",
                "haiku_layout": f"hk.Conv1D(out, {k}, rate={d}, padding=(({(k - 1) * d}, 0),)) on "
                                "(T, C), this layout: w = w (k, in, out) (WIO, the same), b = b"}
    if kind == "max_pool":
        return {"torch_layout": "F.max_pool2d(x, 2, 2)",
                "haiku_layout": "hk.max_pool(x, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID') on NHWC"}
    if kind == "flatten":
        return {"torch_layout": "x.flatten(1) on (n, C, H, W)",
                "haiku_layout": "x.transpose(0, 3, 1, 2).reshape(n, -1) on NHWC: the (C, H, W) "
                                "order, not (H, W, C)"}
    if kind == "mean":
        return {"torch_layout": "x.mean((-2, -1)) on (n, C, H, W)",
                "haiku_layout": "x.mean((1, 2)) on NHWC"}
    return {}


def with_layouts(layers):
    """Every layer entry with its framework layouts added (lstm_gates entries carry theirs)."""
    return [dict(layer, **framework_layouts(layer)) for layer in layers]


def prefixed(layers, prefix):
    """Layer entries whose parameter names get ``prefix`` ("embed.")."""
    keys = ("weight", "recurrent_weight", "bias", "offset", "scale")
    return [{k: (f"{prefix}{v}" if k in keys and v else v) for k, v in layer.items()}
            for layer in layers]
