"""SNAIL: naive-loop references, causality as a property, the masked softmax, channel counts,
finite differences through every block and the whole model, bad input, and a PyTorch port."""

import dataclasses
import math

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad
from hypothesis import assume, given, strategies as st

from helpers import check_grad_away_from_kinks

from refmeta import gradcheck, snail
from refmeta.nn import optimizers
from refmeta.nn import snail_blocks as blocks
from refmeta.data.tasks import Episode

seeds = st.integers(0, 2**32 - 1)
TINY = snail.SNAILConfig(n_way=3, k_shot=1, blocks=(("attention", 3, 2), ("tc", 2), ("attention", 2, 3)),
                         embedding_dim=4, embedding_filters=2, image_size=16, bn_eps=1e-3)


def host_tree(tree, scale=1.0):
    return {k: scale * np.asarray(v) for k, v in tree.items()}


def close(dev, actual, expected, rtol=1e-12, atol=1e-12):
    assert dev.is_array(actual), f"expected a {dev.name} array; got {type(actual).__name__}"
    np.testing.assert_allclose(dev.to_host(actual), expected, rtol=rtol, atol=atol)


# ----- independent references: loops over steps -----

def naive_causal_conv(x, w, b, dilation):
    """x (T, C_in), w (k, C_in, C_out): y_t = b + Σ_j x_{t-(k-1-j)R} W_j, x_{s<0} = 0."""
    kernel_size = w.shape[0]
    out = np.zeros((x.shape[0], w.shape[2]))
    for t in range(x.shape[0]):
        out[t] = b
        for j in range(kernel_size):
            s = t - (kernel_size - 1 - j) * dilation
            if s >= 0:
                out[t] += x[s] @ w[j]
    return out


def naive_attention(params, x):
    """x (T, C): each step's softmax over the keys s <= t, one row at a time."""
    q, k, v = (x @ params[f"{n}.w"] + params[f"{n}.b"] for n in ("query", "key", "value"))
    steps, probs = x.shape[0], np.zeros((x.shape[0], x.shape[0]))
    for t in range(steps):
        scores = np.array([q[t] @ k[s] for s in range(t + 1)]) / math.sqrt(k.shape[1])
        probs[t, :t + 1] = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    return np.concatenate([x, probs @ v], axis=1), probs


# ----- causal convolution -----

@given(seed=seeds, steps=st.integers(1, 9), c_in=st.integers(1, 4), c_out=st.integers(1, 4),
       kernel_size=st.integers(1, 3), dilation=st.integers(1, 10), leading=st.sampled_from([(), (2,), (2, 3)]))
def test_causal_conv_matches_naive_loop(dev, seed, steps, c_in, c_out, kernel_size, dilation, leading):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(leading + (steps, c_in))
    w, b = rng.standard_normal((kernel_size, c_in, c_out)), rng.standard_normal(c_out)
    out = blocks.causal_conv1d(dev.asarray(x), dev.asarray(w), dev.asarray(b), dilation)
    expected = np.stack([naive_causal_conv(seq, w, b, dilation) for seq in x.reshape(-1, steps, c_in)])
    close(dev, out, expected.reshape(leading + (steps, c_out)))


def test_causal_conv_with_task_batched_params_equals_per_task_loop(dev):
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((3, 5, 2)), rng.standard_normal((3, 2, 2, 4)), rng.standard_normal((3, 4))
    out = blocks.causal_conv1d(dev.asarray(x), dev.asarray(w), dev.asarray(b), 2)
    close(dev, out, np.stack([naive_causal_conv(x[i], w[i], b[i], 2) for i in range(3)]))


def test_torch_kernel_layout_by_hand(dev):
    """k = 2, R = 1, one channel: y_t = W_0 x_{t-1} + W_1 x_t + b (W_1 reads the present)."""
    x = np.array([[1.0], [2.0], [4.0]])
    out = blocks.causal_conv1d(dev.asarray(x), dev.asarray(np.array([[[10.0]], [[1.0]]])),
                               dev.asarray(np.array([0.5])), 1)
    close(dev, out, [[1.5], [12.5], [24.5]])


