"""Reference cases: reproducible bytes, complete JSON, self-consistent numbers, atomic export."""

import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from refmeta import cases
from refmeta.cases import verify

ALL = list(cases.CASES)
SHIPPED = ["maml-sinusoid-k1-second-order", "maml-sinusoid-k1-first-order",
           "maml-sinusoid-k3-second-order", "maml-sinusoid-k3-first-order",
           "maml-conv4-bn-5way1shot-second-order", "maml-conv4-bn-5way1shot-first-order",
           "reptile-sinusoid-serial", "reptile-sinusoid-batched"]


@pytest.fixture(scope="module")
def encoded():
    """{case id: (document, {npz key: array}, npz bytes)} for every registered case."""
    out = {}
    for case_id in ALL:
        text, npz = cases.encode(case_id, cases.build(case_id))
        with np.load(io.BytesIO(npz)) as f:
            out[case_id] = json.loads(text), {k: f[k] for k in f.files}, npz
    return out


def test_every_shipped_case_is_registered_with_a_lowercase_id():
    assert set(SHIPPED) <= set(ALL)
    for case_id in ALL:
        assert callable(cases.CASES[case_id])
        assert case_id.replace("-", "").isalnum() and case_id == case_id.lower()


def test_the_docs_describe_every_case_and_the_readme_counts_them():
    root = Path(__file__).parents[1]
    documented = re.findall(r"^\| `([a-z0-9-]+)` \|", (root / "docs" / "reference-cases.md").read_text(), re.M)
    assert set(ALL) <= set(documented)
    assert f"writes {len(ALL)} reference cases" in (root / "README.md").read_text()
    counted = [(doc, int(n)) for doc in ("README.md", "docs/verify.md", "docs/conformance.md")
               for n in re.findall(r"\b(\d+) (?:reference )?cases\b", (root / doc).read_text())]
    assert counted and all(n == len(ALL) for _, n in counted), counted     # no stale count


@pytest.mark.parametrize("case_id", ALL)
def test_a_case_is_bit_for_bit_reproducible_from_its_seed(case_id, encoded):
    text, npz = cases.encode(case_id, cases.build(case_id))
    document, _, first_npz = encoded[case_id]
    assert npz == first_npz and text == json.dumps(document, indent=1, ensure_ascii=False) + "\n"
    assert document["npz_sha256"] == hashlib.sha256(npz).hexdigest()


def test_exporting_twice_writes_identical_files(tmp_path):
    ids = ["maml-sinusoid-k1-second-order", "reptile-sinusoid-serial"]
    for folder in ("a", "b"):
        cases.export(str(tmp_path / folder), ids)
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == sorted(f"{i}.{ext}" for i in ids for ext in ("json", "npz"))
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize("case_id", ALL)
def test_the_json_is_complete_and_matches_the_npz(case_id, encoded):
    document, arrays, _ = encoded[case_id]
    for key in ("format", "id", "algorithm", "description", "refmeta_version", "seed", "model",
                "loss", "conventions", "hyperparameters", "procedure", "inputs", "outputs"):
        assert key in document, key
    assert document["format"] == "refmeta.case/1" and document["id"] == case_id
    for key in cases.REQUIRED_CONVENTIONS:
        value = document["conventions"][key]
        assert value is not None and (not isinstance(value, str) or value.strip()), key
    assert set(arrays) == {f"{kind}/{n}" for kind in ("inputs", "outputs") for n in document[kind]}
    for kind in ("inputs", "outputs"):
        for name, entry in document[kind].items():
            array = arrays[f"{kind}/{name}"]
            assert array.dtype == np.float64 and list(array.shape) == entry["shape"], name
            assert np.isfinite(array).all() and entry["meaning"]
            if entry.get("integer_valued"):
                assert np.array_equal(array, np.round(array))
    for name, entry in document["outputs"].items():
        assert entry["rtol"] == 1e-10 and 0 < entry["atol"] <= 1e-5, (name, entry)
    params = {k for k in document["inputs"] if k.startswith("params/")}
    assert params and all(f"updated/{p[7:]}" in document["outputs"] for p in params)


PARAM_KEYS = ("weight", "recurrent_weight", "bias", "offset", "scale")


