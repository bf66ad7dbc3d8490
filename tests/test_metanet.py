"""Meta Networks: every equation of the module docstring, finite differences, identities, bad input."""

import dataclasses
import json
import sys

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad
from hypothesis import assume, given, strategies as st

from refmeta import contract, metanet
from refmeta.nn import layers, losses, optimizers, trees
from refmeta.nn import metanet_parts as parts

from helpers import check_grad_away_from_kinks

seeds = st.integers(0, 2**32 - 1)


def tiny(dev, rng, n_way=3, n_query=4, hidden=3, second_order=False, chunks=3, fast_conv_blocks=None,
         query_reduction="sum"):
    """Params of a 2-block, 4×4-image MetaNet and one n_way-way 1-shot episode, on ``dev``."""
    config = metanet.MetaNetConfig(n_way=n_way, hidden=hidden, n_blocks=2, second_order=second_order,
                                   representation_chunks=chunks, fast_conv_blocks=fast_conv_blocks,
                                   query_reduction=query_reduction)
    params = dev.tree(metanet.init(rng, config))
    support_y = rng.permutation(n_way)
    query_y = rng.integers(0, n_way, size=n_query)
    episode = contract.Episode(dev.asarray(rng.standard_normal((n_way, 1, 4, 4))), dev.asarray(support_y),
                               dev.asarray(rng.standard_normal((n_query, 1, 4, 4))), dev.asarray(query_y))
    return params, episode, config


def outputs(params, episode, config, meta_info=None):
    return metanet.episode_outputs(params, episode, config, meta_info=meta_info)


def host(dev, tree):
    return {k: dev.to_host(v) for k, v in tree.items()}


# ----- gradients of the full training loss -----
@pytest.mark.equation("metanet", "(11)")
@given(seed=seeds, n_way=st.sampled_from([2, 3]), chunks=st.sampled_from([1, 5]),
       fast_conv_blocks=st.sampled_from([None, 0, 1]), reduction=st.sampled_from(["sum", "mean"]))
def test_second_order_gradient_matches_finite_differences(dev, seed, n_way, chunks, fast_conv_blocks,
                                                          reduction):
    """∇_θ L_train, differentiating through the gradients (3), (10) and pre(·)."""
    rng = np.random.default_rng(seed)
    params, episode, config = tiny(dev, rng, n_way, second_order=True, chunks=chunks,
                                   fast_conv_blocks=fast_conv_blocks, query_reduction=reduction)
    loss = lambda p: metanet.loss(p, episode, config)
    assume(check_grad_away_from_kinks(loss, params, rng) >= 1)


@given(seed=seeds, n_way=st.sampled_from([2, 3]), fast_conv_blocks=st.sampled_from([None, 0]))
def test_first_order_gradient_is_the_gradient_with_the_meta_information_held_fixed(
        dev, seed, n_way, fast_conv_blocks):
    """second_order=False: the gradient of L_train(θ; ∇ frozen at θ₀), checked by differences."""
    rng = np.random.default_rng(seed)
    params, episode, config = tiny(dev, rng, n_way, fast_conv_blocks=fast_conv_blocks)
    frozen = metanet.meta_information(params, episode.support_x, episode.support_y, config)
    loss_frozen = lambda p: metanet.loss(p, episode, config, meta_info=frozen)
    first_order = grad(lambda p: metanet.loss(p, episode, config))
    assume(check_grad_away_from_kinks(loss_frozen, params, rng, grad_fn=first_order) >= 1)


def test_first_and_second_order_differ_only_through_the_gradients(dev):
    rng = np.random.default_rng(3)
    params, episode, config = tiny(dev, rng)
    second = dataclasses.replace(config, second_order=True)
    g1, g2 = (host(dev, grad(metanet.loss)(params, episode, c)) for c in (config, second))
    # the same arithmetic on the same inputs: second_order changes only what the gradient sees
    assert metanet.loss(params, episode, config) == metanet.loss(params, episode, second)
    assert any(np.max(np.abs(g1[k] - g2[k])) > 1e-6 for k in g1)  # the extra path is not empty


# ----- the meta information: per-example gradients and pre(·) -----
@pytest.mark.equation("metanet", "(9)", "(10)")
def test_group_gradients_equal_one_gradient_per_example(dev):
    """(10) vectorised by weight copies equals N separate gradients."""
    rng = np.random.default_rng(0)
    params, episode, config = tiny(dev, rng, n_way=3)
    base = trees.subtree(params, "base")
    names = metanet.fast_layers(base, config, True)
    grads = parts.group_gradients(base, names, episode.support_x[:, None], episode.support_y[:, None],
                                  False)
    for i in range(3):
        def loss_i(weights, i=i):
            logits = parts.base_logits({**base, **weights}, episode.support_x[i:i + 1])
            return losses.cross_entropy(logits, episode.support_y[i:i + 1])
        one = grad(loss_i)({k: base[k] for k in names})
        for k in names:
            np.testing.assert_allclose(dev.to_host(grads[k][i]), dev.to_host(one[k]), rtol=1e-12, atol=1e-15)


@pytest.mark.equation("metanet", "(2)", "(3)")
def test_task_gradients_are_chunk_mean_losses_in_support_order(dev):
    """(3): T chunks of N/T consecutive support examples, mean cross-entropy of u's slow head."""
    rng = np.random.default_rng(1)
    params, episode, config = tiny(dev, rng, n_way=4, chunks=2)
    info = metanet.meta_information(params, episode.support_x, episode.support_y, config)
    rep = trees.subtree(params, "rep")
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


