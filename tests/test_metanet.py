"""Meta Networks: every equation of the module docstring, finite differences, identities, bad input."""

import json

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad
from hypothesis import assume, given, strategies as st

from refmeta import metanet
from refmeta.data import tasks
from refmeta.nn import losses, optimizers
from refmeta.nn import metanet_parts as parts

from helpers import check_grad_away_from_kinks

seeds = st.integers(0, 2**32 - 1)


def tiny(dev, rng, n_way=3, n_query=4, hidden=3, second_order=False, chunks=3, fast_conv_blocks=None,
         query_reduction="sum"):
    """Params of a 2-block, 4×4-image MetaNet and one n_way-way 1-shot episode, on ``dev``."""
    params = dev.tree(metanet.init(rng, hidden=hidden, n_blocks=2, n_way=n_way))
    support_y = rng.permutation(n_way)
    query_y = rng.integers(0, n_way, size=n_query)
    episode = tasks.Episode(dev.asarray(rng.standard_normal((n_way, 1, 4, 4))), dev.asarray(support_y),
                            dev.asarray(rng.standard_normal((n_query, 1, 4, 4))), dev.asarray(query_y))
    config = metanet.MetaNetConfig(second_order=second_order, representation_chunks=chunks,
                                   fast_conv_blocks=fast_conv_blocks, query_reduction=query_reduction)
    return params, episode, config


def outputs(params, episode, config, meta_info=None):
    return metanet.episode_outputs(params, episode.support_x, episode.support_y, episode.query_x,
                                   config, meta_info)


def host(dev, tree):
    return {k: dev.to_host(v) for k, v in tree.items()}


# ----- gradients of the full training loss -----
@given(seed=seeds, n_way=st.sampled_from([2, 3]), chunks=st.sampled_from([1, 5]),
       fast_conv_blocks=st.sampled_from([None, 0, 1]), reduction=st.sampled_from(["sum", "mean"]))
def test_second_order_gradient_matches_finite_differences(dev, seed, n_way, chunks, fast_conv_blocks,
                                                          reduction):
    """∇_θ L_train, differentiating through the gradients (3), (10) and pre(·)."""
    rng = np.random.default_rng(seed)
    params, episode, config = tiny(dev, rng, n_way, second_order=True, chunks=chunks,
                                   fast_conv_blocks=fast_conv_blocks, query_reduction=reduction)
    loss = lambda p: metanet.episode_loss(p, episode, config)
    assume(check_grad_away_from_kinks(loss, params, rng) >= 1)


@given(seed=seeds, n_way=st.sampled_from([2, 3]), fast_conv_blocks=st.sampled_from([None, 0]))
def test_first_order_gradient_is_the_gradient_with_the_meta_information_held_fixed(
        dev, seed, n_way, fast_conv_blocks):
    """second_order=False: the gradient of L_train(θ; ∇ frozen at θ₀), checked by differences."""
    rng = np.random.default_rng(seed)
    params, episode, config = tiny(dev, rng, n_way, fast_conv_blocks=fast_conv_blocks)
    frozen = metanet.meta_information(params, episode.support_x, episode.support_y, config)
    loss_frozen = lambda p: metanet.episode_loss(p, episode, config, frozen)
    first_order = grad(lambda p: metanet.episode_loss(p, episode, config))
    assume(check_grad_away_from_kinks(loss_frozen, params, rng, grad_fn=first_order) >= 1)


def test_first_and_second_order_differ_only_through_the_gradients(dev):
    rng = np.random.default_rng(3)
    params, episode, config = tiny(dev, rng)
    second = metanet.MetaNetConfig(**{**config.conventions(), "second_order": True})
    g1, g2 = (host(dev, grad(metanet.episode_loss)(params, episode, c)) for c in (config, second))
    assert metanet.episode_loss(params, episode, config) == metanet.episode_loss(params, episode, second)
    assert any(np.max(np.abs(g1[k] - g2[k])) > 1e-6 for k in g1)  # the extra path is not empty


