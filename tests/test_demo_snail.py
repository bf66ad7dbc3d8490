"""The SNAIL Omniglot demo at its --fast size, its cached-embedding evaluation and its knockout."""

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from refmeta import snail
from refmeta.contract import State
from helpers import omniglot_folder
from refmeta.data import omniglot
from refmeta.device import backend
from refmeta.demos import options
from refmeta.demos import snail_omniglot as demo



def parse(argv):
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    return parser.parse_args(argv)


def demo_parse(argv):
    """argv through the demo's own parser, whose errors are options.UsageError."""
    parser = options.parser("snail-omniglot", demo.__doc__)
    demo.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def data_dir():
    return omniglot_folder()


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory, data_dir):
    """(out_dir, returned report) of one ``--fast`` run, shared by the tests below."""
    out, cache = tmp_path_factory.mktemp("snail-omniglot"), tmp_path_factory.mktemp("cache")
    return out, demo.run(parse(["--fast", "--data", str(data_dir), "--cache", str(cache), "--out", str(out)]))


def test_the_json_records_config_seeds_timing_and_every_number(fast_run):
    out, report = fast_run
    saved = json.loads((out / "results.json").read_text())
    for key in ("paper", "config", "seeds", "checkpoint", "timing", "machine", "results",
                "learning_curve", "table"):
        assert key in saved, key
    config = saved["config"]
    assert config["snail"]["blocks"] == [["attention", 64, 32], ["tc", 128], ["attention", 256, 128],
                                         ["tc", 128], ["attention", 512, 256]]
    assert config["snail"]["attention_init_gain"] == 4.0       # the demo's default
    assert config["train_shots"] == config["snail"]["train_shots"] == [1, 2, 3, 4, 5]   # Section 5.1
    assert config["snail"]["k_shot"] is None and config["snail"]["sequence_length"] == 26
    assert config["test_shots"] == [1, 5]
    assert config["characters"] == {"merged": 242, "train_classes_with_rotations": 4 * 169,
                                    "validation": 25, "test": 48}
    assert config["iterations"] == demo.FAST["iterations"]
    assert set(saved["results"]["test"]) == {"5-way 1-shot", "5-way 5-shot"}   # one model, two Ks
    for test in saved["results"]["test"].values():
        assert test["n_episodes"] == demo.FAST["test_episodes"] and 0 <= test["accuracy"] <= 100
        assert math.isfinite(test["ci95"])
    lake = saved["results"]["lake"]
    assert lake["n_runs"] == len(lake["per_run"]) == demo.FAST["lake_runs"]
    assert lake["error"] == pytest.approx(np.mean(lake["per_run"]))
    assert all(e % 5 == 0 for e in lake["per_run"]) and "knockout" in lake["method"]
    curve = saved["learning_curve"]
    assert curve["iteration"] == [0, demo.FAST["iterations"]]
    assert all(math.isfinite(v) for v in curve["train_loss"][1:])
    by_shot = curve["validation_accuracy_by_shot"]
    assert set(by_shot) == {"1", "5"}
    np.testing.assert_allclose(curve["validation_accuracy"], np.mean([by_shot["1"], by_shot["5"]], axis=0),
                               rtol=1e-15)
    assert saved["paper"]["omniglot_accuracy"]["5-way 1-shot"] == 99.07
    assert "| paper, 5-way 1-shot (full background set) | 99.07 | |" in report["table"]
    assert "| paper, 5-way 5-shot (full background set) | 99.78 | |" in report["table"]


def test_the_output_folder_holds_only_the_results(fast_run):
    out, report = fast_run
    expected = {"results.json"} | {Path(p).name for p in report.get("figures", [])}
    assert {p.name for p in out.iterdir()} == expected


def test_cached_embeddings_score_episodes_exactly_as_embedding_each_episode(data_dir, tmp_path):
    """Running batch norm embeds every image on its own, so sampling episodes of cached
    embeddings with the same seed gives the logits of embedding every episode anew."""
    config = snail.SNAILConfig()
    rng = np.random.default_rng(0)
    params = {k: backend.asarray(v) for k, v in snail.init(rng, config).items()}
    characters = omniglot.load_characters(data_dir / "images_background_small1.zip", cache_dir=tmp_path)
    images = characters.images[:12]
    _, moments = snail.embed(params, backend.asarray(images[:, :4, None]), config, return_bn_moments=True)
    bn_state = {k: backend.asarray(v) for k, v in moments.items()}

    def draw(pool, seed):
        generator = np.random.default_rng(seed)
        return demo.shuffled_support(generator, omniglot.sample_episodes(generator, pool, 3, 5, 1, 2))

    running = dataclasses.replace(config, bn_mode="running")
    direct = backend.to_host(snail.predict(params, draw(images, 7), running, state=State(None, bn_state)))
    features = demo.embed_all(params, bn_state, images, config)[:, :, None, :]
    cached = draw(features, 7)
    sequences = snail.make_sequences(cached.support_x[..., 0, 0, :], cached.support_y,
                                     cached.query_x[..., 0, 0, :], config)
    np.testing.assert_allclose(backend.to_host(snail.apply(params, sequences, config))[..., -1, :], direct,
                               rtol=1e-9, atol=1e-12)