# ----- causality, as a property of every block and of the whole model -----

def perturb_step(x, t, rng):
    changed = np.array(x, copy=True)
    changed[..., t, :] += rng.standard_normal(changed[..., t, :].shape)
    return changed


def assert_causal(dev, f, x, t, rng):
    """f(x) and f(x with step t changed) agree exactly before t and differ at t."""
    before, after = dev.to_host(f(dev.asarray(x))), dev.to_host(f(dev.asarray(perturb_step(x, t, rng))))
    np.testing.assert_array_equal(before[..., :t, :], after[..., :t, :])
    assert np.any(before[..., t, :] != after[..., t, :]), "step t did not reach its own output"


@given(seed=seeds, steps=st.integers(1, 12), channels=st.integers(1, 4), filters=st.integers(1, 3),
       kernel_size=st.integers(1, 3), dilation_start=st.integers(0, 2), data=st.data())
def test_every_block_is_causal(dev, seed, steps, channels, filters, kernel_size, dilation_start, data):
    rng = np.random.default_rng(seed)
    t = data.draw(st.integers(0, steps - 1), label="perturbed step")
    dilation = data.draw(st.integers(1, 2 * steps), label="dilation")
    x = rng.standard_normal((2, steps, channels))
    conv = dev.tree(host_tree({"w": rng.standard_normal((kernel_size, channels, filters)),
                               "b": rng.standard_normal(filters)}))
    dense = dev.tree(blocks.dense_block_init(rng, channels, filters, kernel_size))
    tc = dev.tree(blocks.tc_block_init(rng, channels, steps, filters, kernel_size))
    dilations = blocks.tc_dilations(steps, dilation_start)
    attention = dev.tree(host_tree(blocks.attention_block_init(rng, channels, 3, 2), scale=3.0))
    assert_causal(dev, lambda v: blocks.causal_conv1d(v, conv["w"], conv["b"], dilation), x, t, rng)
    assert_causal(dev, lambda v: blocks.dense_block(dense, v, dilation), x, t, rng)
    if dilations:
        assert_causal(dev, lambda v: blocks.tc_block(tc, v, dilations), x, t, rng)
    assert_causal(dev, lambda v: blocks.attention_block(attention, v), x, t, rng)


@given(seed=seeds, n_way=st.integers(2, 4), k_shot=st.integers(1, 3), data=st.data())
def test_the_model_is_causal(dev, seed, n_way, k_shot, data):
    config = snail.SNAILConfig(n_way=n_way, k_shot=k_shot, blocks=TINY.blocks, embedding_dim=4,
                               embedding_filters=2, image_size=16)
    rng = np.random.default_rng(seed)
    params = dev.tree(snail.init(rng, config))
    x = rng.standard_normal((2, config.sequence_length, 4 + n_way))
    x[..., -1, 4:] = 0.0                                                   # the query's label slot
    t = data.draw(st.integers(0, config.sequence_length - 2), label="perturbed step")
    assert_causal(dev, lambda v: snail.apply(params, v, config), x, t, rng)


# ----- the masked softmax -----

@given(seed=seeds, steps=st.integers(1, 8), scale=st.sampled_from([1.0, 30.0, 1e3]))
def test_attention_rows_sum_to_one_and_masked_entries_are_exactly_zero(dev, seed, steps, scale):
    rng = np.random.default_rng(seed)
    params = host_tree(blocks.attention_block_init(rng, 3, 4, 2), scale=scale)
    x = rng.standard_normal((steps, 3))
    out, probs = blocks.attention_block(dev.tree(params), dev.asarray(x), return_probs=True)
    expected_out, expected_probs = naive_attention(params, x)
    host = dev.to_host(probs)
    np.testing.assert_allclose(host.sum(axis=-1), np.ones(steps), rtol=1e-12)
    assert np.all(host[np.triu_indices(steps, 1)] == 0.0)                 # exactly 0, not tiny
    np.testing.assert_allclose(host, expected_probs, rtol=1e-9, atol=1e-300)
    close(dev, out, expected_out, rtol=1e-9, atol=1e-9)