# ----- the meta information: per-example gradients and pre(·) -----
def test_group_gradients_equal_one_gradient_per_example(dev):
    """(10) vectorised by weight copies equals N separate gradients."""
    rng = np.random.default_rng(0)
    params, episode, config = tiny(dev, rng, n_way=3)
    base = metanet.learner(params, "base")
    names = metanet.fast_layers(base, config, True)
    grads = metanet.group_gradients(base, names, episode.support_x[:, None], episode.support_y[:, None],
                                    False)
    for i in range(3):
        def loss_i(weights, i=i):
            logits = parts.base_logits({**base, **weights}, episode.support_x[i:i + 1])
            return losses.cross_entropy(logits, episode.support_y[i:i + 1])
        one = grad(loss_i)({k: base[k] for k in names})
        for k in names:
            np.testing.assert_allclose(dev.to_host(grads[k][i]), dev.to_host(one[k]), rtol=1e-12, atol=1e-15)


def test_task_gradients_are_chunk_mean_losses_in_support_order(dev):
    """(3): T chunks of N/T consecutive support examples, mean cross-entropy of u's slow head."""
    rng = np.random.default_rng(1)
    params, episode, config = tiny(dev, rng, n_way=4, chunks=2)
    info = metanet.meta_information(params, episode.support_x, episode.support_y, config)
    rep = metanet.learner(params, "rep")
    names = metanet.fast_layers(rep, config, False)
    assert sorted(info["task"]) == sorted(names) and "out.w" not in names
    for t in range(2):
        part = slice(2 * t, 2 * t + 2)
        loss_t = lambda w: losses.cross_entropy(
            parts.slow_logits({**rep, **w}, episode.support_x[part]), episode.support_y[part])
        one = grad(loss_t)({k: rep[k] for k in names})
        for k in names:
            np.testing.assert_allclose(dev.to_host(info["task"][k][t]), dev.to_host(one[k]), rtol=1e-12,
                                       atol=1e-15)


def test_preprocess_is_andrychowiczs_piecewise_definition(dev):
    p = 7.0
    g = np.array([0.0, 1e-9, -5e-4, np.exp(-p), -np.exp(-p) * 1.0001, 0.3, -2.0, 50.0])
    expected = np.array([[np.log(abs(v)) / p, np.sign(v)] if abs(v) >= np.exp(-p) else [-1.0, np.exp(p) * v]
                         for v in g])
    got = dev.to_host(parts.preprocess(dev.asarray(g), p))
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-15)
    assert got.shape == (8, 2)


def test_example_generator_is_a_coordinatewise_mlp(dev):
    """(1): m maps each coordinate's (log, sign) pair through 2 → 20 → 20 → 1 with ReLUs."""
    rng = np.random.default_rng(2)
    params = parts.meta_init(rng)
    info = rng.uniform(-1, 1, size=(2, 3, 2))
    got = dev.to_host(parts.example_generator(dev.tree(params), "dense", dev.asarray(info)))
    for index in np.ndindex(2, 3):
        h = info[index]
        for i in range(3):
            h = h @ params[f"m.dense.l{i}.w"] + params[f"m.dense.l{i}.b"]
            h = np.maximum(h, 0) if i < 2 else h
        np.testing.assert_allclose(got[index], h[0], rtol=1e-13)


