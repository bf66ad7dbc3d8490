"""The worked example: a torch.func implementation of MAML and Reptile, on the networks of
refmeta.cases.torch, reproduces every MAML and Reptile case within its tolerances, and a wrong
convention fails."""

import argparse
import io
import json
import shutil

import numpy as np
import pytest

from helpers import import_or_skip

torch = import_or_skip("torch", "pip install 'refmeta[torch]' (CI installs torch==2.13.0)")

from refmeta import cases  # noqa: E402
from refmeta.cases import verify  # noqa: E402
from refmeta.cases import torch as fixtures  # noqa: E402
from refmeta.demos import check_with_torch as demo  # noqa: E402

CHECKED = [c for c in cases.CASES if c.startswith(("maml-", "reptile-"))]


def parse(argv):
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("check-with-torch")
    return out, demo.run(parse(["--out", str(out)]))


@pytest.mark.equation("maml", "(1)", "(2)", "(3)")
@pytest.mark.equation("reptile", "(1)", "(2)")
def test_every_maml_and_reptile_case_passes_with_a_wide_margin(full_run):
    out, report = full_run
    assert report["all_pass"] and set(report["cases"]) == set(CHECKED)
    saved = json.loads((out / "results.json").read_text())
    assert saved["cases"].keys() == report["cases"].keys()
    for case_id, result in report["cases"].items():
        assert result["exit_status"] == 0, case_id
        # measured: at most 2e-5 of the allowed error; a 1e-3 ceiling keeps the tolerances honest
        assert result["max_err_over_allowed"] < 1e-3, (case_id, result["max_err_over_allowed"])
        assert set(result["err_over_allowed"]) == set(json.loads(
            (out / "cases" / f"{case_id}.json").read_text())["outputs"])


@pytest.mark.parametrize("case_id, change, failing", [
    ("maml-sinusoid-k3-second-order", lambda d: d["conventions"].update(first_order=True), "meta_gradient/"),
    ("maml-conv4-bn-5way1shot-second-order",
     lambda d: [layer.update(eps=1e-5) for layer in d["model"]["layers"] if layer["type"] == "batch_norm"],
     "support_loss"),
    ("maml-conv4-bn-5way1shot-first-order", lambda d: d["conventions"].update(inner_reduction="mean"),
     "adapted_step1/"),
    ("reptile-sinusoid-serial", lambda d: d["conventions"].update(adam_b1=0.9), "adapted_step2/"),
    ("reptile-sinusoid-batched", lambda d: d["conventions"].update(task_reduction="sum"), "updated/"),
])
def test_a_wrong_convention_in_the_torch_run_is_caught(full_run, tmp_path, case_id, change, failing):
    """The tolerances are tight enough to see each of these common porting mistakes (made by
    running on a copy of the case whose JSON says the wrong thing)."""
    out, _ = full_run
    path = out / "cases" / f"{case_id}.json"
    wrong = json.loads(path.read_text())
    change(wrong)
    (tmp_path / path.name).write_text(json.dumps(wrong))
    shutil.copy(path.with_suffix(".npz"), tmp_path / f"{case_id}.npz")
    fixture = fixtures.load(tmp_path / path.name)
    theirs = fixtures.to_case_layout(fixture, demo.ALGORITHMS[wrong["algorithm"]](torch, fixture))
    rows, problems = verify.verify(*verify.load_case(str(path)), theirs)
    assert not problems
    failed = [row[0] for row in rows if not row[6]]
    assert any(name.startswith(failing) for name in failed), failed


def test_fast_run_checks_only_the_one_step_sinusoid_cases(tmp_path, capsys):
    report = demo.run(parse(["--fast", "--out", str(tmp_path)]))
    assert report["all_pass"] and sorted(report["cases"]) == sorted(demo.FAST_CASES)
    assert "all 21 outputs pass" in capsys.readouterr().out


def test_it_reads_cases_from_a_given_directory(tmp_path):
    cases.export(str(tmp_path / "cases"), ["reptile-sinusoid-serial"])
    report = demo.run(parse(["--cases", str(tmp_path / "cases"), "--out", str(tmp_path / "out")]))
    assert list(report["cases"]) == ["reptile-sinusoid-serial"] and report["all_pass"]
    theirs = np.load(tmp_path / "out" / "reptile-sinusoid-serial.theirs.npz")
    status = verify.main(str(tmp_path / "cases" / "reptile-sinusoid-serial.json"),
                         str(tmp_path / "out" / "reptile-sinusoid-serial.theirs.npz"),
                         out=io.StringIO(), err=io.StringIO())
    assert status == 0 and "updated/dense0.w" in theirs.files