def test_uniform_logits_give_the_causal_running_mean(dev):
    """Zero query and key maps: every logit is 0, P_ts = 1/(t+1), read_t = mean of v_0..v_t."""
    rng = np.random.default_rng(0)
    params = blocks.attention_block_init(rng, 2, 3, 2)
    for name in ("query.w", "query.b", "key.w", "key.b"):
        params[name] = np.zeros_like(params[name])
    x = rng.standard_normal((5, 2))
    out, probs = blocks.attention_block(dev.tree(params), dev.asarray(x), return_probs=True)
    values = x @ params["value.w"] + params["value.b"]
    close(dev, probs, np.tril(np.ones((5, 5))) / np.arange(1, 6)[:, None])
    close(dev, out[:, 2:], np.cumsum(values, axis=0) / np.arange(1, 6)[:, None])


@given(seed=seeds, steps=st.integers(2, 6))
def test_masked_softmax_gradient_is_finite_correct_and_zero_on_masked_logits(dev, seed, steps):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((2, steps, steps))
    logits[:, np.triu_indices(steps, 1)[0], np.triu_indices(steps, 1)[1]] = 1e308  # huge future
    weights = dev.asarray(rng.standard_normal((2, steps, steps)))
    f = lambda z: anp.sum(blocks.causal_softmax(z) * weights)
    gradient = dev.to_host(grad(f)(dev.asarray(logits)))
    assert np.all(np.isfinite(gradient))
    assert np.all(gradient[:, np.triu_indices(steps, 1)[0], np.triu_indices(steps, 1)[1]] == 0.0)
    gradcheck.check_grad(f, dev.asarray(np.tril(logits)), rng=rng)


def test_sigmoid_is_stable_and_exact_with_the_right_derivative_at_zero():
    x = np.array([-1e4, -30.0, 0.0, 2.0, 1e4])
    np.testing.assert_allclose(blocks.sigmoid(x), [0.0, 1 / (1 + math.exp(30)), 0.5, 1 / (1 + math.exp(-2)), 1.0],
                               rtol=1e-14, atol=1e-300)
    slope = grad(lambda v: anp.sum(blocks.sigmoid(v)))(np.array([-30.0, 0.0, 2.0]))
    s = 1 / (1 + np.exp(-np.array([-30.0, 0.0, 2.0])))
    np.testing.assert_allclose(slope, s * (1 - s), rtol=1e-12)


# ----- dense and TC blocks: the paper's formulas -----

def test_dense_block_by_its_formula(dev):
    rng = np.random.default_rng(3)
    params = blocks.dense_block_init(rng, 3, 2)
    x = rng.standard_normal((2, 6, 3))
    out = blocks.dense_block(dev.tree(params), dev.asarray(x), 4)
    conv = lambda part, seq: naive_causal_conv(seq, params[f"{part}.w"], params[f"{part}.b"], 4)
    expected = [np.concatenate([seq, np.tanh(conv("filter", seq)) / (1 + np.exp(-conv("gate", seq)))], 1)
                for seq in x]
    close(dev, out, np.stack(expected))


@pytest.mark.parametrize("steps, dilation_start, dilations", [
    (1, 1, []), (2, 1, [2]), (6, 1, [2, 4, 8]), (8, 1, [2, 4, 8]), (9, 1, [2, 4, 8, 16]),
    (21, 1, [2, 4, 8, 16, 32]), (6, 0, [1, 2, 4])])
def test_tc_dilations(steps, dilation_start, dilations):
    assert blocks.tc_dilations(steps, dilation_start) == dilations


def test_tc_block_count_is_ceil_log2_for_every_length():
    for steps in range(1, 2050):
        assert len(blocks.tc_dilations(steps)) == math.ceil(math.log2(steps))


def test_tc_block_is_dense_blocks_in_sequence(dev):
    rng = np.random.default_rng(4)
    params = blocks.tc_block_init(rng, 2, 5, 3)
    x = dev.asarray(rng.standard_normal((5, 2)))
    expected = x
    for i, dilation in enumerate([2, 4, 8]):
        expected = blocks.dense_block({k[7:]: dev.asarray(v) for k, v in params.items()
                                       if k.startswith(f"dense{i}.")}, expected, dilation)
    close(dev, blocks.tc_block(dev.tree(params), x, [2, 4, 8]), dev.to_host(expected), rtol=0, atol=0)


