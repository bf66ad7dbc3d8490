"""The Meta Networks Omniglot demo at its --fast size, and its option checks."""

import argparse
import json
from pathlib import Path

import pytest

from helpers import omniglot_folder
from refmeta.demos import metanet_omniglot as demo



def parse(argv):
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("metanet-omniglot")
    cache = tmp_path_factory.mktemp("cache")
    return out, demo.run(parse(["--data", str(omniglot_folder()), "--fast", "--out", str(out), "--cache", str(cache)]))


def test_the_json_records_config_results_and_the_learning_curve(fast_run):
    out, report = fast_run
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["metanet"]["preprocess_p"] == 7.0
    assert saved["config"]["n_blocks"] == saved["config"]["metanet"]["n_blocks"] == 5     # MetaNetFull's
    assert saved["config"]["pool_rounding"] == saved["config"]["metanet"]["pool_rounding"] == "ceil"
    assert saved["config"]["train_way"] == 20 and saved["config"]["episodes_trained"] == demo.FAST["episodes"]
    assert saved["config"]["training_classes"] == 4 * 194 and saved["config"]["heldout_characters"] == 48
    for setting in ("5-way 1-shot", "20-way 1-shot"):
        result = saved["results"][setting]
        assert result["n_episodes"] == demo.FAST["eval_episodes"] and 0 <= result["accuracy"] <= 100
        assert result["ci95"] >= 0
    assert len(saved["results"]["lake_runs"]["per_run"]) == 20
    assert saved["learning_curve"]["episode"][-1] == demo.FAST["episodes"]
    assert saved["paper"]["accuracy"]["5-way 1-shot"] == 98.95
    assert "| paper (1200 training characters) | 98.95% | 97.00% | |" in report["table"]
    names = {p.name for p in out.iterdir()} - {"cache"}
    assert names == {"results.json"} | {Path(p).name for p in report.get("figures", [])}


def test_a_5_way_model_reports_no_20_way_numbers(tmp_path):
    report = demo.run(parse(["--data", str(omniglot_folder()), "--fast", "--out", str(tmp_path), "--train-way", "5",
                             "--no-plots", "--cache", str(tmp_path / "cache")]))
    assert report["results"]["20-way 1-shot"] is None and report["results"]["lake_runs"] is None
    assert "n/a" in report["table"]


@pytest.mark.parametrize("argv, message", [
    (["--train-way", "1"], "--train-way must be >= 2"),
    (["--fast-conv-blocks", "7"], r"--fast-conv-blocks must be 0..5 \(--n-blocks\) or 'all'"),
    (["--n-blocks", "4", "--fast-conv-blocks", "5"], "--fast-conv-blocks must be 0..4"),
    (["--n-blocks", "5", "--pool-rounding", "floor"], "--n-blocks 5 --pool-rounding floor: the blocks take "
                                                      "images of side 32..63 to 1×1, not Omniglot's 28"),
    (["--n-blocks", "4"], r"--n-blocks 4 --pool-rounding ceil: .* side 9..16"),
    (["--test-fraction", "1.5"], "--test-fraction must lie in"),
])
def test_bad_options_are_refused_before_any_work(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message):
        demo.run(parse(["--data", str(omniglot_folder()), "--out", str(tmp_path)] + argv))


def test_a_folder_without_the_zips_is_refused(tmp_path):
    with pytest.raises(ValueError, match="expected a folder holding images_background_small1.zip"):
        demo.run(parse(["--data", str(tmp_path), "--out", str(tmp_path / "out")]))