@pytest.mark.equation("metanet_parts", "(P)")
def test_preprocess_is_andrychowiczs_piecewise_definition(dev):
    p = 7.0
    g = np.array([0.0, 1e-9, -5e-4, np.exp(-p), -np.exp(-p) * 1.0001, 0.3, -2.0, 50.0])
    expected = np.array([[np.log(abs(v)) / p, np.sign(v)] if abs(v) >= np.exp(-p) else [-1.0, np.exp(p) * v]
                         for v in g])
    got = dev.to_host(parts.preprocess(dev.asarray(g), p))
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-15)
    assert got.shape == (8, 2)


@pytest.mark.equation("metanet", "(1)")
@pytest.mark.equation("metanet_parts", "(M)")
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


@pytest.mark.equation("metanet", "(4)")
@pytest.mark.equation("metanet_parts", "(D)")
def test_task_generator_is_a_coordinatewise_lstm(dev):
    """(4): d runs an LSTM (gates a, i, f, o in contiguous blocks) over the T gradients, per coordinate."""
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


@pytest.mark.equation("metanet_parts", "(D)")
def test_chainer_lstm_weights_load_by_the_documented_gate_permutation(dev):
    """Chainer's F.lstm reads gate j mod 4 of unit j // 4 from an interleaved (4H,) row; with
    perm[k·H + u] = 4u + k, wx = upward.W[perm].T etc. give refmeta's contiguous blocks."""
    rng, hidden = np.random.default_rng(13), parts.HIDDEN_D
    upward_w, lateral_w = rng.standard_normal((4 * hidden, 2)), rng.standard_normal((4 * hidden, hidden)) / 4
    upward_b, out_w, out_b = rng.standard_normal(4 * hidden), rng.standard_normal((hidden, 1)), rng.standard_normal(1)
    infos = rng.uniform(-1, 1, size=(3, 4, 2))                 # T = 3 steps, 4 coordinates
    sigmoid = lambda z: 1 / (1 + np.exp(-z))
    state = cell = None
    for info in infos:                                         # chainer.links.LSTM, step by step
        z = info @ upward_w.T + upward_b + (0 if state is None else state @ lateral_w.T)
        a, i, f, o = (z.reshape(len(z), hidden, 4)[:, :, k] for k in range(4))   # chainer's _extract_gates
        cell = np.tanh(a) * sigmoid(i) + (0 if cell is None else sigmoid(f) * cell)
        state = sigmoid(o) * np.tanh(cell)
    perm = np.arange(4 * hidden).reshape(hidden, 4).T.ravel()
    loaded = {"d.conv.wx": upward_w[perm].T, "d.conv.wh": lateral_w[perm].T, "d.conv.b": upward_b[perm],
              "d.conv.out.w": out_w, "d.conv.out.b": out_b}
    got = parts.task_generator(dev.tree(loaded), "conv", dev.asarray(infos))
    np.testing.assert_allclose(dev.to_host(got), (state @ out_w + out_b)[:, 0], rtol=1e-12)


# ----- memory, attention, layer augmentation -----
@pytest.mark.equation("metanet", "(8)")
def test_one_hot_attention_reads_exactly_the_stored_fast_weights(dev):
    rng = np.random.default_rng(4)
    memory = {"conv0.w": rng.standard_normal((4, 3, 2, 3, 3)), "out.w": rng.standard_normal((4, 3, 5))}
    slots = np.array([2, 0, 3, 3, 1])
    read = parts.read_memory(dev.tree(memory), dev.asarray(np.eye(4)[slots]))
    for name in memory:   # exact in any summation order: 1·M_j plus terms that are ±0
        np.testing.assert_array_equal(dev.to_host(read[name]), memory[name][slots])


@pytest.mark.equation("metanet", "(7)")
def test_attention_is_the_cosine_and_its_softmax_rows_sum_to_one(dev):
    rng = np.random.default_rng(5)
    keys, queries = rng.standard_normal((4, 6)), rng.standard_normal((3, 6))
    a = dev.to_host(parts.cosine_attention(dev.asarray(keys), dev.asarray(queries), eps=0.0))
    cos = (queries @ keys.T) / np.outer(np.linalg.norm(queries, axis=1), np.linalg.norm(keys, axis=1))
    np.testing.assert_allclose(a, cos, rtol=1e-13)
    weights = dev.to_host(parts.softmax(dev.asarray(a)))
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-15)
    np.testing.assert_allclose(weights, np.exp(cos) / np.exp(cos).sum(axis=1, keepdims=True), rtol=1e-13)