def test_model_descriptions_name_every_parameter(encoded):
    for case_id, (document, _, _) in encoded.items():
        named = set()
        for layer in document["model"]["layers"]:
            named |= {layer.get(k) for k in PARAM_KEYS} - {None}
        assert named == {k[7:] for k in document["inputs"] if k.startswith("params/")}, case_id


def _case(encoded, case_id):
    document, arrays, _ = encoded[case_id]
    take = lambda prefix: {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    return document, take("inputs/"), take("outputs/")


@pytest.mark.parametrize("case_id", [c for c in SHIPPED if "sinusoid" in c])
def test_sinusoid_targets_follow_the_recorded_phase_convention(case_id, encoded):
    document, inputs, _ = _case(encoded, case_id)
    sign = document["conventions"]["sinusoid"]["phase_sign"]
    amplitude, phase = inputs["amplitude"][:, None, None], inputs["phase"][:, None, None]
    for kind in ("support", "query"):
        if f"{kind}_x" in inputs:
            expected = amplitude * np.sin(inputs[f"{kind}_x"] + sign * phase)
            np.testing.assert_allclose(inputs[f"{kind}_y"], expected, rtol=0, atol=1e-15)
    low, high = document["conventions"]["sinusoid"]["phase_range"]
    assert low <= inputs["phase"].min() and inputs["phase"].max() <= high


def _numpy_mlp_preactivations(params, x):
    """Hidden pre-activations of a 1-40-40-1 ReLU MLP, written out in numpy."""
    out, h = [], x
    for i in range(2):
        z = h @ params[f"dense{i}.w"] + params[f"dense{i}.b"][..., None, :]
        out.append(z)
        h = np.maximum(z, 0)
    return out


@pytest.mark.parametrize("case_id", [c for c in SHIPPED if c.startswith("maml-sinusoid")])
def test_no_relu_sits_near_its_kink(case_id, encoded):
    """Reassociation (~1e-15) elsewhere cannot flip a ReLU: every pre-activation is far from 0."""
    document, inputs, outputs = _case(encoded, case_id)
    steps = [{k[7:]: v[None] for k, v in inputs.items() if k.startswith("params/")}]
    for j in range(1, document["conventions"]["inner_steps"] + 1):
        steps.append({k[len(f"adapted_step{j}/"):]: v for k, v in outputs.items()
                      if k.startswith(f"adapted_step{j}/")})
    smallest = min(float(np.abs(z).min()) for params in steps
                   for x in (inputs["support_x"], inputs["query_x"])
                   for z in _numpy_mlp_preactivations(params, x))
    assert smallest > 1e-6


@pytest.mark.parametrize("case_id", [c for c in SHIPPED if c.startswith("maml")])
def test_maml_updated_is_one_adam_step_from_the_meta_gradient(case_id, encoded):
    document, inputs, outputs = _case(encoded, case_id)
    hp = document["hyperparameters"]
    for name in (k[7:] for k in inputs if k.startswith("params/")):
        g = outputs[f"meta_gradient/{name}"]
        m_hat = (1 - hp["adam_b1"]) * g / (1 - hp["adam_b1"])
        v_hat = (1 - hp["adam_b2"]) * g ** 2 / (1 - hp["adam_b2"])
        expected = inputs[f"params/{name}"] - hp["meta_lr"] * m_hat / (np.sqrt(v_hat) + hp["adam_eps"])
        np.testing.assert_allclose(outputs[f"updated/{name}"], expected, rtol=1e-14, atol=1e-17)


@pytest.mark.parametrize("setting", ["sinusoid-k1", "sinusoid-k3", "conv4-bn-5way1shot"])
def test_first_order_changes_only_the_meta_gradient(setting, encoded):
    _, _, second = _case(encoded, f"maml-{setting}-second-order")
    _, _, first = _case(encoded, f"maml-{setting}-first-order")
    for name in second:
        if name.startswith(("meta_gradient/", "updated/")):
            continue
        assert np.array_equal(second[name], first[name]), name
    gap = max(np.abs(second[n] - first[n]).max() for n in second if n.startswith("meta_gradient/"))
    assert gap > 1e-6      # the dropped Hessian terms are far above the 1e-10 tolerance


@pytest.mark.parametrize("mode", ["serial", "batched"])
def test_reptile_updated_follows_the_recorded_rule(mode, encoded):
    document, inputs, outputs = _case(encoded, f"reptile-sinusoid-{mode}")
    epsilon, k = document["hyperparameters"]["meta_step_size"], document["hyperparameters"]["inner_steps"]
    for name in (n[7:] for n in inputs if n.startswith("params/")):
        phi, last = inputs[f"params/{name}"], outputs[f"adapted_step{k}/{name}"]
        if mode == "batched":
            expected = phi + epsilon * np.mean(last - phi, axis=0)
        else:
            for t in range(last.shape[0]):
                np.testing.assert_allclose(outputs[f"task_start/{name}"][t], phi, rtol=0, atol=1e-15)
                phi = phi + epsilon * (last[t] - phi)
            expected = phi
        np.testing.assert_allclose(outputs[f"updated/{name}"], expected, rtol=0, atol=1e-15)
    batches = inputs["batch_indices"]
    assert batches.shape == (3, k, document["hyperparameters"]["batch_size"])
    for t in range(3):   # shuffled, cut, reshuffled: no repeat inside a pass over the data
        assert len(set(batches[t, 0])) == batches.shape[2]


# ----- every output carries signal at its tolerance, or is documented as zero -----
DOCS = Path(__file__).parents[1] / "docs" / "reference-cases.md"


def _perturbed(reference, relative):
    """The reference with its largest-magnitude element scaled by (1 + relative)."""
    theirs = reference.copy()
    index = np.unravel_index(np.argmax(np.abs(reference)), reference.shape)
    theirs[index] *= 1 + relative
    return theirs, index


@pytest.mark.parametrize("case_id", ALL)
def test_a_relative_error_of_1e_6_in_any_output_fails_verify(case_id, encoded):
    """verify's own rule at the JSON's rtol/atol: the reference passes, half its allowed error
    at the largest element passes, 1e-6 of that element fails, for every output that is not
    documented as structurally zero (and no other output is all zero)."""
    document, _, outputs = _case(encoded, case_id)
    checked = 0
    for name, entry in document["outputs"].items():
        if "structurally_zero" in entry:
            continue
        reference, rtol, atol = outputs[name], entry["rtol"], entry["atol"]
        assert np.abs(reference).max() > 0, f"{name} is all zero but not documented as structurally zero"
        assert verify.compare(reference, reference.copy(), rtol, atol)[2], name
        theirs, index = _perturbed(reference, 0.0)
        theirs[index] += 0.5 * (atol + rtol * abs(reference[index]))
        assert verify.compare(reference, theirs, rtol, atol)[2], name
        theirs, _ = _perturbed(reference, 1e-6)
        assert not verify.compare(reference, theirs, rtol, atol)[2], (
            f"{name}: a 1e-6 relative error of its largest element ({np.abs(reference).max():.3g}) "
            f"passes atol {atol:g}")
        checked += 1
    assert checked >= len(document["outputs"]) // 2


def test_structurally_zero_outputs_are_documented_and_zero_within_their_tolerance(encoded):
    """An implementation that returns exact zeros for them passes; the docs list each one."""
    text, found = DOCS.read_text(), 0
    for case_id, (document, arrays, _) in encoded.items():
        for name, entry in document["outputs"].items():
            if "structurally_zero" not in entry:
                continue
            found += 1
            assert len(entry["structurally_zero"]) > 40, (case_id, name)
            reference = arrays["outputs/" + name]
            assert verify.compare(reference, np.zeros_like(reference), entry["rtol"], entry["atol"])[2]
            assert f"`{name}`" in text, f"docs/reference-cases.md does not list {case_id}'s {name}"
    assert found == 4 * 6 + 3 + 2          # conv biases ahead of batch norm, SNAIL's key biases, MetaNet


def _documented(pattern, text):
    return f"`{pattern}`" in text or f"`{pattern}/" in text


@pytest.mark.parametrize("case_id", ALL)
def test_the_docs_name_every_output_and_input_and_the_procedure(case_id, encoded):
    document, _, _ = encoded[case_id]
    text = DOCS.read_text()
    assert f'`algorithm: "{document["algorithm"]}"`' in text, "no procedure section"
    for kind in ("inputs", "outputs"):
        for name in document[kind]:
            parts = name.split("/")
            parts = [re.sub(r"(block|step)\d+$", r"\1<j>", part) for part in parts]
            if len(parts) > 1 and "." in parts[-1]:
                parts[-1] = "<p>"
            assert _documented("/".join(parts), text), f"{case_id}: {kind} {name} ({'/'.join(parts)})"


def test_every_layer_type_is_documented_with_its_framework_layouts(encoded):
    text = DOCS.read_text()
    table = text[text.index("## The model description"):text.index("## Losses")]
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", table, re.M))
    for case_id, (document, arrays, _) in encoded.items():
        for layer in document["model"]["layers"]:
            assert layer["type"] in documented, (case_id, layer["type"])
            if any(layer.get(k) for k in PARAM_KEYS):
                assert layer["torch_layout"] and layer["haiku_layout"], (case_id, layer)
            if layer["type"] == "conv2d":
                assert set(layer["padding"]) == {"top", "bottom", "left", "right"} and "bias" in layer
            if layer["type"] == "lstm_gates":
                hidden = layer["hidden_size"]
                assert sorted(layer["gate_order"]) in (sorted("ifgo"), sorted("aifo")), layer
                shapes = {k: arrays[f"inputs/params/{layer[k]}"].shape
                          for k in ("weight", "recurrent_weight", "bias")}
                assert shapes == {"weight": (layer["input_size"], 4 * hidden),
                                  "recurrent_weight": (layer["recurrent_size"], 4 * hidden),
                                  "bias": (4 * hidden,)}, (case_id, layer["role"])
    orders = {case_id: {"".join(layer["gate_order"]) for layer in encoded[case_id][0]["model"]["layers"]
                        if layer["type"] == "lstm_gates"}
              for case_id in ("matching-conv4-3way2shot-fce", "metanet-3way1shot-first-order")}
    assert orders == {"matching-conv4-3way2shot-fce": {"ifgo"}, "metanet-3way1shot-first-order": {"aifo"}}


@pytest.mark.parametrize("case_id", ALL)
def test_query_counts_say_per_class_and_in_all(case_id, encoded):
    document, inputs, _ = _case(encoded, case_id)
    hp = document["hyperparameters"]
    if "n_way" in hp:                    # classification: per class and in all, never ambiguous
        assert "n_query" not in hp and "n_support" not in hp
        n_queries = inputs["query_y"].shape[-1]
        assert hp["n_query_total"] == hp["n_way"] * hp["n_query_per_class"] == n_queries
        assert f"{hp['n_query_per_class']} queries per class" in document["description"]
    nulls = [k for k, v in document["conventions"].items() if v is None]
    assert nulls == (["n_way"] if "sinusoid" in case_id else []), nulls    # null n_way: regression


@pytest.mark.parametrize("case_id", [c for c in ALL if c.startswith("metanet")])
def test_metanet_generators_map_a_zero_gradient_to_the_recorded_fast_weight(case_id, encoded):
    """The documented initialisation, checked in NumPy from the case's params alone: m and d map
    pre(0) to −0.05 (conv kernels) and +0.05 (dense matrices), never 0."""
    document, inputs, outputs = _case(encoded, case_id)
    p = {k[7:]: v for k, v in inputs.items() if k.startswith("params/")}
    sigmoid, relu = (lambda z: 1 / (1 + np.exp(-z))), (lambda z: np.maximum(z, 0))
    zero = np.array([[-1.0, 0.0]])                                    # pre(0) with p = 7
    expected = document["hyperparameters"]["zero_gradient_fast_weight"]
    assert expected == {"conv": -0.05, "dense": 0.05}
    for kind in ("conv", "dense"):
        m = relu(relu(zero @ p[f"m.{kind}.l0.w"] + p[f"m.{kind}.l0.b"]) @ p[f"m.{kind}.l1.w"]
                 + p[f"m.{kind}.l1.b"]) @ p[f"m.{kind}.l2.w"] + p[f"m.{kind}.l2.b"]
        s = c = np.zeros((1, 20))
        for _ in range(outputs["meta_info/task/fc1.w"].shape[0]):
            z = zero @ p[f"d.{kind}.wx"] + s @ p[f"d.{kind}.wh"] + p[f"d.{kind}.b"]
            a, i, f, o = np.split(z, 4, axis=-1)                      # gate order a, i, f, o
            c = np.tanh(a) * sigmoid(i) + sigmoid(f) * c
            s = sigmoid(o) * np.tanh(c)
        d = s @ p[f"d.{kind}.out.w"] + p[f"d.{kind}.out.b"]
        np.testing.assert_allclose([m.item(), d.item()], [expected[kind]] * 2, rtol=1e-14)
    assert np.abs(outputs["attention"]).min() < 0.9                   # not every cosine is ≈ 1


def test_the_metanet_chunk_case_differs_between_a_mean_and_a_sum_over_each_chunk(encoded):
    """meta_info/task is the gradient of u's slow-head loss averaged over each chunk of 2: the sum
    over the chunk is twice it, and d (an LSTM) does not map twice the input to the same weights."""
    from refmeta.nn import metanet_parts
    document, inputs, outputs = _case(encoded, "metanet-4way1shot-chunks2-first-order")
    assert document["hyperparameters"]["chunk_size"] == 2 and outputs["meta_info/task/fc1.w"].shape[0] == 2
    assert document["conventions"]["chunk_loss_reduction"].startswith("mean")
    p = {k[7:]: v for k, v in inputs.items() if k.startswith("params/")}
    for name in ("conv0.w", "fc1.w"):
        kind, gradients = metanet_parts.layer_kind("rep." + name), outputs[f"meta_info/task/{name}"]
        as_mean = metanet_parts.task_generator(p, kind, metanet_parts.preprocess(gradients, 7.0))
        as_sum = metanet_parts.task_generator(p, kind, metanet_parts.preprocess(2 * gradients, 7.0))
        np.testing.assert_allclose(as_mean, outputs[f"task_fast_weights/{name}"], rtol=1e-12, atol=1e-15)
        assert np.abs(as_sum - as_mean).max() > 1e-3


# ----- export: atomic, and bad directories -----
def _assert_whole_cases_only(directory):
    names = os.listdir(directory)
    assert not [n for n in names if n.startswith(".refmeta-export-")], names
    for name in names:
        if name.endswith(".json"):
            assert verify.main(os.path.join(directory, name), os.path.join(directory, name[:-5] + ".npz"),
                               out=io.StringIO(), err=io.StringIO()) == 0, name


def test_a_failure_while_building_leaves_the_directory_as_it_was(tmp_path, monkeypatch):
    cases.export(str(tmp_path), ["reptile-sinusoid-serial"])
    before = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
    real_build = cases.build

    def build(case_id):
        if case_id == "maml-sinusoid-k3-first-order":
            raise KeyboardInterrupt        # Ctrl-C in the middle of the export
        return real_build(case_id)
    monkeypatch.setattr(cases, "build", build)
    with pytest.raises(KeyboardInterrupt):
        cases.export(str(tmp_path))
    assert {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)} == before
    _assert_whole_cases_only(tmp_path)


