"""A reference case in PyTorch in one call, and its outputs back in one call (``refmeta[torch]``).

    torch.set_default_dtype(torch.float64)          # the cases are float64
    fixture = refmeta.cases.torch.load("cases/maml-sinusoid-k1-second-order.json")
    fixture.inputs["support_x"]                      every input, a float64 tensor
    fixture.model                                    the case's network, an nn.Module
    fixture.forward(fixture.params, x)               the same network, a function of the params
    fixture.loss(prediction, y, "mean")              the case's loss
    save_outputs(fixture, fixture.named("updated", fixture.model.parameters()), "theirs.npz")

then ``refmeta verify cases/maml-sinusoid-k1-second-order.json theirs.npz``.  The fixture gives
the network, the data and the I/O; the algorithm (the inner loop, the meta-gradient) is yours.

The fixture (``Fixture``):
    inputs      {name: tensor}: float64; integer-valued inputs (labels, indices) as int64
    params      {parameter name: float64 tensor} in torch's layout: a dense weight (in, out) is
                nn.Linear's (out, in); conv kernels OIHW as in the case; a causal_conv1d kernel
                (k, in, out) is nn.Conv1d's (out, in, k); an lstm_gates layer is nn.LSTMCell's
                weight_ih (4H, in), weight_hh (4H, r), bias_ih, gates reordered to (i, f, g, o)
                (its bias_hh is 0 and not a parameter)
    networks    {name: nn.Module}, one per network of the case (refmeta.cases.porting):
                "net" for MAML, Reptile and ProtoNet; "embed" and the FCE cells "fce.fw",
                "fce.bw", "fce.att" for Matching Networks; "embed" and "sequence" for SNAIL;
                "b", "u", "m.conv", "d.conv", ... for Meta Networks
    model       the first network; ``network(name)`` any of them; ``forward(params, x, ...,
                network=name)`` one as a function of {parameter name: tensor}
                (torch.func.functional_call)
    named(prefix, tensors, network=None)   {prefix/<parameter name>: tensor} from tensors in
                the order of ``network.parameters()`` (higher's ``fnet.parameters()`` too);
                prefix None: {parameter name: tensor}
    loss(prediction, target, reduction=None)   the case's per-example loss reduced by
                reduction ("mean", "sum", "n_way_times_mean"; default the case's query reduction)

A network's module is called ``module(x)`` (feedforward), ``module(x, (r, c))`` -> (h, c) (a
cell: r is the entry's recurrent input, h or [h, read]), or ``module(x)`` with x (T, n, in) (a
recurrent network, from zero state).  ``use=`` runs one of the computations its entries'
``used_by`` name (Meta Networks: b's "classifier" or "slow head", u's "representation" or
"slow head"; default the first); a parameter two entries read (u's fc1) is one parameter.
``fast_weights={weight name: tensor}`` adds Meta Networks' fast term to the layers of that use
marked ``augmented`` (a slow head is run without them); ``intermediates=True`` also returns
every layer's output.  Batch norm works on one task's batch (n, C, H, W): loop or
``torch.func.vmap`` over a task axis.  Batch norm without a scale gets a constant ones weight
(a buffer): torch 2.13's second-order gradient through ``F.batch_norm(weight=None)`` fails.

``save_outputs(fixture, outputs, path)`` takes {output name: tensor in torch's layout},
converts each back to the case's layout and writes THEIRS.npz atomically; it refuses unknown
names, dtypes other than float64, wrong shapes (saying the expected one) and NaN or inf.
"""

try:
    import torch
    from torch import nn
    from torch.nn import functional as F
except ImportError:
    raise ImportError("refmeta.cases.torch needs PyTorch, which is not installed: "
                      "pip install 'refmeta[torch]'") from None

from refmeta.cases import layouts, porting
from refmeta.cases.torch_modules import (Augmented, BatchNorm, CausalAttention, CausalConv1d,
                                         GatedConcat, LSTMGates, PaddedConv2d, SpatialMean)

__all__ = ["Fixture", "load", "save_outputs", "to_case_layout"]


def load(case_json):
    """The Fixture of the case at ``case_json`` (its NPZ beside it); see the module docstring.

    Raises ValueError for a default dtype other than float64, a case that cannot be read, or a
    layer the fixture does not know (naming it).
    """
    if torch.get_default_dtype() != torch.float64:
        raise ValueError(f"torch's default dtype is {torch.get_default_dtype()}; the fixtures are "
                         "float64 and the cases need it (tolerances near 1e-10): call "
                         "torch.set_default_dtype(torch.float64) first")
    return Fixture(porting.read(case_json, "torch"))