@pytest.mark.equation("metanet_parts", "(B)", "(F)", "(L)")
def test_with_fast_weights_zero_the_learners_are_their_slow_networks(dev):
    rng = np.random.default_rng(6)
    net = dev.tree(parts.learner_init(rng, hidden=3, n_blocks=2, n_out=4))
    x = dev.asarray(rng.standard_normal((5, 1, 4, 4)))
    zeros = {k: anp.zeros_like(anp.broadcast_to(v[None], (5,) + v.shape)) for k, v in net.items()}
    # Two computation paths: a per-example (batched-weight) conv against one shared-kernel matrix
    # product, whose BLAS blocking, hence rounding, differs by CPU; equal to a few ulps.
    np.testing.assert_allclose(dev.to_host(parts.base_logits(net, x[:, None], zeros))[:, 0],
                               dev.to_host(parts.base_logits(net, x)), rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(dev.to_host(parts.representation(net, x[:, None], zeros))[:, 0],
                               dev.to_host(parts.representation(net, x)), rtol=1e-13, atol=1e-16)


@pytest.mark.equation("metanet_parts", "(F)", "(L)")
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


@pytest.mark.equation("metanet", "(1)", "(4)", "(5)", "(7)", "(8)", "(11)")
def test_episode_outputs_compose_the_equations(dev):
    """(4), (1), (5), (7), (8), (11) recomputed step by step from the parts."""
    rng = np.random.default_rng(8)
    params, episode, config = tiny(dev, rng, n_way=3, n_query=5)
    out = outputs(params, episode, config)
    q_star = metanet.task_fast_weights(params, out["meta_info"]["task"], config)
    memory = metanet.example_fast_weights(params, out["meta_info"]["example"], config)
    rep, base = trees.subtree(params, "rep"), trees.subtree(params, "base")
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


@pytest.mark.equation("metanet", "(11)")
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
    wide = dev.tree(metanet.init(np.random.default_rng(10), dataclasses.replace(config, n_way=5)))
    narrow = metanet.with_n_way(wide, 3)
    assert narrow["base.out.w"].shape == (3, 3) and narrow["rep.out.w"].shape == (3, 3)
    np.testing.assert_array_equal(dev.to_host(narrow["base.out.w"]), dev.to_host(wide["base.out.w"])[:, :3])
    assert outputs(narrow, episode, config)["logits"].shape == (4, 3)


# ----- (B), (2), (9) and (5) written out in plain loops -----
def conv3x3(x, w):
    """Cross-correlation with zero padding 1, as by hand: x (C, H, W), w (F, C, 3, 3) -> (F, H, W)."""
    channels, height, width = x.shape
    out = np.zeros((w.shape[0], height, width))
    for f, i, j in np.ndindex(out.shape):
        for c, a, b in np.ndindex(channels, 3, 3):
            if 0 <= i + a - 1 < height and 0 <= j + b - 1 < width:
                out[f, i, j] += w[f, c, a, b] * x[c, i + a - 1, j + b - 1]
    return out


def max_pool(x, rounding):
    """2×2 windows at stride 2, x (F, H, W): "floor" drops an odd last row or column, "ceil" gives
    it a window of its own."""
    size = (lambda s: s // 2) if rounding == "floor" else (lambda s: -(-s // 2))
    out = np.zeros((x.shape[0], size(x.shape[1]), size(x.shape[2])))
    for f, i, j in np.ndindex(out.shape):
        out[f, i, j] = max(x[f, r, c] for r in (2 * i, 2 * i + 1) for c in (2 * j, 2 * j + 1)
                           if r < x.shape[1] and c < x.shape[2])
    return out


def conv_blocks(net, image, fast, rounding="floor"):
    """(B) on one image (C, H, W), block after block: h ← pool(φ(conv(h, W)) + φ(conv(h, W*))), the
    W* term only where ``fast`` holds the block; the 1×1 maps -> (F,)."""
    h, i = image, 0
    while f"conv{i}.w" in net:
        out = np.maximum(conv3x3(h, net[f"conv{i}.w"]), 0)
        if f"conv{i}.w" in fast:
            out = out + np.maximum(conv3x3(h, fast[f"conv{i}.w"]), 0)
        h, i = max_pool(out, rounding), i + 1
    return h.reshape(-1)


def subnet(dev, params, prefix):
    return {k[len(prefix) + 1:]: dev.to_host(v) for k, v in params.items() if k.startswith(prefix + ".")}


@pytest.mark.equation("metanet_parts", "(B)")
@pytest.mark.parametrize("rounding, side", [("floor", 5), ("ceil", 3)])
def test_the_conv_blocks_are_formula_b_written_out(dev, rounding, side):
    """(B) in loops, on small integers, where every sum is exact whatever its order (hence rtol
    1e-15 between the two paths): one block checked by hand, then two blocks of two filters on
    two channels, with fast weights shared by the images, one set per image (the read W*_i), and
    on the top block only."""
    x = np.array([[[1.0, 2.0], [3.0, 4.0]]])                  # (C, H, W) = (1, 2, 2)
    w, w_fast = np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 3, 3))
    w[0, 0, 1, 1], w[0, 0, 2, 2], w_fast[0, 0, 0, 0] = 1.0, -1.0, 2.0
    # conv(x, W)_ij = x_ij − x_{i+1,j+1} = [[1 − 4, 2], [3, 4]], φ: [[0, 2], [3, 4]];
    # conv(x, W*)_ij = 2 x_{i−1,j−1} = [[0, 0], [0, 2]]; their sum [[0, 2], [3, 6]] pools to 6
    by_hand = parts.features(dev.tree({"conv0.w": w}), dev.asarray(x[None]), dev.tree({"conv0.w": w_fast}),
                             rounding)
    assert dev.to_host(by_hand).tolist() == [[6.0]] == [conv_blocks({"conv0.w": w}, x, {"conv0.w": w_fast},
                                                                   rounding).tolist()]
    rng = np.random.default_rng(16)
    net = {k: rng.integers(-2, 3, v.shape).astype(float)
           for k, v in parts.learner_init(rng, in_channels=2, hidden=2, n_blocks=2, n_out=3).items()}
    images = rng.integers(-3, 4, (4, 2, side, side)).astype(float)            # side → 2 → 1
    shared = {k: rng.integers(-2, 3, net[k].shape).astype(float) for k in ("conv0.w", "conv1.w")}
    per_image = {k: rng.integers(-2, 3, (4,) + v.shape).astype(float) for k, v in shared.items()}
    for fast, x, lead in ((shared, images, ()), ({"conv1.w": shared["conv1.w"]}, images, ()),
                          (per_image, images[:, None], (0,))):
        expected = [conv_blocks(net, image, {k: v[n] if lead else v for k, v in fast.items()}, rounding)
                    for n, image in enumerate(images)]
        got = dev.to_host(parts.features(dev.tree(net), dev.asarray(x), dev.tree(fast), rounding))
        np.testing.assert_allclose(got[:, 0] if lead else got, expected, rtol=1e-15, atol=0)


