"""The MAML sinusoid demo at its --fast size, and the pieces it reports with."""

import argparse
import json
import math

import numpy as np
import pytest

from refmeta.demos import files, maml_sinusoid as demo

MODELS = ("maml", "maml_final", "pretrained", "pretrained_tuned_lr")


def parse(argv):
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    """(out_dir, returned report) of one ``--fast`` run, shared by the tests below."""
    out = tmp_path_factory.mktemp("maml-sinusoid")
    return out, demo.run(parse(["--fast", "--out", str(out)]))


def test_the_json_records_config_seeds_timing_and_every_number(fast_run):
    out, report = fast_run
    saved = json.loads((out / "results.json").read_text())
    for key in ("config", "seeds", "timing", "machine", "checkpoints", "results", "learning_curves",
                "paper", "table"):
        assert key in saved
    assert saved["config"]["maml"]["task_reduction"] == "mean"
    assert saved["config"]["maml"]["inner_lr"] == 0.01 and saved["config"]["maml"]["inner_steps"] == 1
    assert saved["config"]["iterations"] == demo.FAST["iterations"]
    assert saved["seeds"] == {**saved["seeds"], "seed": 0, "eval_seed": 2017}
    assert saved["timing"]["total_seconds"] > 0
    for model in MODELS:
        for k in ("K=5", "K=10"):
            for steps in ("0", "1", "5", "10"):
                summary = saved["results"][model][k][steps]
                assert summary["n_tasks"] == demo.FAST["test_tasks"]
                assert summary["n_diverged"] == 0
                assert all(math.isfinite(summary[s]) for s in ("mean", "ci95", "median"))


def test_the_table_marks_the_papers_rows(fast_run):
    _, report = fast_run
    assert "| paper | MAML | 5 |  | 0.67 | 0.38 | 0.35 |  |" in report["table"]
    assert "| paper | pretrained, tuned step | 5 |  | 2.41 | 2.23 | 2.19 |  |" in report["table"]
    assert "| ours | MAML (iteration" in report["table"]


def test_maml_adapts_after_the_fast_run(fast_run):
    # 600 meta-iterations, seeds 0-5: 10 steps take the K=5 MSE to 0.57-0.74 of its
    # pre-update value and the K=10 MSE to 0.35-0.44.  Without meta-training (--meta-lr 0)
    # the ratios are 1.23 and 1.06.
    results = fast_run[1]["results"]["maml"]
    assert results["K=5"]["10"]["mean"] < 0.85 * results["K=5"]["0"]["mean"]
    assert results["K=10"]["10"]["mean"] < 0.6 * results["K=10"]["0"]["mean"]


def test_the_output_folder_holds_only_the_results(fast_run):
    out, report = fast_run
    expected = {"results.json"} | {p.rsplit("/", 1)[-1] for p in report.get("figures", [])}
    assert {p.name for p in out.iterdir()} == expected  # no temporary files left behind


def test_summarise_excludes_and_counts_diverged_tasks():
    mse = np.array([1.0, 3.0, np.nan, np.inf, 2e3])
    summary = demo.summarise(mse)
    assert summary == {"n_tasks": 5, "n_diverged": 3, "mean": 2.0,
                       "ci95": pytest.approx(1.96 * math.sqrt(2) / math.sqrt(2), rel=1e-12),  # std, ddof=1
                       "median": 2.0}
    assert demo.summarise(np.array([np.nan]))["mean"] is None


def test_json_writer_turns_non_finite_numbers_into_null(tmp_path):
    path = tmp_path / "r.json"
    files.write_json_atomically(str(path), {"a": [1.5, np.float64(np.inf), np.nan], "b": np.int64(3)})
    assert json.loads(path.read_text()) == {"a": [1.5, None, None], "b": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