def save_outputs(fixture, outputs, path):
    """Write {output name: tensor in torch's layout} as THEIRS.npz for ``refmeta verify``;
    returns the path.  ValueError/TypeError for an unknown name, a dtype other than float64, a
    wrong shape or NaN."""
    return layouts.write_npz(fixture.port, to_case_layout(fixture, outputs), path)


def to_case_layout(fixture, outputs):
    """{output name: NumPy array in the case's layout}, checked as ``save_outputs`` does (for
    ``refmeta.cases.verify.assert_matches``)."""
    return layouts.case_layout(fixture.port, outputs, "torch", _numpy)


def _numpy(value):
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


class Fixture:
    """A case in torch: see the module docstring."""

    def __init__(self, port):
        self.port, self.case = port, port.document
        self.conventions, self.hyperparameters = port.document["conventions"], port.document["hyperparameters"]
        self.inputs = {name: torch.from_numpy(a.copy()) for name, a in port.inputs.items()}
        self.params = {name: torch.from_numpy(layouts.to_framework(port.layouts[name], a, "torch").copy())
                       for name, a in port.params.items()}
        self.networks = {name: CaseNetwork(network, self.params, port.statistics)
                         for name, network in port.networks.items()}
        self.model = next(iter(self.networks.values()))

    def network(self, name=None):
        """The module of network ``name`` (default the first)."""
        if name is not None and name not in self.networks:
            raise ValueError(f"unknown network {name!r}; case {self.case['id']} has "
                             f"{', '.join(self.networks)}")
        return self.networks[name] if name else self.model

    def forward(self, params, x, *state, network=None, **options):
        """The network (default the first) as a function of {parameter name: tensor}."""
        module = self.network(network)
        missing = [name for name in module.parameter_names.values() if name not in params]
        if missing:
            raise ValueError(f"forward: params lack {missing}")
        values = {torch_name: params[name] for torch_name, name in module.parameter_names.items()}
        return torch.func.functional_call(module, values, (x, *state), options, strict=False)

    def named(self, prefix, tensors, network=None):
        """{prefix/<parameter name>: tensor} ({<parameter name>: tensor} for prefix None) for
        ``tensors`` in the order of the network's ``parameters()``."""
        tensors, names = list(tensors), list(self.network(network).parameter_names.values())
        if len(tensors) != len(names):
            raise ValueError(f"named: expected {len(names)} tensors, one per parameter of the "
                             f"network ({', '.join(names)}); got {len(tensors)}")
        return {name if prefix is None else f"{prefix}/{name}": t for name, t in zip(names, tensors)}

    def loss(self, prediction, target, reduction=None):
        """The case's loss of ``prediction`` against ``target``, reduced over the examples."""
        reduction = reduction or self.port.reduction
        if reduction not in porting.REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(porting.REDUCTIONS)} (the case's "
                             f"conventions name them); got {reduction!r}")
        if self.port.loss == "mse":
            per_example = ((prediction - target) ** 2).mean(dim=-1)
        else:                                              # logits or log-probabilities (..., N)
            log_p = F.log_softmax(prediction, -1) if self.port.loss == "cross_entropy" else prediction
            per_example = -log_p.gather(-1, target.long()[..., None])[..., 0]
        if reduction == "sum":
            return per_example.sum()
        scale = prediction.shape[-1] if reduction == "n_way_times_mean" else 1
        return scale * per_example.mean()


