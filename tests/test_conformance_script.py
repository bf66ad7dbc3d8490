"""benchmarks/conformance.py runs: with the cases' conventions every library it imports passes
each case with a wide margin, and each library default or porting mistake it makes gets a
likely cause from verify (docs/conformance.md, "What verify says about each").  jax-meta's runs
need an environment of their own and are not run here."""

import importlib.util
import json
import os

import pytest

from helpers import import_or_skip

import_or_skip("torch", "pip install torch==2.13.0 higher==0.2.1")

PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "conformance.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("conformance", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("conformance") / "results.json"
    assert module.main(["--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_every_library_passes_every_case_with_the_cases_conventions(results):
    assert "torch.func" in results["table"]
    for library, cells in results["table"].items():
        for case_id, (worst, signal) in cells.items():
            assert worst < 1e-3 and signal <= worst, (library, case_id, worst)


def test_every_default_and_mistake_fails_with_a_cause(results):
    runs = results["scenarios"]
    assert len(runs) >= 7
    for run in runs:
        assert run["status"] == 1, run
        assert any(line.startswith("likely cause") for line in run["causes"]), run
    batched = [run for run in runs if run["what"].startswith("batched")]
    assert all("a batched run on a serial case" in " ".join(run["causes"])
               and "only the first task is right" not in " ".join(run["causes"]) for run in batched)