@pytest.mark.equation("metanet", "(2)", "(9)")
def test_the_slow_losses_are_formulas_2_and_9_written_out(dev):
    """(2): L_t, u's slow head φ(f Q_fc1) Q_out under the mean cross-entropy on chunk t of the
    support set; (9): L_i, b's on support example i; in loops, against the losses whose
    gradients are (3) and (10), at rtol 1e-13."""
    rng = np.random.default_rng(18)
    params, episode, config = tiny(dev, rng, n_way=4, chunks=2)
    support_x, support_y = dev.to_host(episode.support_x), dev.to_host(episode.support_y)

    def mean_cross_entropy(net, images, labels):
        total = 0.0
        for image, label in zip(images, labels):
            logits = np.maximum(conv_blocks(net, image, {}) @ net["fc1.w"], 0) @ net["out.w"]
            total += np.log(np.sum(np.exp(logits))) - logits[label]
        return total / len(labels)
    for prefix, groups in (("rep", 2), ("base", 4)):          # T = 2 chunks of 2; N = 4 examples
        net = subnet(dev, params, prefix)
        x, y = support_x.reshape((groups, -1) + support_x.shape[1:]), support_y.reshape(groups, -1)
        got = parts.group_losses(dev.tree(net), dev.asarray(x), dev.asarray(y))
        np.testing.assert_allclose(dev.to_host(got), [mean_cross_entropy(net, x[g], y[g]) for g in range(groups)],
                                   rtol=1e-13)


@pytest.mark.equation("metanet", "(5)")
@pytest.mark.equation("metanet_parts", "(B)", "(F)")
def test_the_representations_are_formula_5_written_out(dev):
    """(5): R_i = u(Q, Q*, x'_i), each augmented block (here the top one) φ(conv(h, Q)) +
    φ(conv(h, Q*)), then fc1 taken linearly, h Q_fc1 + h Q*_fc1; in loops with the Q* the
    episode made (4), for the support set and the queries' r_i alike, at rtol 1e-12."""
    rng = np.random.default_rng(17)
    params, episode, config = tiny(dev, rng, n_way=3, n_query=2, fast_conv_blocks=1)
    out = outputs(params, episode, config)
    rep, q_star = subnet(dev, params, "rep"), host(dev, out["task_fast_weights"])
    assert sorted(q_star) == ["conv1.w", "fc1.w"]
    for name, images in (("support_representations", episode.support_x),
                         ("query_representations", episode.query_x)):
        features = [conv_blocks(rep, image, q_star) for image in dev.to_host(images)]
        expected = [h @ rep["fc1.w"] + h @ q_star["fc1.w"] for h in features]
        np.testing.assert_allclose(dev.to_host(out[name]), expected, rtol=1e-12)


# ----- training -----
def test_step_fits_one_episode(dev):
    """Adam on L_train drives the loss of a fixed episode (queries = the support images) to ~0."""
    rng = np.random.default_rng(11)
    params, episode, config = tiny(dev, rng, n_way=3)
    episode = episode._replace(query_x=episode.support_x, query_y=episode.support_y)
    config = dataclasses.replace(config, meta_lr=0.01)
    state, first = metanet.init_state(params, config), float(metanet.loss(params, episode, config))
    for _ in range(40):
        params, state, loss = metanet.step(params, state, episode, config)
    assert float(metanet.loss(params, episode, config)) < 0.01 * first


def test_step_is_adam_on_the_clipped_gradient_and_returns_the_starting_loss(dev):
    """Algorithm 1, line 22 with Chainer's GradientClipping: θ ← Adam(θ, clip(∇L_train), meta_lr)."""
    params, episode, config = tiny(dev, np.random.default_rng(14), n_way=3)
    config = dataclasses.replace(config, grad_clip_norm=1e-3, meta_lr=0.05)
    state = metanet.init_state(params, config)
    result = metanet.step(params, state, episode, config)
    assert isinstance(result, contract.Step)
    gradient = grad(metanet.loss)(params, episode, config)
    assert np.sqrt(float(trees.vdot(gradient, gradient))) > 1e-3          # the clip is active
    clipped = optimizers.clip_by_global_norm(gradient, 1e-3)
    expected, expected_state = optimizers.adam_update(params, clipped, state.optimizer, lr=0.05)
    # grad vs value_and_grad with and without the door's checks: the same arithmetic, but held to
    # a tight tolerance rather than bits, as two call paths
    for k in params:
        np.testing.assert_allclose(dev.to_host(result.params[k]), dev.to_host(expected[k]), rtol=1e-13,
                                   atol=1e-16)
    assert result.state.optimizer.step == expected_state.step == 1 and result.state.bn == {}
    np.testing.assert_allclose(float(result.loss), float(metanet.loss(params, episode, config)), rtol=1e-13)
    g = dev.tree({"a": np.array([3.0, 4.0]), "b": np.array([12.0])})
    np.testing.assert_allclose(dev.to_host(optimizers.clip_by_global_norm(g, 6.5)["a"]), [1.5, 2.0],
                               rtol=1e-15)
    assert optimizers.clip_by_global_norm(g, 20.0) is g and optimizers.clip_by_global_norm(g, None) is g


