"""The MAML and Reptile Omniglot demos at a small size, Reptile's two test modes, and the titles
of the Omniglot demos' learning-curve figures.

The Omniglot zips are found by ``helpers.omniglot_folder``.  Each demo runs twice on the same
seeds, trained and untrained (outer step size 0), so the tests can tell training from none.
"""

import json
import math

import numpy as np
import pytest

from helpers import omniglot_folder
from refmeta import contract, reptile
from refmeta.demos import fewshot_omniglot, maml_omniglot, options, reptile_omniglot
from refmeta.nn import models

# MAML, 40 iterations of 8 tasks, Adam 0.03 (the demo's β is 1e-3): the mean training loss over
# iterations 21-40 against the same episodes untrained, seeds 2-4: 1.476 / 1.617, 1.433 / 1.605,
# 1.486 / 1.610.  Reptile, 30 iterations, inner Adam 0.01, 10 test steps: the held-out query loss
# after training against untrained, seeds 0-4: 1.302 / 1.563, 1.333 / 1.478, 1.524 / 1.585,
# 1.460 / 1.623, 1.368 / 1.553.
MAML_SMALL = ["--iterations", "40", "--curve-every", "20", "--meta-batch-size", "8", "--meta-lr", "0.03"]
REPTILE_SMALL = ["--iterations", "30", "--curve-every", "15", "--curve-episodes", "10",
                 "--test-inner-steps", "10", "--inner-lr", "0.01"]
UNTRAINED = {maml_omniglot: ["--meta-lr", "0"], reptile_omniglot: ["--meta-step-size", "0"]}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("omniglot-cache")


def parse(demo, argv):
    parser = options.parser(demo.__name__, demo.__doc__)
    demo.add_arguments(parser)
    return parser.parse_args(argv)


def run(demo, tmp_path_factory, cache, argv):
    out = tmp_path_factory.mktemp(demo.__name__.rsplit(".", 1)[-1])
    report = demo.run(parse(demo, ["--fast", "--data", str(omniglot_folder()), "--cache", str(cache),
                                   "--out", str(out)] + argv))
    return out, report


def trained_and_untrained(demo, small, tmp_path_factory, cache):
    """(demo, (out, report) trained, (out, report) untrained) on the same seeds."""
    return (demo, run(demo, tmp_path_factory, cache, small),
            run(demo, tmp_path_factory, cache, small + UNTRAINED[demo] + ["--no-plots"]))


@pytest.fixture(scope="module")
def maml_runs(tmp_path_factory, cache):
    return trained_and_untrained(maml_omniglot, MAML_SMALL, tmp_path_factory, cache)


@pytest.fixture(scope="module")
def reptile_runs(tmp_path_factory, cache):
    return trained_and_untrained(reptile_omniglot, REPTILE_SMALL, tmp_path_factory, cache)


@pytest.fixture(params=["maml", "reptile"])
def runs(request):
    return request.getfixturevalue(f"{request.param}_runs")


