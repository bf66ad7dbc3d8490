"""What the PyTorch and JAX fixtures share: a case read for porting, its layer entries checked
and cut into networks.  NumPy only.

``read(path)`` reads a case (``refmeta.cases.files.load_case``: the JSON and its NPZ checked
whole) and returns a ``Port``: the document, the inputs and parameters as host arrays in the
case's layout, the networks, the loss and the layout of every parameter.  The frameworks'
modules (``refmeta.cases.torch``, ``refmeta.cases.jax``) turn a Port into tensors and code.

Networks.  ``model.layers`` is cut into networks, in order:

- entries that name a ``network`` (Meta Networks' "b", "u", "m.conv", "d.conv", ...) form it;
- otherwise a ``sequence`` entry starts the network "sequence" (SNAIL: the layers that read the
  sequences, which are that network's input), and each ``lstm_gates`` entry is a network of its
  own (Matching Networks' FCE cells); any other run of entries is one network, named by the
  dotted prefix all its parameter names share ("embed"), or "net".

A network is a *cell* when it is one ``lstm_gates`` entry: ``(x, (r, c)) -> (h', c')``, r the
recurrent input the entry names; *recurrent* when an ``lstm_gates`` entry starts it and more
layers follow: the cell runs over the input's leading (time) axis from zero state and its last
h goes on (Meta Networks' d); *feedforward* otherwise.  The two branches a ``gated_concat``
reads (its filter and gate ``causal_conv1d``) and the three a ``causal_attention`` reads (its
query, key and value ``dense``) are the entries just before it, and are folded into it.

Uses.  An entry's ``used_by`` lists the computations that run it (Meta Networks: b's
"classifier" and "slow head", u's "representation" and "slow head"); a network runs one use at
a time, the entries that name it (or name no use) in order, the first use named by default.
An entry may read a parameter that an earlier entry of its network reads too (u's fc1: linearly
in the representation, with φ in the slow head): it is the same parameter, tied.

The layout of each parameter (``refmeta.cases.layouts``) comes from the layers that read it.
"""

import os
from typing import NamedTuple

import numpy as np

from refmeta.cases import layouts as layouts_
from refmeta.cases.files import load_case

LAYER_TYPES = ("dense", "relu", "tanh", "conv2d", "batch_norm", "max_pool", "mean", "flatten",
               "lstm_gates", "sequence", "causal_conv1d", "gated_concat", "causal_attention")
FIELDS = {"dense": ("weight",), "conv2d": ("weight", "stride"), "batch_norm": ("mode", "eps"),
          "max_pool": ("kernel_size", "stride"), "causal_conv1d": ("weight", "dilation"),
          "lstm_gates": ("weight", "recurrent_weight", "hidden_size", "recurrent_size", "gate_order"),
          "gated_concat": ("block",), "causal_attention": ("block", "key_size")}
PARAMETER_KEYS = ("weight", "recurrent_weight", "bias", "offset", "scale")
BRANCHES = {"gated_concat": ("causal_conv1d", "causal_conv1d"),
            "causal_attention": ("dense", "dense", "dense")}
BN_MODES = ("transductive", "running")
ACTIVATIONS = (None, "relu", "tanh")
REDUCTIONS = ("mean", "sum", "n_way_times_mean")
LOSSES = {"mse": "mse", "cross_entropy": "cross_entropy", "cross-entropy": "cross_entropy",
          "negative log-likelihood": "nll"}


class Network(NamedTuple):
    """One network of a case: ``kind`` "feedforward", "cell" or "recurrent"; ``layers`` its
    entries, a ``gated_concat`` / ``causal_attention`` entry carrying its branches under
    "branches"; ``uses`` {use: indices of the layers it runs}, the first the default, {None:
    every index} when no entry names a use."""
    name: str
    kind: str
    layers: list
    uses: dict

    def run(self, use=None):
        """The indices of ``layers`` that ``use`` runs (None: the first use); ValueError naming
        the uses for any other."""
        if use is None:
            return next(iter(self.uses.values()))
        if use not in self.uses:
            known = ", ".join(repr(u) for u in self.uses if u is not None) or "none: it has one path"
            raise ValueError(f"network {self.name!r} has no use {use!r}; its entries' used_by name "
                             f"{known}")
        return self.uses[use]