def test_fast_layers_are_the_top_conv_blocks_then_fc1_and_out():
    net = {f"conv{i}.w": None for i in range(4)} | {"fc1.w": None, "out.w": None}
    layers_for = lambda k: metanet.fast_layers(net, metanet.MetaNetConfig(n_blocks=4, fast_conv_blocks=k), True)
    assert layers_for(0) == ("fc1.w", "out.w") and layers_for(1) == ("conv3.w", "fc1.w", "out.w")
    assert layers_for(None) == layers_for(4) == tuple(net)


def test_config_records_every_convention_and_size_as_json():
    config = metanet.MetaNetConfig(n_way=20, hidden=32)
    assert json.loads(json.dumps(config.conventions())) == config.conventions()
    assert config.conventions()["preprocess_p"] == 7.0 and config.conventions()["second_order"] is False
    assert {k: config.conventions()[k] for k in ("n_way", "in_channels", "hidden", "n_blocks",
                                                 "pool_rounding")} == \
        {"n_way": 20, "in_channels": 1, "hidden": 32, "n_blocks": 4, "pool_rounding": "floor"}
    assert metanet.MetaNetConfig(n_blocks=5, pool_rounding="ceil").conventions()["pool_rounding"] == "ceil"


def test_init_makes_the_shapes_the_config_names():
    config = metanet.MetaNetConfig(n_way=7, in_channels=2, hidden=5, n_blocks=3, fast_init_scale=0.0)
    params = metanet.init(np.random.default_rng(0), config)
    assert params["base.conv0.w"].shape == (5, 2, 3, 3) and params["rep.conv2.w"].shape == (5, 5, 3, 3)
    assert params["base.out.w"].shape == params["rep.out.w"].shape == (5, 7) and "base.conv3.w" not in params
    assert not params["m.conv.l2.w"].any() and not params["d.dense.out.w"].any()   # × fast_init_scale 0
    assert all(v.dtype == np.float64 and isinstance(v, np.ndarray) for v in params.values())


# ----- the authors' learner: 5 blocks of ceil-mode pools on 28×28 -----
def authors(rng, second_order=False, side=28, hidden=2, n_way=2, n_query=2):
    """A 2-way MetaNetFull at its depth and pooling (28 → 14 → 7 → 4 → 2 → 1), tiny widths."""
    config = metanet.MetaNetConfig(n_way=n_way, hidden=hidden, n_blocks=5, pool_rounding="ceil",
                                   representation_chunks=n_way, second_order=second_order)
    episode = contract.Episode(rng.standard_normal((n_way, 1, side, side)), rng.permutation(n_way),
                               rng.standard_normal((n_query, 1, side, side)), rng.integers(0, n_way, n_query))
    return metanet.init(rng, config), episode, config


def test_the_authors_five_ceil_blocks_take_28_to_1_and_train(dev):
    rng = np.random.default_rng(15)
    params, episode, config = authors(rng)
    params, episode = dev.tree(params), contract.Episode(*(dev.asarray(a) for a in episode))
    shapes, h = [], episode.support_x                  # the pools' outputs, block by block
    for i in range(5):
        h = layers.max_pool_2x2(layers.relu(layers.conv2d(h, params[f"base.conv{i}.w"])), "ceil")
        shapes.append(anp.shape(h)[-1])
    assert shapes == [14, 7, 4, 2, 1]
    assert outputs(params, episode, config)["logits"].shape == (2, 2)
    state, first = metanet.init_state(params, config), float(metanet.loss(params, episode, config))
    result = metanet.step(params, state, episode, config)
    assert float(result.loss) == pytest.approx(first, rel=1e-13)      # the loss at the params given
    assert result.state.optimizer.step == 1 and set(result.params) == set(params)
    for n_blocks, rounding, sides in ((5, "floor", "32..63"), (4, "ceil", "9..16")):   # 28 fits neither
        other = dataclasses.replace(config, n_blocks=n_blocks, pool_rounding=rounding)
        with pytest.raises(ValueError, match=rf"H and W in {sides} to end at 1×1 after n_blocks={n_blocks} "
                                             rf"2×2 max-pools \({rounding}\); got support_x \(2, 1, 28, 28\)"):
            metanet.loss(dev.tree(metanet.init(rng, other)), episode, other)


@pytest.mark.equation("metanet_parts", "(B)")
@pytest.mark.parametrize("second_order", [False, True])
@pytest.mark.parametrize("side", [28, 17])
def test_the_authors_network_gradient_matches_finite_differences(side, second_order):
    """∇_θ L_train through 5 ceil blocks, first and second order: 28 has one odd edge (7 → 4), 17
    one at every pool but the last (17 → 9 → 5 → 3 → 2 → 1).  Directions with a ReLU or pool kink
    within reach of the differences are skipped (about one in five here); at least one is checked."""
    rng = np.random.default_rng(3)
    params, episode, config = authors(rng, second_order=second_order, side=side)
    # first order: the derivative of L_train with the meta information frozen at params
    frozen = None if second_order else metanet.meta_information(params, episode.support_x,
                                                                 episode.support_y, config)
    loss = lambda p: metanet.loss(p, episode, config, meta_info=frozen)
    first_order = grad(lambda p: metanet.loss(p, episode, config))
    assert check_grad_away_from_kinks(loss, params, rng, n_directions=2, grad_fn=first_order) >= 1


