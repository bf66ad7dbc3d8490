"""Where a parameter's layout differs between the case and a framework, and the outputs file a
fixture writes.  NumPy only; ``refmeta.cases.porting`` reads the case.

Each parameter is read by one kind of layer (once, or more than once: Meta Networks' u reads
its fc1 twice), which fixes how a framework stores it
(docs/reference-cases.md, "Porting the parameters"):

    layout                        torch                           jax (haiku/flax)
    ("dense",)  (in, out)         (out, in): nn.Linear            the same
    ("conv2d",) OIHW              the same                        HWIO
    ("conv1d",) (k, in, out)      (out, in, k): nn.Conv1d         the same
    ("vector",) (C,)              the same                        the same
    ("lstm_weight", order, H)     (4H, in), gates i, f, g, o      (in, 4H), gates i, g, f, o
    ("lstm_bias", order, H)       (4H,), gates i, f, g, o         (4H,), gates i, g, f, o

``to_framework`` and ``from_framework`` convert the trailing axes and keep any leading ones (a
task axis, a query axis), so the same conversion serves ``params/<p>``, ``adapted_step<j>/<p>``
(T, ...p) and ``read/<p>`` (Q, ...p).  An output ``<group>/<p>`` has the layout of parameter p
(or of the parameters whose name ends with ".<p>", as Meta Networks' ``memory/conv0.w`` for
``base.conv0.w``) when its trailing axes have p's shape; every other output is stored as it
is.  Every conversion permutes axes or gate columns (hk.LSTM's +1 on the forget gate is left to
the user), so a round trip is exact and a gradient converts as its parameter does.
"""

import difflib
import os
import zipfile

import numpy as np

from refmeta import disk

FRAMEWORK_GATES = {"torch": "ifgo", "jax": "igfo"}   # nn.LSTMCell's order; hk.LSTM's


def gates(order):
    """A gate order with the cell input named g (Meta Networks' "a" is the same gate)."""
    return ["g" if gate == "a" else gate for gate in order]


# ----- which layout each parameter has -----
def parameter_layouts(case_id, entries, params):
    """{parameter name: layout} from the layers that read them; every parameter named by a layer
    must be an input, every input parameter must be read by a layer, and layers that read the
    same parameter (u's fc1 in Meta Networks) must read it in one layout."""
    layouts = {}
    for entry in entries:
        for name, layout in _entry_layouts(entry).items():
            if layouts.setdefault(name, layout) != layout:
                raise ValueError(f"case {case_id}: parameter {name!r} is read by a {layouts[name][0]} "
                                 f"layer and by a {layout[0]} layer; one parameter has one layout")
    missing = sorted(set(layouts) - set(params))
    if missing:
        raise ValueError(f"case {case_id}: model.layers read parameters {missing} that the case's "
                         "inputs lack (params/<name>)")
    unread = sorted(set(params) - set(layouts) - set(_running_names(entries)))
    if unread:
        raise ValueError(f"case {case_id}: no layer of model.layers reads the parameters {unread}")
    return layouts


def _entry_layouts(entry):
    kind = entry["type"]
    found = {}
    if kind == "lstm_gates":
        hidden, order = entry["hidden_size"], "".join(gates(entry["gate_order"]))
        found[entry["weight"]] = ("lstm_weight", order, hidden)
        found[entry["recurrent_weight"]] = ("lstm_weight", order, hidden)
        if entry.get("bias"):
            found[entry["bias"]] = ("lstm_bias", order, hidden)
        return found
    weight = {"dense": ("dense",), "conv2d": ("conv2d",), "causal_conv1d": ("conv1d",)}.get(kind)
    if weight and entry.get("weight"):
        found[entry["weight"]] = weight
    for key in ("bias", "offset", "scale"):
        if entry.get(key):
            found[entry[key]] = ("vector",)
    return found


def _running_names(entries):
    return [name for entry in entries if entry["type"] == "batch_norm" and entry.get("mode") == "running"
            for name in entry.get("running_stats") or ()]


# ----- layouts: case <-> framework, on the trailing axes -----
def _gate_columns(order, framework, hidden):
    """Columns P: the framework's gate k is the case's block order.index(framework gate k)."""
    blocks = [order.index(gate) for gate in FRAMEWORK_GATES[framework]]
    return np.concatenate([np.arange(b * hidden, (b + 1) * hidden) for b in blocks])


def _swap_last(a, order):
    """``a`` with its last len(order) axes permuted by ``order`` (leading axes kept)."""
    lead = a.ndim - len(order)
    return a.transpose(tuple(range(lead)) + tuple(lead + k for k in order))