@given(seed=seeds, channels=st.integers(1, 5), filters=st.integers(1, 4), steps=st.integers(1, 20),
       key_size=st.integers(1, 4), value_size=st.integers(1, 4))
def test_channel_counts_match_the_formulas(seed, channels, filters, steps, key_size, value_size):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((steps, channels))
    levels = math.ceil(math.log2(steps))
    assert blocks.dense_block(blocks.dense_block_init(rng, channels, filters), x, 2).shape[-1] == channels + filters
    tc = blocks.tc_block(blocks.tc_block_init(rng, channels, steps, filters), x, blocks.tc_dilations(steps))
    assert tc.shape[-1] == channels + levels * filters == blocks.tc_block_channels(channels, steps, filters)
    attention = blocks.attention_block(blocks.attention_block_init(rng, channels, key_size, value_size), x)
    assert attention.shape[-1] == channels + value_size


@pytest.mark.parametrize("n_way, k_shot, levels", [(5, 1, 3), (5, 5, 5), (20, 1, 5), (20, 5, 7)])
def test_paper_stack_channels(n_way, k_shot, levels):
    """(4): C_0 = 64 + N, then +32, +128L, +128, +128L, +256; C_final = 64 + N + 416 + 256L."""
    config = snail.SNAILConfig(n_way=n_way, k_shot=k_shot)
    c0 = 64 + n_way
    assert snail.channel_plan(config) == [c0, c0 + 32, c0 + 32 + 128 * levels, c0 + 160 + 128 * levels,
                                          c0 + 160 + 256 * levels, 64 + n_way + 416 + 256 * levels]
    assert snail.channel_plan(snail.SNAILConfig()) [-1] == 1253
    params = snail.init(np.random.default_rng(0), config)
    assert params["out.w"].shape == (64 + n_way + 416 + 256 * levels, n_way)
    assert params["block4.query.w"].shape == (c0 + 160 + 256 * levels, 512)
    assert params["block3.dense0.filter.w"].shape == (2, c0 + 160 + 128 * levels, 128)
    assert params["embed.out.w"].shape == (64, 64)


# ----- finite differences -----

@given(seed=seeds, dilation=st.integers(1, 5), kernel_size=st.integers(1, 3))
def test_block_gradients_match_finite_differences(dev, seed, dilation, kernel_size):
    rng = np.random.default_rng(seed)
    x = dev.asarray(rng.standard_normal((2, 5, 3)))
    dense = dev.tree(blocks.dense_block_init(rng, 3, 2, kernel_size))
    tc = dev.tree(blocks.tc_block_init(rng, 3, 5, 2, kernel_size))
    attention = dev.tree(host_tree(blocks.attention_block_init(rng, 3, 2, 2), scale=2.0))
    weights = lambda c: dev.asarray(rng.standard_normal((2, 5, c)))
    checks = [(lambda p, v: blocks.dense_block(p, v, dilation), dense, 5),
              (lambda p, v: blocks.tc_block(p, v, [2, 4, 8]), tc, 9),
              (lambda p, v: blocks.attention_block(p, v), attention, 5)]
    for block, params, channels in checks:
        w = weights(channels)
        f = lambda tree: anp.sum(block(without_x(tree), tree["x"]) * w)
        gradcheck.check_grad(f, {**params, "x": x}, rng=rng)            # params and input at once


def without_x(tree):
    return {k: v for k, v in tree.items() if k not in ("x", "query")}


