"""refmeta.cases.torch and refmeta.cases.jax: every case loads into both fixtures, each network
of it equals refmeta's own forward, every case's outputs come back through each framework's
layout to a THEIRS.npz that ``refmeta verify`` passes, and bad input gets a clear error.

The forward checks compare two different paths (torch's or JAX's layers against refmeta's
autograd.numpy ones) at rtol 1e-12, atol 1e-12 × the largest |reference| of the array (measured:
at most 6e-15 relative).  A wrong gate order, the one layout that a shape cannot catch, fails.
"""

import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from helpers import import_or_skip, write_case
from refmeta import cases
from refmeta.cases import layouts, verify
from refmeta.cases.files import load_case
from refmeta.cases.parts import Array
from refmeta.nn import layers, metanet_parts, models

RTOL = 1e-12


def ran(fx, network, options):
    """(network, use) of a run: the network's first use when none is given."""
    name = network or next(iter(fx.networks))
    return name, options.get("use") or next(iter(fx.port.networks[name].uses))


class TorchSide:
    name, ran = "torch", set()

    def __init__(self):
        self.torch = import_or_skip("torch", "pip install 'refmeta[torch]'")
        self.torch.set_default_dtype(self.torch.float64)
        from refmeta.cases import torch as fixtures
        self.fixtures = fixtures

    def data(self, array):
        return self.torch.from_numpy(np.array(array))

    def numpy(self, value):
        return value.detach().numpy()

    def cat(self, a, b):
        return self.torch.cat([a, b])

    def run(self, fx, x, network=None, *state, **options):
        self.ran.add(ran(fx, network, options))
        return fx.forward(fx.params, x, *state, network=network, **options)


class JaxSide:
    name, ran = "jax", set()

    def __init__(self):
        self.jax = import_or_skip("jax", "pip install 'refmeta[jax]'")
        self.jax.config.update("jax_enable_x64", True)
        from refmeta.cases import jax as fixtures
        self.fixtures = fixtures

    def data(self, array):
        return self.jax.numpy.asarray(array)

    def numpy(self, value):
        return np.asarray(value)

    def cat(self, a, b):
        return self.jax.numpy.concatenate([a, b])

    def run(self, fx, x, network=None, *state, **options):
        self.ran.add(ran(fx, network, options))
        return fx.apply(fx.params, x, *state, network=network, **options)


@pytest.fixture(scope="module", params=[TorchSide, JaxSide], ids=["torch", "jax"])
def side(request):
    return request.param()


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cases")
    cases.export(str(folder))
    return folder


def framework_layout(side, fx, name, value):
    """A parameter-shaped case array (name: its parameter) in the framework's layout."""
    return side.data(layouts.to_framework(fx.port.layouts[name], value, side.name))


# ----- refmeta's own forward, per family -----
def optimization_pairs(side, fx, arrays, params):
    model = fx.case["model"]
    reference = ((lambda x: models.mlp_apply(params, x, model["activation"])) if model["model"] == "mlp"
                 else lambda x: models.conv4_apply(params, x, model["variant"], bn_eps=model["bn_eps"]))
    pairs = [(f"{name}[{t}]", side.run(fx, fx.inputs[name][t]), reference(arrays["inputs/" + name][t]))
             for name in ("support_x", "query_x") if name in fx.inputs
             for t in range(fx.inputs[name].shape[0])]
    if side.name == "jax":                                 # every task at once: statistics per task
        pairs.append(("support_x, all tasks", side.run(fx, fx.inputs["support_x"]),
                      reference(arrays["inputs/support_x"])))
    return pairs


def episode_pairs(side, fx, arrays, params):
    """The embedding of all images in one call; SNAIL's sequence model; Matching's FCE cells."""
    out = lambda name: arrays["outputs/" + name]
    embedded = side.run(fx, side.cat(fx.inputs["support_x"], fx.inputs["query_x"]))
    pairs = [("embeddings", embedded, np.concatenate([out("embeddings/support"),
                                                      out("embeddings/query")]))]
    if "sequence" in fx.networks:
        pairs.append(("sequence", side.run(fx, side.data(out("sequences")), "sequence"), out("logits")))
    rng = np.random.default_rng(0)
    for name, network in fx.port.networks.items():
        if network.kind == "cell":                         # Matching's LSTMs: gates i, f, g, o
            entry, x = network.layers[0], out("embeddings/support")
            r = rng.standard_normal(x.shape[:1] + (entry["recurrent_size"],))
            c = rng.standard_normal(x.shape[:1] + (entry["hidden_size"],))
            h_ours, c_ours = side.run(fx, side.data(x), name, (side.data(r), side.data(c)))
            h_ref, c_ref = layers.lstm_cell(x, r, c, *(params[entry[k]] for k in
                                                       ("weight", "recurrent_weight", "bias")))
            pairs += [(f"{name} h", h_ours, h_ref), (f"{name} c", c_ours, c_ref)]
    return pairs