class Port(NamedTuple):
    """A case read for porting; arrays are host float64 in the case's layout."""
    path: str
    document: dict
    inputs: dict       # non-parameter inputs {name: array}, integer-valued ones as int64
    params: dict       # {parameter name: array}
    statistics: dict   # running batch-norm statistics {name: array}
    networks: dict     # {name: Network}, in the order of model.layers
    layouts: dict      # {parameter name: layout}, see refmeta.cases.layouts
    loss: str          # "mse", "cross_entropy" or "nll"
    reduction: str     # the case's query reduction, or None


def read(path, framework):
    """The Port of the case at ``path`` (CASE.json, its NPZ beside it), checked for
    ``framework`` ("torch" or "jax"); ValueError naming what it cannot port."""
    document, arrays = load_case(os.fspath(path))
    case_id = document["id"]
    entries = document["model"].get("layers") if isinstance(document["model"], dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"case {case_id}: model.layers must list the layers; got {entries!r}")
    for index, entry in enumerate(entries):
        _check_entry(case_id, index, entry, framework)
    params = {name[len("params/"):]: arrays["inputs/" + name] for name in document["inputs"]
              if name.startswith("params/")}
    inputs = {}
    for name, entry in document["inputs"].items():
        if not name.startswith("params/"):
            value = arrays["inputs/" + name]
            inputs[name] = value.astype(np.int64) if entry.get("integer_valued") else value
    networks = _networks(case_id, entries)
    layouts = layouts_.parameter_layouts(case_id, entries, params)
    statistics = _statistics(case_id, entries, {**inputs, **params})
    loss_type = document.get("loss", {}).get("type") if isinstance(document.get("loss"), dict) else None
    if loss_type not in LOSSES:
        raise ValueError(f"case {case_id}: loss type {loss_type!r} is not one the fixtures know "
                         f"({', '.join(LOSSES)})")
    reduction = str(document["conventions"].get("query_reduction", "")).split(" ")[0]
    return Port(os.fspath(path), document, inputs, params, statistics, networks, layouts,
                LOSSES[loss_type], reduction if reduction in REDUCTIONS else None)


# ----- the layer entries -----
def _check_entry(case_id, index, entry, framework):
    """ValueError for an entry the fixtures cannot build: an unknown type or setting."""
    where = f"case {case_id}: model.layers[{index}]"
    kind = entry.get("type") if isinstance(entry, dict) else None
    if kind not in LAYER_TYPES:
        raise ValueError(f"{where} has layer type {kind!r}, which refmeta.cases.{framework} cannot "
                         f"build; it builds {', '.join(LAYER_TYPES)}")
    missing = [field for field in FIELDS.get(kind, ()) if entry.get(field) is None]
    if missing:
        raise ValueError(f"{where} ({kind}) lacks {', '.join(missing)}")
    if entry.get("activation") not in ACTIVATIONS:
        raise ValueError(f"{where} ({kind}) has activation {entry['activation']!r}; known: "
                         "relu, tanh or null")
    if kind == "dense" and not str(entry.get("weight_layout", "(in, out)")).startswith("(in, out)"):
        raise ValueError(f"{where}: dense weight_layout {entry['weight_layout']!r}; the fixtures "
                         "read (in, out)")
    if kind == "conv2d" and not str(entry.get("weight_layout", "OIHW")).startswith("OIHW"):
        raise ValueError(f"{where}: conv2d weight_layout {entry['weight_layout']!r}; the fixtures "
                         "read OIHW")
    if kind == "batch_norm" and entry.get("mode") not in BN_MODES:
        raise ValueError(f"{where}: batch_norm mode {entry.get('mode')!r}; known: "
                         f"{', '.join(BN_MODES)}")
    if kind == "lstm_gates" and sorted(layouts_.gates(entry["gate_order"])) != sorted("ifgo"):
        raise ValueError(f"{where}: lstm_gates gate_order {entry['gate_order']!r} must name the "
                         "gates i, f, o and the cell input g (or a) once each")