@given(seed=seeds)
def test_model_and_episode_loss_gradients_match_finite_differences(dev, seed):
    rng = np.random.default_rng(seed)
    params = dev.tree(snail.init(rng, TINY))
    support = dev.asarray(rng.standard_normal((2, 3, TINY.sequence_length - 1, 4 + TINY.n_way)))
    query = dev.asarray(rng.standard_normal((2, 3, 1, 4)))
    slot = dev.asarray(np.zeros((2, 3, 1, TINY.n_way)))                    # stays exactly zero
    w = dev.asarray(rng.standard_normal((2, 3, TINY.sequence_length, TINY.n_way)))
    sequences = lambda t: anp.concatenate([t["x"], anp.concatenate([t["query"], slot], -1)], -2)
    stack = {k: v for k, v in params.items() if not k.startswith("embed.")}
    gradcheck.check_grad(lambda t: anp.sum(snail.apply(without_x(t), sequences(t), TINY) * w),
                         {**stack, "x": support, "query": query}, rng=rng)
    episode = tiny_episode(dev, rng, n_tasks=2, n_query=2)
    # The embedding has ReLU and max-pool kinks: directions with one within reach are skipped.
    assume(check_grad_away_from_kinks(lambda p: snail.loss(p, episode, TINY), params, rng) > 0)


def tiny_episode(dev, rng, n_tasks, n_query):
    n_support = TINY.n_way * TINY.k_shot
    support_y = np.stack([rng.permutation(np.repeat(np.arange(TINY.n_way), TINY.k_shot)) for _ in range(n_tasks)])
    query_y = rng.integers(0, TINY.n_way, (n_tasks, n_query))
    images = lambda n: rng.random((n_tasks, n, 1, 16, 16))
    return Episode.validated(dev.asarray(images(n_support)), dev.asarray(support_y),
                             dev.asarray(images(n_query)), dev.asarray(query_y), n_way=TINY.n_way)


# ----- sequences, loss, training -----

def test_sequences_pair_embeddings_with_one_hot_labels_and_a_zero_query_slot(dev):
    rng = np.random.default_rng(5)
    support_z, query_z = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 2, 4))
    support_y = np.array([[2, 0, 1], [1, 2, 0]])
    seq = dev.to_host(snail.make_sequences(dev.asarray(support_z), dev.asarray(support_y),
                                           dev.asarray(query_z), TINY))
    assert seq.shape == (2, 2, 4, 7)
    for task in range(2):
        for q in range(2):
            np.testing.assert_array_equal(seq[task, q, :3, :4], support_z[task])
            np.testing.assert_array_equal(seq[task, q, :3, 4:], np.eye(3)[support_y[task]])
            np.testing.assert_array_equal(seq[task, q, 3], np.concatenate([query_z[task, q], np.zeros(3)]))


def test_loss_is_the_query_step_cross_entropy(dev):
    rng = np.random.default_rng(6)
    params = dev.tree(snail.init(rng, TINY))
    episode = tiny_episode(dev, rng, n_tasks=2, n_query=3)
    images = anp.concatenate([episode.support_x, episode.query_x], axis=1)
    z = snail.embed(params, images, TINY)
    sequences = snail.make_sequences(z[:, :3], episode.support_y, z[:, 3:], TINY)
    logits = dev.to_host(snail.apply(params, sequences, TINY))[:, :, -1, :]   # (2, 3, N)
    labels = dev.to_host(episode.query_y)
    expected = np.mean([-(logits[i, j] - np.log(np.exp(logits[i, j]).sum()))[labels[i, j]]
                        for i in range(2) for j in range(3)])
    assert float(snail.loss(params, episode, TINY)) == pytest.approx(expected, rel=1e-12)
    close(dev, snail.query_logits(params, episode, TINY), logits)


def test_running_statistics_start_on_the_params_device_and_dtype(dev):
    like = dev.asarray(np.zeros(3)).astype(np.float32)
    state = snail.bn_state_init(TINY, like)
    assert all(dev.is_array(v) and v.dtype == np.float32 for v in state.values())