def test_task_generator_is_a_coordinatewise_lstm(dev):
    """(4): d runs an LSTM (Chainer gate order a, i, f, o) over the T gradients, per coordinate."""
    rng = np.random.default_rng(3)
    params = parts.meta_init(rng)
    infos = rng.uniform(-1, 1, size=(4, 5, 2))   # T = 4 steps, 5 coordinates
    got = dev.to_host(parts.task_generator(dev.tree(params), "conv", dev.asarray(infos)))
    sigmoid = lambda z: 1 / (1 + np.exp(-z))
    for c in range(5):
        state, cell = np.zeros(20), np.zeros(20)
        for t in range(4):
            z = infos[t, c] @ params["d.conv.wx"] + state @ params["d.conv.wh"] + params["d.conv.b"]
            a, i, f, o = np.split(z, 4)
            cell = np.tanh(a) * sigmoid(i) + sigmoid(f) * cell
            state = sigmoid(o) * np.tanh(cell)
        np.testing.assert_allclose(got[c], state @ params["d.conv.out.w"][:, 0] + params["d.conv.out.b"][0],
                                   rtol=1e-12)


# ----- memory, attention, layer augmentation -----
def test_one_hot_attention_reads_exactly_the_stored_fast_weights(dev):
    rng = np.random.default_rng(4)
    memory = {"conv0.w": rng.standard_normal((4, 3, 2, 3, 3)), "out.w": rng.standard_normal((4, 3, 5))}
    slots = np.array([2, 0, 3, 3, 1])
    read = parts.read_memory(dev.tree(memory), dev.asarray(np.eye(4)[slots]))
    for name in memory:
        np.testing.assert_array_equal(dev.to_host(read[name]), memory[name][slots])


def test_attention_is_the_cosine_and_its_softmax_rows_sum_to_one(dev):
    rng = np.random.default_rng(5)
    keys, queries = rng.standard_normal((4, 6)), rng.standard_normal((3, 6))
    a = dev.to_host(parts.cosine_attention(dev.asarray(keys), dev.asarray(queries), eps=0.0))
    cos = (queries @ keys.T) / np.outer(np.linalg.norm(queries, axis=1), np.linalg.norm(keys, axis=1))
    np.testing.assert_allclose(a, cos, rtol=1e-13)
    weights = dev.to_host(parts.softmax(dev.asarray(a)))
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-15)
    np.testing.assert_allclose(weights, np.exp(cos) / np.exp(cos).sum(axis=1, keepdims=True), rtol=1e-13)


def test_with_fast_weights_zero_the_learners_are_their_slow_networks(dev):
    rng = np.random.default_rng(6)
    net = dev.tree(parts.learner_init(rng, hidden=3, n_blocks=2, n_out=4))
    x = dev.asarray(rng.standard_normal((5, 1, 4, 4)))
    zeros = {k: anp.zeros_like(anp.broadcast_to(v[None], (5,) + v.shape)) for k, v in net.items()}
    np.testing.assert_array_equal(dev.to_host(parts.base_logits(net, x[:, None], zeros))[:, 0],
                                  dev.to_host(parts.base_logits(net, x)))
    np.testing.assert_array_equal(dev.to_host(parts.representation(net, x[:, None], zeros))[:, 0],
                                  dev.to_host(parts.representation(net, x)))


def test_layer_augmentation_adds_the_fast_path_through_its_own_relu(dev):
    """φ(W h) + φ(W* h) on a hidden layer, W h + W* h on the output layer."""
    rng = np.random.default_rng(7)
    net = parts.learner_init(rng, hidden=3, n_blocks=2, n_out=2)
    fast = {"fc1.w": rng.standard_normal((3, 3)), "out.w": rng.standard_normal((3, 2))}
    x = rng.standard_normal((4, 1, 4, 4))
    h = dev.to_host(parts.features(dev.tree(net), dev.asarray(x)))
    hidden = np.maximum(h @ net["fc1.w"], 0) + np.maximum(h @ fast["fc1.w"], 0)
    expected = hidden @ net["out.w"] + hidden @ fast["out.w"]
    np.testing.assert_allclose(dev.to_host(parts.base_logits(dev.tree(net), dev.asarray(x), dev.tree(fast))),
                               expected, rtol=1e-12)