def _networks(case_id, entries):
    """{name: Network} of the layer entries (module docstring)."""
    groups = []                                       # [(name, [entries])]
    if any("network" in entry for entry in entries):
        for entry in entries:
            name = entry.get("network", "net")
            if not groups or groups[-1][0] != name:
                if name in (n for n, _ in groups):
                    raise ValueError(f"case {case_id}: the entries of network {name!r} are not "
                                     "consecutive in model.layers")
                groups.append((name, []))
            groups[-1][1].append(entry)
    else:
        groups.append((None, []))
        for entry in entries:
            if entry["type"] == "sequence":               # starts the network that reads it
                groups.append(("sequence", []))
            elif entry["type"] == "lstm_gates":           # a cell, on its own
                groups += [(_shared_prefix([entry]), [entry]), (None, [])]
            else:
                groups[-1][1].append(entry)
        groups = [(name or _shared_prefix(layers) or "net", layers) for name, layers in groups
                  if layers]
    networks = {}
    for name, layers in groups:
        if name in networks:
            raise ValueError(f"case {case_id}: two networks would be named {name!r}")
        networks[name] = _network(case_id, name, layers)
    return networks


def _network(case_id, name, entries):
    layers = []
    for entry in entries:
        if entry["type"] in BRANCHES:
            wanted = BRANCHES[entry["type"]]
            branches = layers[-len(wanted):]
            block = str(entry.get("block"))
            if ([b["type"] for b in branches] != list(wanted)
                    or not all(str(b.get("weight")).startswith(block + ".") for b in branches)):
                raise ValueError(f"case {case_id}: network {name!r}: {entry['type']} of block "
                                 f"{block!r} reads the {len(wanted)} layers before it, "
                                 f"{', '.join(wanted)} with parameters {block}.*")
            layers[-len(wanted):] = [dict(entry, branches=branches)]
        else:
            layers.append(entry)
    cells = [i for i, layer in enumerate(layers) if layer["type"] == "lstm_gates"]
    if cells and cells != [0]:
        raise ValueError(f"case {case_id}: network {name!r}: an lstm_gates layer must come first "
                         "in its network, and only once")
    kind = "feedforward" if not cells else "cell" if len(layers) == 1 else "recurrent"
    if kind == "recurrent" and layers[0]["recurrent_size"] != layers[0]["hidden_size"]:
        raise ValueError(f"case {case_id}: network {name!r} runs its lstm_gates layer over a "
                         "sequence, which needs recurrent_size = hidden_size (its own h)")
    return Network(name, kind, layers, _uses(case_id, name, kind, layers))


def _uses(case_id, name, kind, layers):
    """{use: indices of the layers that name it in ``used_by``, or name none}, in the order the
    uses are first named; {None: every index} when no layer names one."""
    named = [layer.get("used_by") for layer in layers if layer.get("used_by") is not None]
    bad = [u for u in named if not (isinstance(u, list) and u and all(isinstance(x, str) for x in u))]
    if bad:
        raise ValueError(f"case {case_id}: network {name!r}: used_by must be a list of use names; "
                         f"got {bad[0]!r}")
    if named and kind != "feedforward":
        raise ValueError(f"case {case_id}: network {name!r}: used_by is read in feedforward "
                         "networks only (not with an lstm_gates layer)")
    uses = list(dict.fromkeys(use for u in named for use in u)) or [None]
    return {use: [i for i, layer in enumerate(layers)
                  if use is None or layer.get("used_by") is None or use in layer["used_by"]]
            for use in uses}


def _shared_prefix(entries):
    """The dotted prefix every parameter name of ``entries`` shares ("" if none)."""
    names = [entry[key].split(".") for entry in entries for key in PARAMETER_KEYS
             if isinstance(entry.get(key), str)]
    prefix = []
    for parts in zip(*[n[:-1] for n in names]) if names else ():
        if len(set(parts)) != 1:
            break
        prefix.append(parts[0])
    return ".".join(prefix)



def _statistics(case_id, entries, arrays):
    """{name: array} of the running statistics that running-mode batch norms read: the input
    named so, or ``<group>/<name>``."""
    found = {}
    for entry in entries:
        if entry["type"] != "batch_norm" or entry["mode"] != "running":
            continue
        names = entry.get("running_stats")
        if not isinstance(names, list) or len(names) != 2:
            raise ValueError(f"case {case_id}: a running-mode batch_norm needs running_stats "
                             f"[mean name, variance name]; got {names!r}")
        for name in names:
            matches = [key for key in arrays if key == name or key.endswith("/" + name)]
            if len(matches) != 1:
                raise ValueError(f"case {case_id}: batch_norm running statistic {name!r} must be "
                                 f"one input of the case; found {matches}")
            found[name] = arrays[matches[0]]
    return found