# ----- the network -----
class CaseNetwork(nn.Module):
    """One network of a case; ``parameter_names`` maps its torch parameter names to the case's,
    in the order of ``parameters()``.  A case parameter that several entries read is one
    nn.Parameter, tied."""

    def __init__(self, network, params, statistics):
        super().__init__()
        self.network, self.kind, self.entries = network, network.kind, network.layers
        built = [_layer(entry, params, statistics) for entry in network.layers]
        self.layers = nn.ModuleList([module for module, _ in built])
        held = {}                                          # case name -> its one nn.Parameter
        for owner, attribute, name in (slot for _, slots in built for slot in slots):
            if name in held:                               # read again: tie it to the first
                setattr(owner, attribute, held[name])
            else:
                held[name] = getattr(owner, attribute)
        case_of = {id(p): name for name, p in held.items()}
        self.parameter_names = {torch_name: case_of[id(p)] for torch_name, p in self.named_parameters()}

    def forward(self, x, state=None, fast_weights=None, intermediates=False, use=None):
        run = self.network.run(use)
        fast_weights = fast_weights or {}
        unknown = set(fast_weights) - {self.entries[i].get("weight") for i in run
                                       if self.entries[i].get("augmented")}
        if unknown:
            raise ValueError(f"fast_weights for {sorted(unknown)}: no augmented layer of network "
                             f"{self.network.name!r}" + (f" in its use {use!r}" if use else "")
                             + " reads them")
        if self.kind == "cell":
            return self.layers[0](x, state)
        outputs = []
        if self.kind == "recurrent":                       # x (T, ..., in), from zero state
            cell, run = self.layers[run[0]], run[1:]
            h = c = x.new_zeros(x.shape[1:-1] + (cell.weight_hh.shape[0] // 4,))
            for step in x:
                h, c = cell(step, (h, c))
            x = h
            outputs.append(h)
        for i in run:
            layer, fast = self.layers[i], fast_weights.get(self.entries[i].get("weight"))
            x = layer(x, fast) if isinstance(layer, Augmented) else layer(x)
            outputs.append(x)
        return (x, outputs) if intermediates else x


def _layer(entry, params, statistics):
    """(module, [(module holding a parameter, its attribute, the case's name)]) of one layer
    entry, its parameters loaded in torch's layout."""
    kind = entry["type"]
    if kind in ("gated_concat", "causal_attention"):
        built = [_layer(branch, params, statistics) for branch in entry["branches"]]
        modules = [module for module, _ in built]
        module = (GatedConcat(*modules) if kind == "gated_concat"
                  else CausalAttention(*modules, entry["key_size"]))
        return module, [slot for _, slots in built for slot in slots]
    value = lambda key: params.get(entry.get(key))
    if kind == "dense":
        module = nn.Linear(value("weight").shape[1], value("weight").shape[0],
                           bias=value("bias") is not None)
    elif kind == "conv2d":
        pad = entry.get("padding", 0)
        pad = pad if isinstance(pad, dict) else dict(top=pad, bottom=pad, left=pad, right=pad)
        out_channels, in_channels, *kernel = value("weight").shape
        module = PaddedConv2d(in_channels, out_channels, kernel, stride=entry["stride"],
                              bias=value("bias") is not None,
                              pad=(pad["left"], pad["right"], pad["top"], pad["bottom"]))
    elif kind == "causal_conv1d":
        out_channels, in_channels, width = value("weight").shape
        module = CausalConv1d(in_channels, out_channels, width, dilation=entry["dilation"],
                              bias=value("bias") is not None)
    elif kind == "batch_norm":
        names = entry.get("running_stats") if entry["mode"] == "running" else None
        module = BatchNorm(value("scale"), value("offset"), entry["eps"], entry.get("num_features"),
                           names and [torch.from_numpy(statistics[n].copy()) for n in names])
        return module, [(module, attribute, entry[key]) for attribute, key in
                        (("weight", "scale"), ("bias", "offset")) if entry.get(key)]
    elif kind == "lstm_gates":
        module = LSTMGates(value("weight"), value("recurrent_weight"), value("bias"))
        return module, [(module, attribute, entry[key]) for attribute, key in
                        (("weight_ih", "weight"), ("weight_hh", "recurrent_weight"),
                         ("bias_ih", "bias")) if entry.get(key)]
    elif kind == "max_pool":
        return nn.MaxPool2d(entry["kernel_size"], entry["stride"], entry.get("padding", 0),
                            ceil_mode=bool(entry.get("ceil_mode"))), []
    elif kind == "flatten":
        return nn.Flatten(start_dim=-3), []
    else:
        return {"relu": nn.ReLU, "tanh": nn.Tanh, "mean": SpatialMean}[kind](), []
    slots = [(module, "weight", entry["weight"])] + ([(module, "bias", entry["bias"])]
                                                     if value("bias") is not None else [])
    with torch.no_grad():
        for owner, attribute, name in slots:
            getattr(owner, attribute).copy_(params[name])
    if entry.get("activation") or entry.get("augmented"):
        module = Augmented(module, entry.get("activation"))
    return module, slots