def test_episode_outputs_compose_the_equations(dev):
    """(4), (1), (5), (7), (8), (11) recomputed step by step from the parts."""
    rng = np.random.default_rng(8)
    params, episode, config = tiny(dev, rng, n_way=3, n_query=5)
    out = outputs(params, episode, config)
    q_star = metanet.task_fast_weights(params, out["meta_info"]["task"], config)
    memory = metanet.example_fast_weights(params, out["meta_info"]["example"], config)
    rep, base = metanet.learner(params, "rep"), metanet.learner(params, "base")
    keys = parts.representation(rep, episode.support_x, q_star)
    assert set(q_star) == {"conv0.w", "conv1.w", "fc1.w"} and set(memory) == set(base)
    for i in range(5):
        r = parts.representation(rep, episode.query_x[i:i + 1], q_star)
        a = parts.cosine_attention(keys, r, config.attention_eps)[0]
        w = dev.to_host(parts.softmax(a))
        read = {k: sum(w[j] * dev.to_host(memory[k][j]) for j in range(3)) for k in memory}
        logits = parts.base_logits(base, episode.query_x[i:i + 1], dev.tree(read))
        np.testing.assert_allclose(dev.to_host(out["logits"][i]), dev.to_host(logits)[0], rtol=1e-10)
        np.testing.assert_allclose(dev.to_host(out["attention"][i]), dev.to_host(a), rtol=1e-12)


def test_relabelling_permutes_the_logits(dev):
    """Relabel classes by π and permute both output layers' slow units by π: logits permute."""
    rng = np.random.default_rng(9)
    params, episode, config = tiny(dev, rng, n_way=4, chunks=2)
    perm = np.array([2, 0, 3, 1])                              # class c is renamed perm[c]
    inverse = np.argsort(perm)
    relabelled = {k: v[:, dev.asarray(inverse)] if k in ("base.out.w", "rep.out.w") else v
                  for k, v in params.items()}
    move = lambda y: dev.asarray(perm[dev.to_host(y)])
    logits = dev.to_host(outputs(params, episode, config)["logits"])
    logits_pi = dev.to_host(outputs(relabelled, episode._replace(support_y=move(episode.support_y)),
                                    config)["logits"])
    np.testing.assert_allclose(logits_pi[:, perm], logits, rtol=1e-11, atol=1e-13)


def test_with_n_way_keeps_the_first_output_units(dev):
    rng = np.random.default_rng(10)
    params, episode, config = tiny(dev, rng, n_way=3)
    wide = dev.tree(metanet.init(np.random.default_rng(10), hidden=3, n_blocks=2, n_way=5))
    narrow = metanet.with_n_way(wide, 3)
    assert narrow["base.out.w"].shape == (3, 3) and narrow["rep.out.w"].shape == (3, 3)
    np.testing.assert_array_equal(dev.to_host(narrow["base.out.w"]), dev.to_host(wide["base.out.w"])[:, :3])
    assert outputs(narrow, episode, config)["logits"].shape == (4, 3)
    with pytest.raises(ValueError, match="n_way must be an integer in 2..5"):
        metanet.with_n_way(wide, 6)


# ----- training -----
def test_meta_step_fits_one_episode_and_clips_by_global_norm(dev):
    """Adam on L_train drives the loss of a fixed episode (queries = the support images) to ~0."""
    rng = np.random.default_rng(11)
    params, episode, _ = tiny(dev, rng, n_way=3)
    episode = episode._replace(query_x=episode.support_x, query_y=episode.support_y)
    config = metanet.MetaNetConfig(representation_chunks=3, meta_lr=0.01)
    state, first = optimizers.adam_init(params), float(metanet.episode_loss(params, episode, config))
    for _ in range(40):
        params, state, loss = metanet.meta_step(params, state, episode, config)
    assert float(metanet.episode_loss(params, episode, config)) < 0.01 * first
    g = dev.tree({"a": np.array([3.0, 4.0]), "b": np.array([12.0])})
    np.testing.assert_allclose(dev.to_host(metanet.clip_by_global_norm(g, 6.5)["a"]), [1.5, 2.0], rtol=1e-15)
    assert metanet.clip_by_global_norm(g, 20.0) is g and metanet.clip_by_global_norm(g, None) is g