@pytest.mark.parametrize("rounding", ["floor", "ceil"])
@pytest.mark.parametrize("n_blocks", [1, 2, 3, 5])
def test_image_sides_are_exactly_the_sides_the_pools_take_to_1(n_blocks, rounding):
    halve = (lambda s: s // 2) if rounding == "floor" else (lambda s: -(-s // 2))

    def ends_at_one(side):
        for _ in range(n_blocks):
            if side < 2:                                   # the last pool must read 2 pixels or more
                return False
            side = halve(side)
        return side == 1
    low, high = parts.image_sides(n_blocks, rounding)
    assert [s for s in range(1, 80) if ends_at_one(s)] == list(range(low, high + 1))


def test_floor_and_ceil_pools_agree_on_power_of_two_images(dev):
    """8 → 4 → 2 → 1 has no odd edge: the two roundings run the same arithmetic."""
    rng = np.random.default_rng(16)
    config = metanet.MetaNetConfig(n_way=3, hidden=3, n_blocks=3, representation_chunks=3)
    params = dev.tree(metanet.init(rng, config))
    episode = contract.Episode(*(dev.asarray(a) for a in (rng.standard_normal((3, 1, 8, 8)), np.arange(3),
                                                          rng.standard_normal((4, 1, 8, 8)), np.arange(4) % 3)))
    ceil = dataclasses.replace(config, pool_rounding="ceil")
    np.testing.assert_array_equal(dev.to_host(metanet.predict(params, episode, config)),
                                  dev.to_host(metanet.predict(params, episode, ceil)))


def test_describe_names_the_pools_rounding():
    then = lambda rounding: parts.describe(1, 2, 5, 2, (), (), rounding)["layers"][0]["then"]
    assert then("floor").endswith("odd edge dropped") and "ceil mode" in then("ceil")


# ----- bad input -----
ENTRIES = ("loss", "predict", "episode_outputs", "step")


def call(entry, dev, episode=lambda e: e, params=lambda p: p, config=lambda c: c, **entry_kwargs):
    """Run one public entry on tiny()'s 3-way episode as changed by ``episode``, ``params`` and
    ``config`` (step gets a valid Adam state)."""
    good, ep, cfg = tiny(dev, np.random.default_rng(12))
    if entry == "step":
        return metanet.step(params(good), contract.State(optimizers.adam_init(good), {}), episode(ep),
                            config(cfg))
    return getattr(metanet, entry)(params(good), episode(ep), config(cfg), **entry_kwargs)


def poke(dev, x, value):
    """A copy of device array x with its first entry set to value."""
    host = np.array(dev.to_host(x))
    host.reshape(-1)[0] = value
    return dev.asarray(host)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("which, value", [("support_x", np.nan), ("query_x", np.nan), ("query_x", np.inf)])
def test_nan_or_inf_in_the_images_is_refused_naming_the_array(dev, entry, which, value):
    with pytest.raises(ValueError, match=f"{which} contains NaN or inf"):
        call(entry, dev, episode=lambda e: e._replace(**{which: poke(dev, getattr(e, which), value)}))


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("value", [np.nan, -np.inf])
def test_nan_or_inf_in_the_params_is_refused_naming_the_leaf(dev, entry, value):
    with pytest.raises(ValueError, match=r"params\['d.conv.wx'\] contains NaN or inf"):
        call(entry, dev, params=lambda p: {**p, "d.conv.wx": poke(dev, p["d.conv.wx"], value)})


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("which, labels", [("support_y", [0, 1, 3]), ("query_y", [0, 5, 1, 1]),
                                           ("query_y", [-1, 0, 1, 2])])
def test_labels_outside_0_to_n_way_minus_1_are_refused(dev, entry, which, labels):
    with pytest.raises(ValueError, match=rf"{which}: labels must be in 0..2 \(n_way=3\)"):
        call(entry, dev, episode=lambda e: e._replace(**{which: dev.asarray(np.array(labels))}))


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("which", ["support_y", "query_y"])
def test_non_integer_labels_are_refused(dev, entry, which):
    with pytest.raises(TypeError, match=f"{which}: class labels must be integers"):
        call(entry, dev, episode=lambda e: e._replace(**{which: dev.asarray(dev.to_host(getattr(e, which)) * 1.0)}))


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_support_set_missing_a_class_is_refused(dev, entry):
    with pytest.raises(ValueError, match=r"every class 0..2 needs at least one example; classes \[2\]"):
        call(entry, dev, episode=lambda e: e._replace(support_y=dev.asarray(np.array([0, 1, 1]))))


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("which", ["support", "query"])
def test_an_empty_support_or_query_set_is_refused(dev, entry, which):
    empty = {f"{which}_x": dev.asarray(np.zeros((0, 1, 4, 4))), f"{which}_y": dev.asarray(np.zeros(0, int))}
    with pytest.raises(ValueError, match=f"the {which} set is empty"):
        call(entry, dev, episode=lambda e: e._replace(**empty))


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_query_set_with_a_task_axis_is_refused(dev, entry):
    with pytest.raises(ValueError, match="support and query disagree"):
        call(entry, dev, episode=lambda e: e._replace(query_x=e.query_x[None], query_y=e.query_y[None]))


def test_a_meta_batch_is_its_tasks_one_after_another(dev):
    """A task axis: predict stacks each task's logits, loss is the mean of the tasks' losses, and
    meta_info takes the task axis too; episode_outputs takes one task, and two task axes no one."""
    params, ep, config = tiny(dev, np.random.default_rng(12))
    other = contract.Episode(ep.support_x[::-1], ep.support_y[::-1], ep.query_x[::-1], ep.query_y[::-1])
    batch = contract.Episode(*(anp.stack([a, b]) for a, b in zip(ep, other)))
    logits = dev.to_host(metanet.predict(params, batch, config))
    for t, task in enumerate((ep, other)):
        np.testing.assert_allclose(logits[t], dev.to_host(metanet.predict(params, task, config)), rtol=1e-13)
    np.testing.assert_allclose(float(metanet.loss(params, batch, config)), np.mean(
        [float(metanet.loss(params, task, config)) for task in (ep, other)]), rtol=1e-13)
    infos = [metanet.meta_information(params, task.support_x, task.support_y, config) for task in (ep, other)]
    stacked = {level: {k: anp.stack([info[level][k] for info in infos]) for k in infos[0][level]}
               for level in infos[0]}
    np.testing.assert_allclose(dev.to_host(metanet.predict(params, batch, config, meta_info=stacked)),
                               logits, rtol=1e-13)
    with pytest.raises(ValueError, match=r"expected one task, support_x \(n, ...\); got support_x \(2, 3,"):
        metanet.episode_outputs(params, batch, config)
    two_axes = contract.Episode(*(a[None] for a in batch))
    for entry in ("loss", "predict", "step"):
        with pytest.raises(ValueError, match=r"or a meta-batch with one task axis, \(T, n, ...\); got"):
            call(entry, dev, episode=lambda e: two_axes)


@pytest.mark.parametrize("entry", ENTRIES)
def test_an_episode_of_another_type_is_refused(dev, entry):
    with pytest.raises(TypeError, match="expected an Episode"):
        call(entry, dev, episode=lambda e: list(e))


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 3, 3), (2, 4, 4), (4, 4)])
def test_images_the_conv_blocks_cannot_take_to_1x1_are_refused(dev, entry, shape):
    """Two 2×2 pools take 4..7 to 1; 8 would end at 2×2 and 3 at 0×0."""
    images = lambda x: dev.asarray(np.ones((anp.shape(x)[0],) + shape))
    with pytest.raises(ValueError, match=r"images must be \(C=1, H, W\), H and W in 4..7"):
        call(entry, dev, episode=lambda e: e._replace(support_x=images(e.support_x), query_x=images(e.query_x)))