def test_a_failure_while_moving_files_in_never_leaves_half_a_case(tmp_path, monkeypatch):
    real_replace, calls = os.replace, []

    def replace(source, target):
        calls.append(target)
        if len(calls) == 4:                # the second case's JSON
            raise KeyboardInterrupt
        real_replace(source, target)
    monkeypatch.setattr(cases.os, "replace", replace)
    ids = ["maml-sinusoid-k1-second-order", "maml-sinusoid-k1-first-order", "reptile-sinusoid-batched"]
    with pytest.raises(KeyboardInterrupt):
        cases.export(str(tmp_path), ids)
    names = sorted(os.listdir(tmp_path))
    assert "maml-sinusoid-k1-second-order.json" in names
    assert "maml-sinusoid-k1-first-order.json" not in names     # its NPZ alone is no case
    assert not any(n.startswith("reptile") for n in names)
    _assert_whole_cases_only(tmp_path)


def test_a_stale_json_is_removed_before_its_npz_is_replaced(tmp_path, monkeypatch):
    case_id = "maml-sinusoid-k1-second-order"
    cases.export(str(tmp_path), [case_id])
    document = json.loads((tmp_path / f"{case_id}.json").read_text())
    document["npz_sha256"] = "0" * 64                       # pretend: an older export
    (tmp_path / f"{case_id}.json").write_text(json.dumps(document))
    real_replace = os.replace

    def replace(source, target):
        if target.endswith(".json"):
            raise KeyboardInterrupt
        real_replace(source, target)
    monkeypatch.setattr(cases.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        cases.export(str(tmp_path), [case_id])
    assert sorted(os.listdir(tmp_path)) == [f"{case_id}.npz"]


def test_an_unwritable_directory_is_a_case_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(cases.CaseError, match="cannot write cases to .*a-file"):
        cases.export(str(blocker / "cases"))
    with pytest.raises(cases.CaseError, match="unknown case"):
        cases.export(str(tmp_path), ["no-such-case"])


def refmeta(*argv, cwd=None):
    return subprocess.run([sys.executable, "-m", "refmeta", *argv], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_cli_lists_and_exports_and_rejects_bad_directories(tmp_path):
    listed = refmeta("cases", "list")
    assert listed.returncode == 0, listed.stderr
    for case_id in ALL:
        assert case_id in listed.stdout
    exported = refmeta("cases", "export", str(tmp_path / "out"))
    assert exported.returncode == 0, exported.stderr
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        f"{c}.{ext}" for c in ALL for ext in ("json", "npz"))
    (tmp_path / "file").write_text("")
    bad = refmeta("cases", "export", str(tmp_path / "file" / "sub"))
    assert bad.returncode != 0 and "cannot write cases to" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_ctrl_c_during_cli_export_exits_130_with_a_message(tmp_path, monkeypatch, capsys):
    from refmeta import cli
    real_build = cases.build
    monkeypatch.setattr(cases, "build", lambda case_id: real_build(case_id) if case_id == ALL[0]
                        else (_ for _ in ()).throw(KeyboardInterrupt()))
    assert cli.main(["cases", "export", str(tmp_path)]) == 130
    assert "interrupted; every case in the directory is whole" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_a_repeated_case_id_is_named_and_nothing_is_written(tmp_path):
    case_id = "maml-sinusoid-k1-first-order"
    with pytest.raises(cases.CaseError, match=f"case\\(s\\) '{case_id}' given more than once"):
        cases.export(str(tmp_path), [case_id, "reptile-sinusoid-serial", case_id])
    assert os.listdir(tmp_path) == []
    result = refmeta("cases", "export", str(tmp_path), case_id, case_id)
    assert result.returncode == 1 and os.listdir(tmp_path) == []
    assert result.stderr.splitlines() == [f"refmeta cases export: case(s) '{case_id}' given more than "
                                          "once; name each case once"]


# Exports in a child process whose first file write, once done, pauses until the test has
# signalled it (the export holds SIGTERM while it writes: the signal waits): the test signals
# it while a case is half written in the staging folder.
PAUSING_EXPORT = """
import os, sys, time
from refmeta import cases, cli
real_write = cases._write

def write(path, data):
    real_write(path, data)
    if cases._write is write:
        cases._write = real_write
        open(sys.argv[2], "w").close()          # tell the test: a staging file exists now
        deadline = time.monotonic() + 60
        while not os.path.exists(sys.argv[2] + ".signalled") and time.monotonic() < deadline:
            time.sleep(0.01)

cases._write = write
sys.exit(cli.main(["cases", "export", sys.argv[1]]))
"""


def test_sigterm_during_cli_export_leaves_the_directory_as_it_was(tmp_path):
    import signal
    import time
    directory, marker = tmp_path / "cases", tmp_path / "written"
    cases.export(str(directory), ["reptile-sinusoid-serial"])
    before = {n: (directory / n).read_bytes() for n in os.listdir(directory)}
    child = subprocess.Popen([sys.executable, "-c", PAUSING_EXPORT, str(directory), str(marker)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), child.communicate(timeout=10)
        staging = [n for n in os.listdir(directory) if n.startswith(".refmeta-export-")]
        assert len(staging) == 1 and os.listdir(directory / staging[0])   # a partial export
        child.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        open(str(marker) + ".signalled", "w").close()
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 128 + signal.SIGTERM
    assert err.splitlines() == ["refmeta cases export: terminated; every case in the directory is whole"]
    assert {n: (directory / n).read_bytes() for n in os.listdir(directory)} == before
    _assert_whole_cases_only(directory)


def test_cli_export_restores_the_sigterm_handler(tmp_path):
    import signal
    before = signal.getsignal(signal.SIGTERM)
    from refmeta import cli
    assert cli.main(["cases", "export", str(tmp_path), "maml-sinusoid-k1-first-order"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before