def test_fast_layers_are_the_top_conv_blocks_then_fc1_and_out():
    net = {f"conv{i}.w": None for i in range(4)} | {"fc1.w": None, "out.w": None}
    layers_for = lambda k: metanet.fast_layers(net, metanet.MetaNetConfig(fast_conv_blocks=k), True)
    assert layers_for(0) == ("fc1.w", "out.w") and layers_for(1) == ("conv3.w", "fc1.w", "out.w")
    assert layers_for(None) == layers_for(4) == layers_for(9) == tuple(net)


def test_config_records_every_convention_as_json():
    config = metanet.MetaNetConfig()
    assert json.loads(json.dumps(config.conventions())) == config.conventions()
    assert config.conventions()["preprocess_p"] == 7.0 and config.conventions()["second_order"] is False


# ----- bad input -----
@pytest.mark.parametrize("change, message", [
    (lambda e, d: e._replace(support_x=d.asarray(np.full((3, 1, 4, 4), np.nan))), "support_x contains NaN"),
    (lambda e, d: e._replace(query_x=d.asarray(np.ones((2, 1, 4, 4)) * np.inf)), "query_x contains NaN"),
    (lambda e, d: e._replace(support_x=d.asarray(np.ones((3, 2, 4, 4)))), r"support_x must be \(n, C=1"),
    (lambda e, d: e._replace(query_x=d.asarray(np.ones((2, 1, 8, 8)))), "support and query images differ"),
    (lambda e, d: e._replace(support_y=d.asarray(np.array([0, 1, 3]))), r"support labels must be in 0..2"),
    (lambda e, d: e._replace(support_y=d.asarray(np.array([0, 1]))), r"support_y must be \(3,\)"),
    (lambda e, d: e._replace(query_y=d.asarray(np.array([0, 5, 1, 1]))), r"query labels must be in 0..2"),
])
def test_bad_episodes_raise_clear_errors(dev, change, message):
    params, episode, config = tiny(dev, np.random.default_rng(12))
    with pytest.raises(ValueError, match=message):
        metanet.episode_loss(params, change(episode, dev), config)


def test_memory_size_mismatch_and_bad_config_raise(dev):
    memory = dev.tree({"out.w": np.ones((3, 2, 2))})
    with pytest.raises(ValueError, match=r"memory 'out.w' holds 3 slots but the attention weights \(2, 4\)"):
        parts.read_memory(memory, dev.asarray(np.ones((2, 4)) / 4))
    params, episode, _ = tiny(dev, np.random.default_rng(13), n_way=3)
    with pytest.raises(ValueError, match="representation_chunks=2 must divide the 3 support"):
        metanet.episode_loss(params, episode, metanet.MetaNetConfig(representation_chunks=2))
    for bad in ({"preprocess_p": 0}, {"query_reduction": "max"}, {"representation_chunks": 0},
                {"grad_clip_norm": -1.0}, {"representation_loss": "contrastive"}):
        with pytest.raises(ValueError):
            metanet.MetaNetConfig(**bad)
    with pytest.raises(TypeError):
        metanet.MetaNetConfig(second_order="yes")


def test_agrees_with_an_independent_pytorch_implementation():
    """The benchmark's PyTorch step (written from the paper and the authors' code, a loop over
    support examples) gives the same gradient of L_train, to 1e-10 of its scale."""
    torch = pytest.importorskip("torch")
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "bench", Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch.set_default_dtype(torch.float64)
    config, params, data = bench.metanet_data(seed=5)
    ours = bench.refmeta_metanet(config, params, data)()
    names = sorted(ours)
    bench.check_same(ours, bench.torch_metanet(torch, config, params, data)(), names, "PyTorch")
    assert max(np.abs(ours[k]).max() for k in names if k.startswith("m.dense")) > 0