@pytest.mark.parametrize("entry", ENTRIES)
def test_representation_chunks_that_do_not_divide_the_support_set_are_refused(dev, entry):
    with pytest.raises(ValueError, match="representation_chunks=2 must divide the 3 support examples"):
        call(entry, dev, config=lambda c: dataclasses.replace(c, representation_chunks=2))


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("change, message", [
    (lambda p: {}, "params is empty"),
    (lambda p: {k: v for k, v in p.items() if k != "d.conv.b"}, r"missing \['d.conv.b'\], unexpected \[\]"),
    (lambda p: {**p, "base.fc1.b": p["d.conv.b"]}, r"missing \[\], unexpected \['base.fc1.b'\]"),
    (lambda p: {**p, "rep.fc1.w": p["rep.fc1.w"][:2]}, r"params\['rep.fc1.w'\] must have shape \(3, 3\); got \(2, 3\)"),
])
def test_a_params_tree_that_is_not_inits_is_refused_naming_the_key(dev, entry, change, message):
    with pytest.raises(ValueError, match=message):
        call(entry, dev, params=change)


@pytest.mark.parametrize("entry", ENTRIES)
def test_params_of_a_different_n_way_are_refused(dev, entry):
    wide = dev.tree(metanet.init(np.random.default_rng(0), metanet.MetaNetConfig(n_way=5, hidden=3, n_blocks=2)))
    with pytest.raises(ValueError, match=r"params\['base.out.w'\] must have shape \(3, 3\); got \(3, 5\)"):
        call(entry, dev, params=lambda p: wide)


@pytest.mark.parametrize("entry", ["loss", "predict", "episode_outputs"])
def test_meta_information_of_the_wrong_shape_is_refused(dev, entry):
    params, episode, config = tiny(dev, np.random.default_rng(12))
    other = metanet.meta_information(params, episode.support_x, episode.support_y,
                                     dataclasses.replace(config, representation_chunks=1))   # T = 1, not 3
    with pytest.raises(ValueError, match=r"meta_info\['task'\]\['conv0.w'\] must have shape \(3, 3, 1, 3, 3\)"):
        call(entry, dev, meta_info=other)
    with pytest.raises(TypeError, match=r"meta_info\['task'\] must be a dict of arrays"):
        call(entry, dev, meta_info={"example": other["example"]})
    with pytest.raises(TypeError, match="meta_info must be a dict"):
        call(entry, dev, meta_info=[other])


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_config_of_another_type_is_refused(dev, entry):
    with pytest.raises(TypeError, match="config must be a MetaNetConfig; got dict"):
        call(entry, dev, config=lambda c: c.conventions())