def test_meta_step_fits_a_fixed_batch_and_tracks_running_statistics(dev):
    rng = np.random.default_rng(7)
    params = dev.tree(snail.init(rng, TINY))
    episode = tiny_episode(dev, rng, n_tasks=2, n_query=3)
    opt_state, bn_state = optimizers.adam_init(params), snail.bn_state_init(TINY, params["out.w"])
    images = anp.concatenate([episode.support_x, episode.query_x], axis=1)
    _, moments = snail.embed(params, images, TINY, return_bn_moments=True)
    first = float(snail.loss(params, episode, TINY))
    params, opt_state, bn_state, loss = snail.meta_step(params, opt_state, bn_state, episode, TINY,
                                                        lr=1e-2, bn_momentum=0.25)
    assert float(loss) == pytest.approx(first, rel=1e-12)
    for name in ("bn0.mean", "bn3.var"):                                  # r ← 0.75 r + 0.25 batch
        initial = 0.0 if name.endswith("mean") else 1.0
        close(dev, bn_state[name], 0.75 * initial + 0.25 * dev.to_host(moments[name]))
    for _ in range(30):
        params, opt_state, bn_state, loss = snail.meta_step(params, opt_state, bn_state, episode, TINY, lr=1e-2)
    assert float(snail.loss(params, episode, TINY)) < 0.2 * first


def test_conventions_are_json_and_complete():
    import json
    conventions = snail.SNAILConfig().conventions()
    assert json.loads(json.dumps(conventions)) == conventions
    assert conventions["blocks"] == [["attention", 64, 32], ["tc", 128], ["attention", 256, 128],
                                     ["tc", 128], ["attention", 512, 256]]
    assert conventions["dilations"] == [2, 4, 8] and conventions["sequence_length"] == 6
    assert conventions["kernel_size"] == 2 and conventions["channels"][-1] == 1253


@given(seed=seeds, gain=st.floats(0.25, 16.0))
def test_attention_init_gain_scales_exactly_the_query_and_key_weights(seed, gain):
    """Gain g multiplies the attention blocks' query.w and key.w by g and changes nothing else:
    the same draws, so g = 1 is the default init and every other parameter is identical."""
    base = snail.init(np.random.default_rng(seed), TINY)
    scaled = snail.init(np.random.default_rng(seed), dataclasses.replace(TINY, attention_init_gain=gain))
    assert set(scaled) == set(base)
    attention = [f"block{j}." for j, spec in enumerate(TINY.blocks) if spec[0] == "attention"]
    changed = {k for k in base if k.startswith(tuple(attention)) and k.endswith(("query.w", "key.w"))}
    assert len(changed) == 2 * len(attention)
    for name in base:
        expected = gain * base[name] if name in changed else base[name]
        np.testing.assert_array_equal(scaled[name], expected)
    assert snail.SNAILConfig(attention_init_gain=gain).conventions()["attention_init_gain"] == gain


# ----- bad input -----