def to_framework(layout, a, framework):
    """Case layout -> ``framework``'s ("torch" or "jax"), on ``a``'s trailing axes."""
    kind = layout[0]
    if kind == "dense" and framework == "torch":
        return _swap_last(a, (1, 0))                        # (in, out) -> (out, in)
    if kind == "conv2d" and framework == "jax":
        return _swap_last(a, (2, 3, 1, 0))                  # OIHW -> HWIO
    if kind == "conv1d" and framework == "torch":
        return _swap_last(a, (2, 1, 0))                     # (k, in, out) -> (out, in, k)
    if kind in ("lstm_weight", "lstm_bias"):
        a = a[..., _gate_columns(layout[1], framework, layout[2])]
        return _swap_last(a, (1, 0)) if kind == "lstm_weight" and framework == "torch" else a
    return a


def from_framework(layout, a, framework):
    """The inverse of ``to_framework``."""
    kind = layout[0]
    if kind == "dense" and framework == "torch":
        return _swap_last(a, (1, 0))
    if kind == "conv2d" and framework == "jax":
        return _swap_last(a, (3, 2, 0, 1))                  # HWIO -> OIHW
    if kind == "conv1d" and framework == "torch":
        return _swap_last(a, (2, 1, 0))
    if kind in ("lstm_weight", "lstm_bias"):
        if kind == "lstm_weight" and framework == "torch":
            a = _swap_last(a, (1, 0))
        return a[..., np.argsort(_gate_columns(layout[1], framework, layout[2]))]
    return a


def layout_of(port, output):
    """The layout of ``output`` (module docstring): a parameter's, or None (stored as it is).
    ValueError when parameters of different layouts fit it."""
    shape = tuple(port.document["outputs"][output]["shape"])
    if "/" not in output:
        return None
    suffix = output.rsplit("/", 1)[1]
    fits = {port.layouts[p] for p in port.layouts
            if (p == suffix or p.endswith("." + suffix)) and port.params[p].ndim <= len(shape)
            and shape[len(shape) - port.params[p].ndim:] == port.params[p].shape}
    if len(fits) > 1:
        raise ValueError(f"output {output!r}: parameters of different layouts fit it ({sorted(fits)}); "
                         "cannot tell which layout to convert from")
    return fits.pop() if fits else None


# ----- THEIRS.npz -----
def case_layout(port, outputs, framework, to_numpy):
    """{output name: float64 array in the case's layout} from the user's {name: value in
    ``framework``'s layout}, each checked: a known name, a float64 array of the expected shape,
    finite.  ``to_numpy`` turns one value into a NumPy array."""
    if not hasattr(outputs, "items") or not outputs:
        raise TypeError("outputs must be a non-empty mapping {output name: array}; got "
                        f"{type(outputs).__name__ if not hasattr(outputs, 'items') else 'an empty one'}")
    expected = port.document["outputs"]
    converted = {}
    for name, value in outputs.items():
        if name not in expected:
            close = difflib.get_close_matches(str(name), list(expected), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else \
                f"; the case's outputs: {', '.join(list(expected)[:6])}, ..."
            raise ValueError(f"unknown output {name!r} for case {port.document['id']}{hint}")
        array = np.asarray(to_numpy(value))
        if array.dtype != np.float64:
            raise TypeError(f"output {name!r} is {array.dtype}; the cases are float64 (their "
                            "tolerances are near 1e-10, beyond float32), so compute in float64")
        layout = layout_of(port, name)
        case_shape = tuple(expected[name]["shape"])
        shape = case_shape if layout is None else to_framework(layout, np.zeros(case_shape),
                                                               framework).shape
        if array.shape != shape:
            where = "" if shape == case_shape else f" in {framework}'s layout (the case's {case_shape})"
            raise ValueError(f"output {name!r} has shape {array.shape}; expected {shape}{where}")
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise ValueError(f"output {name!r} holds {bad} NaN or inf value(s) of {array.size}; "
                             "refmeta verify compares finite numbers only")
        converted[name] = array if layout is None else from_framework(layout, array, framework)
    return converted


def write_npz(port, arrays, path):
    """Write ``arrays`` to ``path`` as an uncompressed NPZ, atomically and never over the case's
    own files (``refmeta.disk.replace_atomically``); returns the path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write {path}: folder {folder} does not exist")

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
            for name, array in arrays.items():
                with archive.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(array, order="C"), allow_pickle=False)

    disk.replace_atomically(path, write, inputs=(
        ("the case's JSON", port.path), ("the case's NPZ", os.path.splitext(port.path)[0] + ".npz")))
    return path