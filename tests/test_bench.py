"""benchmarks/bench.py runs (one repeat per variant), and every installed peer computes the same
meta-gradients as refmeta to 1e-10 of their scale (bench.check_same asserts it)."""

import importlib.util
import os

import pytest

PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "bench.py")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.PAUSE_S = 0.0
    return module


@pytest.mark.parametrize("part", ["sinusoid_part", "conv4_part"])
def test_each_timed_part_runs_and_peers_agree(bench, part, capsys):
    results = {}
    getattr(bench, part)(1, results)
    (rows,) = [value["rows"] for value in results.values()]
    assert rows[0][0].startswith("refmeta") and all(row[1] > 0 for row in rows)
    assert "median ms" in capsys.readouterr().out


def test_the_snail_part_runs_and_peers_agree(bench, capsys):
    results = {}
    bench.snail_part(1, results)
    assert set(results["snail"]) == {"step", "stack"}
    for case in results["snail"].values():
        assert case["rows"][0][0] == "refmeta" and all(row[1] > 0 for row in case["rows"])
    assert "SNAIL training step" in capsys.readouterr().out


def test_check_same_rejects_a_different_gradient(bench):
    import numpy as np
    reference = {"w": np.ones(3)}
    bench.check_same(reference, {"w": np.ones(3) + 1e-12}, ["w"], "close")
    with pytest.raises(AssertionError):
        bench.check_same(reference, {"w": np.ones(3) + 1e-6}, ["w"], "far")