def test_shuffled_support_moves_each_image_with_its_label():
    rng = np.random.default_rng(1)
    episode = omniglot.sample_episodes(rng, rng.random((6, 4, 3, 3)), 5, 4, 2, 1)
    shuffled = demo.shuffled_support(rng, episode)
    for t in range(5):
        order = [int(np.flatnonzero((episode.support_x[t] == x).all(axis=(1, 2, 3)))[0])
                 for x in shuffled.support_x[t]]
        assert sorted(order) == list(range(8))
        np.testing.assert_array_equal(shuffled.support_y[t], episode.support_y[t][order])
    assert not np.array_equal(shuffled.support_y, episode.support_y)


@pytest.mark.parametrize("n_way, n_candidates", [(5, 20), (4, 8), (5, 5), (20, 20)])
def test_knockout_finds_the_global_best_when_probabilities_come_from_fixed_scores(monkeypatch, n_way, n_candidates):
    """With p = softmax of a fixed score per candidate (what a model that judges each candidate on
    its own gives), every group's winner is its best candidate and the final's is the overall best."""
    rng = np.random.default_rng(n_way * n_candidates)
    scores = rng.standard_normal((6, n_candidates))                       # (n_test, C)

    def fake(params, support, labels, query, config):
        index = np.rint(support[..., 0]).astype(int)                      # candidate id in feature 0
        chosen = np.take_along_axis(scores[:, None, :].repeat(index.shape[1], 1), index, axis=-1)
        exps = np.exp(chosen)
        return exps / exps.sum(-1, keepdims=True)

    monkeypatch.setattr(demo, "_probabilities", fake)
    support_z = np.stack([np.arange(n_candidates), np.zeros(n_candidates)], axis=1).astype(float)
    config = snail.SNAILConfig(n_way=n_way)
    knockout = demo.knockout_scores(None, support_z, np.zeros((6, 2)), config)
    np.testing.assert_array_equal(knockout.argmax(-1), scores.argmax(-1))
    finalists = (knockout >= 1.0).sum(-1)
    assert np.all(finalists == (n_way if n_candidates > n_way else 0))


def test_knockout_refuses_candidate_counts_it_cannot_split():
    with pytest.raises(ValueError, match="needs g·5 candidates with g <= 5; got 12"):
        demo.knockout_scores(None, np.zeros((12, 3)), np.zeros((2, 3)), snail.SNAILConfig())
    with pytest.raises(ValueError, match="got 30"):
        demo.knockout_scores(None, np.zeros((30, 3)), np.zeros((2, 3)), snail.SNAILConfig())


def test_each_step_draws_k_uniformly_and_one_k_draws_nothing():
    rng = np.random.default_rng(3)
    draws = [demo.draw_shots(rng, (1, 2, 3, 4, 5)) for _ in range(5000)]
    counts = np.bincount(draws, minlength=6)[1:]
    assert counts.sum() == 5000 and np.all(np.abs(counts - 1000) < 4 * np.sqrt(800))   # ±4 std
    state = rng.bit_generator.state
    assert demo.draw_shots(rng, (3,)) == 3 and rng.bit_generator.state == state


@pytest.mark.parametrize("argv, message", [
    (["--train-shots", "2,1"], "--train-shots: expected increasing integers >= 1"),
    (["--train-shots", "0"], "--train-shots: expected increasing integers >= 1"),
    (["--train-shots", "1,2", "--test-shots", "5"], "--test-shots 5: the model reads only the Ks of "
                                                    "--train-shots 1,2"),
])
def test_bad_shots_are_refused_before_any_work(tmp_path, argv, message):
    with pytest.raises(options.UsageError, match=message):
        demo.run(demo_parse(["--fast", "--data", str(tmp_path), "--out", str(tmp_path / "out")] + argv))
    assert not (tmp_path / "out").exists()