def test_bad_input_gets_clear_errors(dev):
    rng = np.random.default_rng(8)
    params = dev.tree(snail.init(rng, TINY))
    good = rng.standard_normal((2, 4, 7))
    good[:, -1, 4:] = 0
    snail.apply(params, dev.asarray(good), TINY)
    with pytest.raises(ValueError, match=r"T = N·K \+ 1 = 4.*got \(2, 5, 7\)"):
        snail.apply(params, dev.asarray(np.zeros((2, 5, 7))), TINY)
    with pytest.raises(ValueError, match=r"d \+ N = 7.*got \(2, 4, 4\)"):                 # no label slot
        snail.apply(params, dev.asarray(good[..., :4]), TINY)
    labelled = good.copy()
    labelled[:, -1, 5] = 1.0
    with pytest.raises(ValueError, match="query .* all-zero label slot"):
        snail.apply(params, dev.asarray(labelled), TINY)
    bad = good.copy()
    bad[0, 1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        snail.apply(params, dev.asarray(bad), TINY)
    with pytest.raises(ValueError, match="N·K = 3 support steps"):
        snail.make_sequences(dev.asarray(np.zeros((2, 4))), dev.asarray(np.zeros(2, int)),
                             dev.asarray(np.zeros((1, 4))), TINY)
    with pytest.raises(ValueError, match=r"support labels must be in 0..2; got 0..3"):
        snail.make_sequences(dev.asarray(np.zeros((3, 4))), dev.asarray(np.array([0, 1, 3])),
                             dev.asarray(np.zeros((1, 4))), TINY)
    x, w, b = dev.asarray(np.zeros((4, 2))), dev.asarray(np.zeros((2, 2, 3))), dev.asarray(np.zeros(3))
    for dilation in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="dilation must be an integer >= 1"):
            blocks.causal_conv1d(x, w, b, dilation)
    with pytest.raises(ValueError, match=r"w must be \(..., k, C_in=2, C_out\) with k >= 1"):
        blocks.causal_conv1d(x, dev.asarray(np.zeros((0, 2, 3))), b, 1)
    with pytest.raises(ValueError, match="kernel_size must be an integer >= 1; got 0"):
        blocks.dense_block_init(rng, 2, 3, kernel_size=0)
    with pytest.raises(ValueError, match="kernel_size must be an integer >= 1; got 0"):
        snail.SNAILConfig(kernel_size=0)
    with pytest.raises(ValueError, match="dilation_start must be an integer >= 0; got -1"):
        snail.SNAILConfig(dilation_start=-1)
    with pytest.raises(ValueError, match="each block must be"):
        snail.SNAILConfig(blocks=(("attention", 3),))
    for gain in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="attention_init_gain must be a positive number"):
            snail.SNAILConfig(attention_init_gain=gain)
    for gain in ("4", True, None):
        with pytest.raises(TypeError, match="attention_init_gain must be a positive number"):
            snail.SNAILConfig(attention_init_gain=gain)
    with pytest.raises(ValueError, match="query_key_gain must be a positive number; got 0"):
        blocks.attention_block_init(rng, 2, 3, 2, query_key_gain=0)
    images = rng.random((2, 4, 1, 16, 16))
    images[0, 0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="images contain NaN or inf"):
        snail.embed(params, dev.asarray(images), TINY)
    with pytest.raises(ValueError, match=r"embed expects images \(..., n, 1, 16, 16\)"):
        snail.embed(params, dev.asarray(np.zeros((2, 1, 28, 28))), TINY)


# ----- an independent implementation: the same stack in PyTorch -----

def test_stack_matches_a_pytorch_port():
    torch = pytest.importorskip("torch")
    config = snail.SNAILConfig(n_way=3, k_shot=2, blocks=(("attention", 5, 4), ("tc", 3), ("attention", 4, 2)),
                               embedding_dim=4, embedding_filters=2, image_size=16)
    rng = np.random.default_rng(9)
    params = snail.init(rng, config)
    x = rng.standard_normal((2, config.sequence_length, 7))
    x[:, -1, 4:] = 0
    t = lambda a: torch.tensor(a, dtype=torch.float64)
    h = t(x).transpose(1, 2)                                                 # PyTorch's (B, C, T)
    for j, spec in enumerate(config.blocks):
        p = {k[len(f"block{j}."):]: t(v) for k, v in params.items() if k.startswith(f"block{j}.")}
        if spec[0] == "attention":
            seq = h.transpose(1, 2)
            q, k, v = (seq @ p[f"{n}.w"] + p[f"{n}.b"] for n in ("query", "key", "value"))
            logits = q @ k.transpose(1, 2) / math.sqrt(spec[1])
            mask = torch.triu(torch.ones(logits.shape[-2:], dtype=torch.bool), 1)
            read = torch.softmax(logits.masked_fill(mask, float("-inf")), dim=2) @ v
            h = torch.cat([h, read.transpose(1, 2)], dim=1)
        else:
            for i, dilation in enumerate(config.dilations()):
                conv = lambda part: torch.nn.functional.conv1d(
                    h, p[f"dense{i}.{part}.w"].permute(2, 1, 0), p[f"dense{i}.{part}.b"],
                    padding=dilation, dilation=dilation)[:, :, :-dilation]
                h = torch.cat([h, torch.tanh(conv("filter")) * torch.sigmoid(conv("gate"))], dim=1)
    expected = (h.transpose(1, 2) @ t(params["out.w"]) + t(params["out.b"])).numpy()
    np.testing.assert_allclose(snail.apply(params, x, config), expected, rtol=1e-10, atol=1e-12)