def test_step_refuses_a_state_that_is_not_adams_for_these_params(dev):
    params, episode, config = tiny(dev, np.random.default_rng(12))
    with pytest.raises(TypeError, match=r"state must be a State; got NoneType"):
        metanet.step(params, None, episode, config)
    with pytest.raises(TypeError, match=r"state.optimizer must be Adam's state \(step, m, v\)"):
        metanet.step(params, contract.State(None, {}), episode, config)
    other = optimizers.adam_init({k: v for k, v in params.items() if k != "d.conv.b"})
    with pytest.raises(ValueError, match=r"state.optimizer.m do not match the model: missing \['d.conv.b'\]"):
        metanet.step(params, contract.State(other, {}), episode, config)


def test_init_and_init_state_refuse_a_bad_rng_config_or_params(dev):
    params, _, config = tiny(dev, np.random.default_rng(12))
    with pytest.raises(TypeError, match="rng must be a Generator"):
        metanet.init(np.random.RandomState(0), config)
    with pytest.raises(TypeError, match="config must be a MetaNetConfig"):
        metanet.init(np.random.default_rng(0), {"n_way": 3})
    with pytest.raises(TypeError, match="config must be a MetaNetConfig"):
        metanet.init_state(params, None)
    with pytest.raises(ValueError, match="params is empty"):
        metanet.init_state({}, config)
    with pytest.raises(ValueError, match=r"params\['m.conv.l0.b'\] contains NaN or inf"):
        metanet.init_state({**params, "m.conv.l0.b": poke(dev, params["m.conv.l0.b"], np.nan)}, config)


@pytest.mark.parametrize("n_way, error, message", [
    (4, ValueError, r"n_way must be an integer in 2..3; got 4"),
    (1, ValueError, r"n_way must be an integer in 2..3; got 1"),
    (2.0, TypeError, r"n_way must be an integer in 2..3; got 2.0"),
])
def test_with_n_way_refuses_more_output_units_than_there_are(dev, n_way, error, message):
    params, _, _ = tiny(dev, np.random.default_rng(12))
    with pytest.raises(error, match=message):
        metanet.with_n_way(params, n_way)


def test_with_n_way_refuses_params_without_both_output_layers(dev):
    params, _, _ = tiny(dev, np.random.default_rng(12))
    with pytest.raises(ValueError, match=r"params\['rep.out.w'\] must be metanet.init's output layer .* no such key"):
        metanet.with_n_way({k: v for k, v in params.items() if k != "rep.out.w"}, 2)
    with pytest.raises(ValueError, match=r"params\['base.out.w'\] must be .* got \(9,\)"):
        metanet.with_n_way({**params, "base.out.w": dev.asarray(np.ones(9))}, 2)
    with pytest.raises(TypeError, match="params must be a dict"):
        metanet.with_n_way(list(params.values()), 2)


@pytest.mark.parametrize("field, value", [("meta_lr", -1e-3), ("meta_lr", np.inf), ("preprocess_p", 0.0),
                                          ("attention_eps", 0.0), ("grad_clip_norm", 0.0),
                                          ("grad_clip_norm", -1.0), ("fast_init_scale", -0.1),
                                          ("representation_chunks", 0), ("fast_conv_blocks", -1),
                                          ("fast_conv_blocks", 5)])
def test_config_refuses_out_of_range_hyperparameters(field, value):
    with pytest.raises(ValueError, match=f"{field} must be"):
        metanet.MetaNetConfig(n_blocks=4, **{field: value})


@pytest.mark.parametrize("field, value, error", [("n_way", 1, ValueError), ("hidden", 0, ValueError),
                                                 ("n_blocks", -1, ValueError), ("in_channels", 0, ValueError),
                                                 ("in_channels", 2.5, TypeError), ("hidden", True, TypeError),
                                                 ("representation_chunks", 2.0, TypeError)])
def test_config_refuses_sizes_of_zero_negative_or_not_integer(field, value, error):
    with pytest.raises(error, match=f"{field} must be an integer"):
        metanet.MetaNetConfig(**{field: value})


@pytest.mark.parametrize("field, value", [("query_reduction", "max"), ("representation_loss", "contrastive"),
                                          ("pool_rounding", "round")])
def test_config_refuses_unknown_choice_names(field, value):
    with pytest.raises(ValueError, match=f"{field} must be one of"):
        metanet.MetaNetConfig(**{field: value})


@pytest.mark.parametrize("field, value", [("second_order", "yes"), ("second_order", 1), ("meta_lr", "0.1")])
def test_config_refuses_values_of_the_wrong_kind(field, value):
    with pytest.raises(TypeError, match=field):
        metanet.MetaNetConfig(**{field: value})

@pytest.mark.equation("metanet", "(1)", "(2)", "(3)", "(4)", "(5)", "(7)", "(8)", "(9)", "(10)", "(11)")
@pytest.mark.equation("metanet_parts", "(B)", "(F)", "(L)", "(P)", "(M)", "(D)")
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
    check_same = sys.modules["bench_compare"].check_same           # bench.py put benchmarks/ on sys.path
    check_same(ours, bench.torch_metanet(torch, config, params, data)(), names, "PyTorch")
    assert max(np.abs(ours[k]).max() for k in names if k.startswith("m.dense")) > 0