def test_the_json_holds_the_setup_and_every_reported_number(runs):
    demo, (out, report), _ = runs
    saved = json.loads((out / "results.json").read_text())
    modes = ["transductive"] + (["non_transductive"] if demo is reptile_omniglot else [])
    assert list(saved["results"]) == modes
    for mode in modes:
        assert list(saved["results"][mode]) == ["5-way 1-shot", "5-way 5-shot"]
        for result in saved["results"][mode].values():
            assert result["n_episodes"] == demo.FAST["eval_episodes"]
            assert 0 <= result["mean"] <= 100 and result["ci95"] >= 0 and math.isfinite(result["query_loss"])
    assert "they need a 20-way model (--train-way 20)" in saved["lake_runs"]["skipped"]
    assert saved["data"] == {"train_classes": 4 * 194, "train_characters": 194, "heldout_characters": 48,
                             "lake_runs": 20}
    conventions, model = saved["conventions"], saved["model"]
    assert model["variant"] == "stride" and model["bn_mode"] == "transductive" and model["bn_eps"] == 1e-3
    assert conventions["n_way"] == 5 and saved["config"]["dtype"] == "float32"
    if demo is maml_omniglot:
        assert model["bn_affine"] == "offset" and saved["order"] == "first order"
        assert (conventions["inner_lr"], conventions["inner_steps"],
                conventions["test_inner_steps"]) == (0.4, 1, 3)
        assert conventions["first_order"] is True and conventions["inner_reduction"] == "n_way_times_mean"
        assert conventions["adapt_bn"] is False and conventions["meta_lr"] == 0.03
        assert saved["departures_from_authors"] == {"meta_batch_size": {"ours": 8, "authors": 32},
                                                    "meta_lr": {"ours": 0.03, "authors": 1e-3}}
    else:
        assert model["bn_affine"] == "both"
        assert (conventions["variant"], conventions["inner_optimizer"],
                conventions["adam_b1"]) == ("batched", "adam", 0.0)
        assert (conventions["inner_steps"], conventions["test_inner_steps"],
                conventions["inner_lr"]) == (5, 10, 0.01)
        assert saved["config"]["train_shot"] == 10 and saved["config"]["inner_batch_size"] == 10
        assert saved["departures_from_authors"] == {"inner_lr": {"ours": 0.01, "authors": 1e-3}}
    iterations = int((MAML_SMALL if demo is maml_omniglot else REPTILE_SMALL)[1])
    assert saved["timing"]["iterations_done"] == iterations and saved["timing"]["iterations_per_minute"] > 0
    assert saved["learning_curve"]["iteration"] == [0, iterations // 2, iterations]
    rows = [line for line in saved["table"].splitlines() if line.startswith(f"| `{saved['demo']}`")]
    assert len(rows) == len(modes) and all(row.count("|") == 8 for row in rows)   # the README's 7 columns


def test_training_lowers_the_loss_against_no_training_on_the_same_episodes(runs):
    demo, (_, trained), (_, untrained) = runs
    trained_curve, untrained_curve = trained["learning_curve"], untrained["learning_curve"]
    for key in ("heldout_accuracy", "heldout_loss"):      # untrained: the same params at every check
        assert len(set(untrained_curve[key])) == 1
    assert trained_curve["heldout_loss"][0] == untrained_curve["heldout_loss"][0]   # the same init
    if demo is maml_omniglot:    # the meta-loss, on the same training episodes in both runs
        assert trained_curve["train_loss"][-1] < untrained_curve["train_loss"][-1] - 0.05
    else:                        # Reptile's step loss is at φ, before adaptation: see the held-out loss
        assert trained_curve["heldout_loss"][-1] < untrained_curve["heldout_loss"][-1] - 0.05


def test_reptiles_outer_step_size_falls_linearly_to_zero(reptile_runs):
    _, (_, trained), (_, untrained) = reptile_runs
    # ε = ε_0 (1 − i/30) at iteration i = 0 … 29 (the time budget of a minute never binds);
    # recorded at iteration 0 and after iterations 15 and 30 (i = 14, 29).
    np.testing.assert_allclose(trained["learning_curve"]["meta_step_size"], [1, 1 - 14 / 30, 1 - 29 / 30],
                               rtol=1e-12)
    assert untrained["learning_curve"]["meta_step_size"] == [0, 0, 0]
    assert trained["meta_step_size_schedule"]["at_last_iteration"] == pytest.approx(1 / 30, rel=1e-12)


def test_the_output_folder_holds_only_the_results_and_the_figure_is_titled(runs):
    demo, (out, report), _ = runs
    expected = {"results.json"} | ({"learning_curve.png"} if report.get("figure") else set())
    assert {p.name for p in out.iterdir() if p.name != "cache"} == expected
    assert report["figure_title"] == ("MAML on Omniglot (first order)" if demo is maml_omniglot
                                      else "Reptile on Omniglot")


def test_a_20_way_maml_model_is_scored_on_lakes_runs(tmp_path_factory, cache):
    _, report = run(maml_omniglot, tmp_path_factory, cache,
                    ["--train-way", "20", "--iterations", "2", "--eval-episodes", "4", "--no-plots",
                     "--meta-batch-size", "32", "--meta-lr", "0.001"])
    assert list(report["results"]["transductive"]) == ["20-way 1-shot", "20-way 5-shot"]
    assert report["departures_from_authors"] == {}          # the authors' meta-batch size and β
    lake = report["lake_runs"]["transductive"]
    assert len(lake["per_run"]) == 20 and all(error % 5 == 0 for error in lake["per_run"])   # 20 items a run
    assert lake["error"] == pytest.approx(np.mean(lake["per_run"]))


# ----- Reptile's non-transductive prediction -----
def tiny_reptile(hidden=4, n_way=3):
    model = maml_omniglot.network(n_way, hidden, "both")
    config = reptile.ReptileConfig(model=model, n_way=n_way)
    return model, reptile.init(np.random.default_rng(0), config)


def test_one_query_at_a_time_equals_a_loop_over_the_queries():
    model, params = tiny_reptile()
    rng = np.random.default_rng(1)
    adapted = {name: value + 0.1 * rng.standard_normal((2,) + value.shape) for name, value in params.items()}
    support_x, query_x = rng.random((2, 3, 1, 28, 28)), rng.random((2, 4, 1, 28, 28))
    vectorised = reptile_omniglot.predict_one_query_at_a_time(model, adapted, support_x, query_x)
    assert vectorised.shape == (2, 4, 3)
    for t in range(2):
        task = {name: value[t] for name, value in adapted.items()}
        for q in range(4):
            alone = model.apply(task, np.concatenate([support_x[t], query_x[t, q:q + 1]]))[-1]
            np.testing.assert_allclose(vectorised[t, q], alone, rtol=1e-12)


def test_only_the_transductive_prediction_depends_on_the_other_queries():
    model, params = tiny_reptile()
    rng = np.random.default_rng(2)
    adapted = {name: value[None] for name, value in params.items()}
    support_x, query_x = rng.random((1, 3, 1, 28, 28)), rng.random((1, 4, 1, 28, 28))
    changed = query_x.copy()
    changed[:, 1:] = rng.random((1, 3, 1, 28, 28))                           # all but query 0
    alone = [reptile_omniglot.predict_one_query_at_a_time(model, adapted, support_x, q)[0, 0]
             for q in (query_x, changed)]
    np.testing.assert_allclose(alone[0], alone[1], rtol=1e-12)
    together = [model.apply(adapted, q)[0, 0] for q in (query_x, changed)]
    assert np.max(np.abs(together[0] - together[1])) > 1e-3


# ----- figure titles (no matplotlib needed: a stand-in figure records what is drawn) -----
class StandInAxes:
    def plot(self, *args, **kwargs):
        return [self]

    def __getattr__(self, name):              # set, axhline, legend, …: drawn, not recorded
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


class StandInFigure:
    def __init__(self, figsize):
        self.title = None

    def subplots(self, rows, columns, **kwargs):
        return [StandInAxes() for _ in range(rows * columns)]

    def suptitle(self, title, **kwargs):
        self.title = title

    def tight_layout(self):
        pass

    def savefig(self, file, **kwargs):
        file.write(b"png")


@pytest.fixture
def figures(monkeypatch):
    """The figures the demos make, as StandInFigures."""
    made = []
    monkeypatch.setattr(options, "figure", lambda figsize: made.append(StandInFigure(figsize)) or made[-1])
    return made


def test_the_metric_demos_learning_curve_is_titled_by_the_model(figures, tmp_path):
    # save_figure once titled every figure "people", the last of Lake's references it drew.
    curve = {"episode": [1, 2], "train_loss": [1.0, 0.5], "heldout_5w1s": [50.0, 60.0],
             "lake_error": [80.0, 70.0]}
    for name in ("protonet", "matching-fce"):
        path = fewshot_omniglot.save_figure(str(tmp_path), name, curve)
        assert figures[-1].title == name and path.endswith("learning_curve.png")


def test_the_optimization_demos_learning_curve_has_the_given_title(figures, tmp_path):
    curve = {"iteration": [0, 5], "train_loss": [math.nan, 1.0], "heldout_accuracy": [20.0, 30.0],
             "heldout_loss": [1.6, 1.5], "seconds": [0.0, 1.0], "meta_step_size": [1.0, 0.5]}
    maml_omniglot.save_figure(str(tmp_path), "Reptile on Omniglot", curve)
    assert figures[-1].title == "Reptile on Omniglot"


# ----- bad input -----
@pytest.mark.parametrize("demo", [maml_omniglot, reptile_omniglot], ids=["maml", "reptile"])
def test_bad_options_are_usage_errors_before_anything_is_written(demo, tmp_path):
    out = tmp_path / "out"
    base = ["--fast", "--out", str(out)]
    with pytest.raises(options.UsageError, match="--train-way: expected an integer >= 2; got 1"):
        parse(demo, base + ["--train-way", "1"])
    for argv, message in ((["--data", str(tmp_path / "absent")], "it is not a folder"),
                          (["--data", str(tmp_path), "--test-fraction", "1.5"],
                           "--test-fraction must lie in")):
        with pytest.raises(options.UsageError, match=message):
            demo.run(parse(demo, base + argv))
    assert not out.exists()


def test_a_task_too_small_for_reptiles_inner_batches_is_refused_before_the_data_is_read(tmp_path):
    argv = ["--fast", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "out"),
            "--inner-batch-size", "60"]                                  # 5-way × 10 drawings = 50
    with pytest.raises(options.UsageError, match="--inner-batch-size 60: a training task has only 50"):
        reptile_omniglot.run(parse(reptile_omniglot, argv))
    assert not any(tmp_path.iterdir())


def test_the_conv4_network_is_mamls_omniglot_model():
    model = maml_omniglot.network(5, 8, "offset")
    params = model.init(np.random.default_rng(0))
    assert set(params) == set(models.conv4_init(np.random.default_rng(0), 1, 5, 8, "stride", "offset", 28))
    x, y = np.random.default_rng(1).random((2, 5, 1, 28, 28)), np.tile(np.arange(5), (2, 1))
    assert model.loss(params, x, y, "mean").shape == (2,)
    assert isinstance(model, contract.Model)