def metanet_pairs(side, fx, arrays, params):
    """b's two uses: its slow head, and its classifier with the fast weights each query reads;
    u's two uses: its representation with the task's fast weights, and its slow head (u's fc1
    read again, with φ, then u's output layer); m and d on the preprocessed gradients."""
    out = lambda name: arrays["outputs/" + name]
    names = lambda group: [n.split("/", 2)[-1] for n in fx.case["outputs"] if n.startswith(group + "/")]
    net = lambda prefix: {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
    query_x = arrays["inputs/query_x"]
    pairs = [("b slow head", side.run(fx, fx.inputs["query_x"], "b", use="slow head"),
              metanet_parts.slow_logits(net("base."), query_x))]
    for q in range(query_x.shape[0]):
        fast = {f"base.{n}": framework_layout(side, fx, f"base.{n}", out(f"read/{n}")[q]) for n in names("read")}
        pairs.append((f"b classifier, query {q}", side.run(fx, fx.inputs["query_x"][q:q + 1], "b",
                                                           use="classifier", fast_weights=fast),
                      out("logits")[q:q + 1]))
    fast = {f"rep.{n}": framework_layout(side, fx, f"rep.{n}", out(f"task_fast_weights/{n}"))
            for n in names("task_fast_weights")}
    for data, output in (("support_x", "support_representations"), ("query_x", "query_representations")):
        pairs.append((f"u representation of {data}", side.run(fx, fx.inputs[data], "u", use="representation",
                                                             fast_weights=fast), out(output)))
    pairs.append(("u slow head", side.run(fx, fx.inputs["support_x"], "u", use="slow head"),
                  metanet_parts.slow_logits(net("rep."), arrays["inputs/support_x"])))
    pre = lambda g: metanet_parts.preprocess(g, fx.conventions["preprocess_p"])
    for n in names("memory"):
        g = out(f"meta_info/example/{n}")
        ours = side.run(fx, side.data(pre(g).reshape(-1, 2)), f"m.{metanet_parts.layer_kind(n)}")
        pairs.append((f"m, memory/{n}", side.numpy(ours).reshape(g.shape), out(f"memory/{n}")))
    for n in names("task_fast_weights"):
        g = out(f"meta_info/task/{n}")
        ours = side.run(fx, side.data(pre(g).reshape(g.shape[0], -1, 2)), f"d.{metanet_parts.layer_kind(n)}")
        pairs.append((f"d, task_fast_weights/{n}", side.numpy(ours).reshape(g.shape[1:]),
                      out(f"task_fast_weights/{n}")))
    return pairs


PAIRS = {"MAML": optimization_pairs, "Reptile": optimization_pairs,
         "Prototypical Networks": episode_pairs, "Matching Networks": episode_pairs,
         "SNAIL": episode_pairs, "Meta Networks": metanet_pairs}


def forward_pairs(side, fx, path):
    document, arrays = load_case(str(path))
    params = {k[len("inputs/params/"):]: v for k, v in arrays.items() if k.startswith("inputs/params/")}
    return PAIRS[document["algorithm"]](side, fx, arrays, params)


def assert_same(side, pairs):
    for label, ours, reference in pairs:
        reference = np.asarray(reference)
        np.testing.assert_allclose(side.numpy(ours) if not isinstance(ours, np.ndarray) else ours,
                                   reference, rtol=RTOL, atol=RTOL * np.max(np.abs(reference)),
                                   err_msg=label)


# ----- every case -----
@pytest.mark.parametrize("case_id", list(cases.CASES))
def test_every_network_of_every_case_equals_refmeta(side, case_dir, case_id):
    fx = side.fixtures.load(case_dir / f"{case_id}.json")
    assert set(fx.params) == {n[len("params/"):] for n in fx.case["inputs"] if n.startswith("params/")}
    for name, value in fx.params.items():
        assert str(value.dtype) in ("float64", "torch.float64"), name
    side.ran = set()
    pairs = forward_pairs(side, fx, case_dir / f"{case_id}.json")
    # every network of the case was run, in every use its entries name
    assert side.ran == {(name, use) for name, network in fx.port.networks.items() for use in network.uses}
    assert_same(side, pairs)


@pytest.mark.parametrize("case_id", list(cases.CASES))
def test_save_outputs_round_trips_every_output_and_verify_passes(side, case_dir, case_id, tmp_path):
    path = case_dir / f"{case_id}.json"
    fx = side.fixtures.load(path)
    document, arrays = load_case(str(path))
    theirs = {}
    for name in document["outputs"]:
        reference, layout = arrays["outputs/" + name], layouts.layout_of(fx.port, name)
        theirs[name] = side.data(reference if layout is None
                                 else layouts.to_framework(layout, reference, side.name))
    saved = side.fixtures.save_outputs(fx, theirs, tmp_path / "theirs.npz")
    assert verify.main(str(path), str(saved), out=io.StringIO(), err=io.StringIO()) == 0
    with np.load(saved) as npz:
        assert set(npz.files) == set(document["outputs"])
        for name in npz.files:
            np.testing.assert_array_equal(npz[name], arrays["outputs/" + name])   # permutations: exact
    # the fixture's own parameters, saved as an update, come back as the case's parameters
    updates = {f"updated/{p}": value for p, value in fx.params.items()}
    for name, value in side.fixtures.to_case_layout(fx, updates).items():
        np.testing.assert_array_equal(value, arrays["inputs/params/" + name[len("updated/"):]])


def test_each_torch_module_holds_the_case_parameters_in_torchs_layout(case_dir):
    side = TorchSide()
    for case_id in cases.CASES:
        fx = side.fixtures.load(case_dir / f"{case_id}.json")
        _, arrays = load_case(str(case_dir / f"{case_id}.json"))
        for name, module in fx.networks.items():
            named = fx.named("updated", module.parameters(), network=name)
            for output, value in side.fixtures.to_case_layout(fx, named).items():
                np.testing.assert_array_equal(value, arrays["inputs/params/" + output[len("updated/"):]])
    fx = side.fixtures.load(case_dir / "maml-sinusoid-k1-second-order.json")
    linear = fx.model.layers[0]
    assert isinstance(linear, side.torch.nn.Linear) and tuple(linear.weight.shape) == (40, 1)


def test_a_parameter_two_entries_read_is_one_torch_parameter(case_dir):
    """Meta Networks' u reads params/rep.fc1.w twice (its representation, linear, and its slow
    head, with φ): one nn.Parameter, so a gradient step on u moves both uses."""
    side = TorchSide()
    fx = side.fixtures.load(case_dir / "metanet-3way1shot-first-order.json")
    u = fx.network("u")
    assert list(u.parameter_names.values()).count("rep.fc1.w") == 1
    fc1 = [module.layer for module, entry in zip(u.layers, u.entries) if entry.get("weight") == "rep.fc1.w"]
    assert len(fc1) == 2 and fc1[0].weight is fc1[1].weight
    x = fx.inputs["support_x"]
    before = u(x, use="slow head")
    with side.torch.no_grad():
        fc1[0].weight.mul_(2.0)                               # through the representation's entry
    assert not side.torch.allclose(u(x, use="slow head"), before)


def test_a_use_its_network_lacks_or_a_fast_weight_it_does_not_read_is_named(side, case_dir):
    fx = side.fixtures.load(case_dir / "metanet-3way1shot-first-order.json")
    x = fx.inputs["support_x"]
    with pytest.raises(ValueError, match="network 'u' has no use 'classifier'; its entries' used_by "
                                         "name 'representation', 'slow head'"):
        side.run(fx, x, "u", use="classifier")
    fast = {"rep.fc1.w": fx.params["rep.fc1.w"]}
    side.run(fx, x, "u", use="representation", fast_weights=fast)           # read there
    with pytest.raises(ValueError, match=r"fast_weights for \['rep.fc1.w'\]: no augmented layer of "
                                         r"network 'u' in its use 'slow head' reads them"):
        side.run(fx, x, "u", use="slow head", fast_weights=fast)
    with pytest.raises(ValueError, match="network 'm.conv' has no use 'slow head'; its entries' "
                                         "used_by name none"):
        side.run(fx, x, "m.conv", use="slow head")


@pytest.mark.parametrize("case_id", list(cases.CASES))
def test_the_loss_is_the_cases(side, case_dir, case_id):
    """The loss of refmeta's own predictions (or of the fixture's network at the parameters the
    case starts from) equals the case's loss output: N × mean CE, mean MSE, summed or mean NLL."""
    fx = side.fixtures.load(case_dir / f"{case_id}.json")
    _, arrays = load_case(str(case_dir / f"{case_id}.json"))
    out, c = (lambda name: arrays["outputs/" + name]), fx.conventions
    if "support_loss" in fx.case["outputs"]:              # MAML: each task's loss at θ
        data = [(fx.inputs["support_x"][t], fx.inputs["support_y"][t]) for t in range(len(out("support_loss")))]
        pairs = [(fx.loss(side.run(fx, x), y, c["inner_reduction"]), out("support_loss")[t, 0])
                 for t, (x, y) in enumerate(data)]
    elif "inner_loss" in fx.case["outputs"]:              # Reptile: task 0's first mini-batch at φ
        rows = fx.inputs["batch_indices"][0, 0]
        pairs = [(fx.loss(side.run(fx, fx.inputs["support_x"][0][rows]), fx.inputs["support_y"][0][rows],
                          c["inner_reduction"]), out("inner_loss")[0, 0])]
    else:                                                  # one episode: the case's own reduction
        prediction = out("log_probabilities") if "log_probabilities" in fx.case["outputs"] else out("logits")
        pairs = [(fx.loss(side.data(prediction), fx.inputs["query_y"]), out("loss"))]
    for ours, reference in pairs:
        np.testing.assert_allclose(side.numpy(ours), reference, rtol=RTOL)


# ----- other layer settings: batch norm's running mode, ceil pools, a wrong gate order -----
def write_variant(folder, case_id, change):
    """A case built as ``case_id`` and changed by ``change(case)``, written as <folder>/variant."""
    return write_case(folder, case_id, change, "variant")


def running_and_ceil(case):
    rng = np.random.default_rng(1)
    for i, entry in enumerate(e for e in case["model"]["layers"] if e["type"] == "batch_norm"):
        entry.update(mode="running", running_stats=[f"bn{i}.mean", f"bn{i}.var"])
        case["inputs"][f"bn_state/bn{i}.mean"] = Array(rng.normal(0, 0.3, 8), "running mean")
        case["inputs"][f"bn_state/bn{i}.var"] = Array(rng.uniform(0.5, 2.0, 8), "running variance")
    for entry in case["model"]["layers"]:
        if entry["type"] == "max_pool":
            entry["ceil_mode"] = True


def test_running_batch_norm_and_ceil_pools_equal_refmeta(side, tmp_path):
    path = write_variant(tmp_path, "protonet-conv4-3way2shot", running_and_ceil)
    fx = side.fixtures.load(path)
    document, arrays = load_case(str(path))
    params = {k[len("inputs/params/"):]: v for k, v in arrays.items() if k.startswith("inputs/params/")}
    x = np.concatenate([arrays["inputs/support_x"], arrays["inputs/query_x"]])
    for i in range(4):                                     # refmeta's layers, one by one
        x = layers.conv2d(x, params[f"conv{i}.w"], params[f"conv{i}.b"])
        x = layers.batch_norm(x, params[f"bn{i}.offset"], params[f"bn{i}.scale"], "running",
                              arrays[f"inputs/bn_state/bn{i}.mean"], arrays[f"inputs/bn_state/bn{i}.var"],
                              eps=1e-5)
        x = layers.max_pool_2x2(layers.relu(x), rounding="ceil")
    ours = side.run(fx, side.cat(fx.inputs["support_x"], fx.inputs["query_x"]))
    assert x.shape == (18, 8, 2, 2)                        # ceil: 28 → 14 → 7 → 4 → 2 (floor: 1)
    assert_same(side, [("running + ceil", ours, x.reshape(18, -1))])


def test_a_wrong_gate_order_fails_the_forward_check(side, tmp_path):
    """Meta Networks' d with its (a, i, f, o) gates read as PyTorch's (i, f, g, o)."""
    def wrong(case):
        for entry in case["model"]["layers"]:
            if entry["type"] == "lstm_gates":
                entry["gate_order"] = ["i", "f", "g", "o"]
    path = write_variant(tmp_path, "metanet-3way1shot-first-order", wrong)
    fx = side.fixtures.load(path)
    failing = [label for label, ours, ref in forward_pairs(side, fx, path)
               if not np.allclose(side.numpy(ours) if not isinstance(ours, np.ndarray) else ours,
                                  ref, rtol=RTOL, atol=RTOL * np.max(np.abs(ref)))]
    assert failing and all(label.startswith("d, ") for label in failing), failing


# ----- bad input -----
def test_an_unknown_layer_type_is_named(side, case_dir, tmp_path):
    document = json.loads((case_dir / "protonet-conv4-3way2shot.json").read_text())
    document["model"]["layers"][2]["type"] = "dropout"
    (tmp_path / "odd.json").write_text(json.dumps(document))
    shutil.copy(case_dir / "protonet-conv4-3way2shot.npz", tmp_path / "odd.npz")
    with pytest.raises(ValueError, match=r"model.layers\[2\] has layer type 'dropout'"):
        side.fixtures.load(tmp_path / "odd.json")
    document["model"]["layers"][2]["type"] = "relu"
    del document["model"]["layers"][0]["stride"]
    (tmp_path / "odd.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"model.layers\[0\] \(conv2d\) lacks stride"):
        side.fixtures.load(tmp_path / "odd.json")


def test_float32_arithmetic_is_refused_at_load(side, case_dir):
    path = case_dir / "maml-sinusoid-k1-first-order.json"
    if side.name == "torch":
        side.torch.set_default_dtype(side.torch.float32)
        restore = lambda: side.torch.set_default_dtype(side.torch.float64)
    else:
        side.jax.config.update("jax_enable_x64", False)
        restore = lambda: side.jax.config.update("jax_enable_x64", True)
    try:
        with pytest.raises(ValueError, match="the fixtures are float64 and the cases need it"):
            side.fixtures.load(path)
    finally:
        restore()


WRONG_SHAPES = {"torch": ("maml-sinusoid-k1-first-order", "updated/dense0.w",
                          r"shape \(1, 40\); expected \(40, 1\) in torch's layout \(the case's \(1, 40\)\)"),
                "jax": ("maml-conv4-bn-5way1shot-first-order", "updated/conv0.w",
                        r"shape \(8, 1, 3, 3\); expected \(3, 3, 1, 8\) in jax's layout")}


def test_bad_outputs_are_refused_with_what_was_expected(side, case_dir, tmp_path):
    case_id, name, message = WRONG_SHAPES[side.name]
    fx = side.fixtures.load(case_dir / f"{case_id}.json")
    _, arrays = load_case(str(case_dir / f"{case_id}.json"))
    case_layout = side.data(arrays["outputs/" + name])
    with pytest.raises(ValueError, match=message):                 # saved without converting
        side.fixtures.save_outputs(fx, {name: case_layout}, tmp_path / "theirs.npz")
    with pytest.raises(ValueError, match=r"unknown output 'updated/dense0\.W'.*did you mean 'updated/dense0\.w'"
                       if side.name == "torch" else "unknown output 'meta_gradients/conv0.w'"):
        side.fixtures.save_outputs(fx, {"updated/dense0.W" if side.name == "torch"
                                        else "meta_gradients/conv0.w": case_layout}, tmp_path / "t.npz")
    with pytest.raises(ValueError, match="'meta_loss' holds 1 NaN or inf"):
        side.fixtures.save_outputs(fx, {"meta_loss": side.data(np.array(np.nan))}, tmp_path / "t.npz")
    with pytest.raises(TypeError, match="'meta_loss' is float32; the cases are float64"):
        side.fixtures.save_outputs(fx, {"meta_loss": side.data(np.float32(1.0))}, tmp_path / "t.npz")
    npz = case_dir / f"{case_id}.npz"
    before = npz.read_bytes()
    with pytest.raises(ValueError, match="is the case's NPZ, which this command reads; writing there would destroy it"):
        side.fixtures.save_outputs(fx, {"meta_loss": side.data(np.array(1.0))}, npz)
    assert npz.read_bytes() == before and not (tmp_path / "theirs.npz").exists()


@pytest.mark.parametrize("module, extra", [("torch", "refmeta[torch]"), ("jax", "refmeta[jax]")])
def test_a_missing_framework_is_one_line_naming_the_extra(monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)            # as if not installed
    monkeypatch.delitem(sys.modules, f"refmeta.cases.{module}", raising=False)
    with pytest.raises(ImportError) as caught:
        __import__(f"refmeta.cases.{module}")
    message = str(caught.value)
    assert "\n" not in message and f"pip install '{extra}'" in message


def test_importing_refmeta_cases_imports_neither_framework():
    code = ("import sys, refmeta.cases, refmeta.cases.verify, refmeta.cases.porting, refmeta.cli; "
            "print(sorted(m for m in ('torch', 'jax') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
