"""The Reptile sine-wave demo at a small size: its JSON, its ε schedule, its evaluation against an
independent computation, and training told apart from no training on the same seeds."""

import json
import math

import numpy as np
import pytest
from autograd import grad

from refmeta.demos import options, reptile_sinusoid as demo
from refmeta.fast import fused_mlp
from refmeta.nn import losses, models

# 300 iterations with ε_0 = 1 (the demo's default is 0.1 over 30 000): enough to separate
# training from none in seconds.  Test MSE after 32 steps, seeds 0-3, Reptile / joint training
# / no training (ε_0 = 0): 1.48 / 2.73 / 2.55, 2.11 / 2.77 / 2.67, 1.53 / 3.01 / 2.97,
# 1.46 / 3.81 / 3.00.
SMALL = ["--fast", "--iterations", "300", "--meta-step-size", "1"]


def run(tmp_path_factory, name, argv):
    out = tmp_path_factory.mktemp(name)
    parser = options.parser("reptile-sinusoid", demo.__doc__)
    demo.add_arguments(parser)
    return out, demo.run(parser.parse_args(argv + ["--out", str(out)]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return run(tmp_path_factory, "trained", SMALL)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    return run(tmp_path_factory, "untrained", SMALL + ["--meta-step-size", "0", "--no-plots"])


def test_the_json_records_the_setup_the_schedule_and_every_number(trained):
    out, report = trained
    saved = json.loads((out / "results.json").read_text())
    config = saved["config"]
    assert config["tasks"] == {"formula": "y = A * sin(x + phase)", "amplitude_range": [0.1, 5.0],
                               "phase_range": [0.0, 2 * math.pi], "x_range": [-5.0, 5.0], "phase_sign": 1}
    assert config["reptile"]["variant"] == "serial" and config["reptile"]["inner_optimizer"] == "sgd"
    assert (config["reptile"]["inner_lr"], config["reptile"]["inner_steps"]) == (0.02, 5)
    assert config["joint_training"]["inner_steps"] == 1
    assert config["model"]["sizes"] == [1, 64, 64, 1] and config["model"]["activation"] == "tanh"
    assert config["meta_step_size_schedule"] == {"rule": demo.SCHEDULE, "initial": 1.0, "final": 0.0,
                                                 "iterations": 300}
    assert config["test"]["shots"] == 10 and config["test"]["steps"] == [0, 1, 32]
    assert saved["seeds"] == {**saved["seeds"], "seed": 0, "eval_seed": 2018}
    for name in ("reptile", "joint"):
        assert saved["timing"][f"{name}_seconds_per_iteration"] > 0
        for steps in ("0", "1", "32"):
            summary = saved["results"][name][steps]
            assert summary["n_tasks"] == demo.FAST["test_tasks"] and summary["n_diverged"] == 0
            assert all(math.isfinite(summary[key]) for key in ("mean", "ci95", "median"))
    assert "| Reptile (300 iterations, ε 1 → 0) |" in saved["table"]
    assert "| Reptile, sine waves (K = 10) |" in saved["table"]


def test_the_schedule_falls_linearly_to_zero(trained, untrained):
    # ε_i = ε_0 (1 − i/N) for i = 0 … N − 1; the curve records ε at iteration 0 and at the last
    # iteration of each validation window (i = 99, 199, 299).
    for (_, report), initial in ((trained, 1.0), (untrained, 0.0)):
        for curve in report["learning_curves"].values():
            assert curve["iteration"] == [0, 100, 200, 300]
            expected = [initial * (1 - max(i - 1, 0) / 300) for i in curve["iteration"]]
            np.testing.assert_allclose(curve["meta_step_size"], expected, rtol=1e-12, atol=0)


def test_reptile_training_beats_no_training_and_joint_training(trained, untrained):
    trained_results, untrained_results = trained[1]["results"], untrained[1]["results"]
    assert trained_results["reptile"]["32"]["mean"] < 0.85 * untrained_results["reptile"]["32"]["mean"]
    assert trained_results["reptile"]["32"]["mean"] < 0.85 * trained_results["joint"]["32"]["mean"]
    assert untrained_results["reptile"] == untrained_results["joint"]   # ε = 0: both stay at the init


def test_the_output_folder_holds_only_the_results(trained):
    out, report = trained
    expected = {"results.json"} | {path.rsplit("/", 1)[-1] for path in report.get("figures", [])}
    assert {p.name for p in out.iterdir()} == expected


def test_the_tasks_are_the_authors_sines_on_the_grid():
    (amplitudes, phases), episode = demo.draw_tasks(np.random.default_rng(3), 4, 10)
    assert np.all((0.1 <= amplitudes) & (amplitudes <= 5)) and np.all((0 <= phases) & (phases <= 2 * np.pi))
    for t in range(4):
        support = episode.support_x[t, :, 0]
        assert len(set(support.tolist())) == 10 and np.isin(support, demo.GRID[:, 0]).all()
        np.testing.assert_allclose(episode.query_y[t, :, 0],
                                   amplitudes[t] * np.sin(demo.GRID[:, 0] + phases[t]), rtol=1e-14)


def test_the_evaluation_matches_sgd_on_the_generic_mlp():
    # The demo adapts with reptile.adapt_trajectory on the fused MLP; here plain SGD on
    # models.mlp_apply, differentiated by autograd, must give the same MSE after each step.
    network = fused_mlp.FusedMLP(demo.LAYER_SIZES, "tanh")
    config = demo.reptile.ReptileConfig(model=network.model(), inner_lr=0.02, inner_optimizer="sgd",
                                        test_inner_steps=3, variant="serial")
    params = network.model().init(np.random.default_rng(0))
    _, episode = demo.draw_tasks(np.random.default_rng(1), 3, 10)
    ours = demo.task_mse_by_steps(params, episode, config, (0, 1, 3), chunk=2)
    tree = network.unpack(params)

    def mse(p, x, y):
        return losses.mse(models.mlp_apply(p, x, activation="tanh"), y, "mean")

    for t in range(3):
        p = dict(tree)
        for step in range(4):
            if step in ours:
                np.testing.assert_allclose(ours[step][t], mse(p, episode.query_x[t], episode.query_y[t]),
                                           rtol=1e-10)
            g = grad(mse)(p, episode.support_x[t], episode.support_y[t])
            p = {name: p[name] - 0.02 * g[name] for name in p}


def test_bad_sizes_are_usage_errors_before_anything_is_written(tmp_path):
    parser = options.parser("reptile-sinusoid", demo.__doc__)
    demo.add_arguments(parser)
    out = tmp_path / "out"
    for argv, message in ((["--inner-batch-size", "51"], "--inner-batch-size 51: a task has only 50 points"),
                          (["--test-shots", "60"], "--test-shots 60: a task has only 50 points")):
        with pytest.raises(options.UsageError, match=message):
            demo.run(parser.parse_args(["--fast", "--out", str(out)] + argv))
    with pytest.raises(options.UsageError, match="--iterations: expected an integer >= 1; got 0"):
        parser.parse_args(["--iterations", "0"])
    assert not out.exists()
