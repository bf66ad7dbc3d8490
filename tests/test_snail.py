"""SNAIL: naive-loop references, causality as a property, the masked softmax, channel counts,
finite differences through every block and the whole model, the training step and its running
statistics, bad input at the entry points, and a PyTorch port."""

import dataclasses
import math
import re

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad
from hypothesis import assume, given, strategies as st

from helpers import check_grad_away_from_kinks

from refmeta import checks, gradcheck, snail
from refmeta.nn import snail_blocks as blocks
from refmeta.data.tasks import Episode
from refmeta.contract import State

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

@pytest.mark.equation("snail_blocks", "(1)")
@given(seed=seeds, steps=st.integers(1, 9), c_in=st.integers(1, 4), c_out=st.integers(1, 4),
       kernel_size=st.integers(1, 3), dilation=st.integers(1, 10), leading=st.sampled_from([(), (2,), (2, 3)]))
def test_causal_conv_matches_naive_loop(dev, seed, steps, c_in, c_out, kernel_size, dilation, leading):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(leading + (steps, c_in))
    w, b = rng.standard_normal((kernel_size, c_in, c_out)), rng.standard_normal(c_out)
    out = blocks.causal_conv1d(dev.asarray(x), dev.asarray(w), dev.asarray(b), dilation)
    expected = np.stack([naive_causal_conv(seq, w, b, dilation) for seq in x.reshape(-1, steps, c_in)])
    close(dev, out, expected.reshape(leading + (steps, c_out)))


@pytest.mark.equation("snail_blocks", "(1)")
def test_causal_conv_with_task_batched_params_equals_per_task_loop(dev):
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((3, 5, 2)), rng.standard_normal((3, 2, 2, 4)), rng.standard_normal((3, 4))
    out = blocks.causal_conv1d(dev.asarray(x), dev.asarray(w), dev.asarray(b), 2)
    close(dev, out, np.stack([naive_causal_conv(x[i], w[i], b[i], 2) for i in range(3)]))


@pytest.mark.equation("snail_blocks", "(1)")
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


@pytest.mark.equation("snail_blocks", "(1)", "(2)", "(3)", "(4)")
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


@pytest.mark.equation("snail", "(3)")
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


# ----- Section 5.1: one model for every K of train_shots -----
SHOTS = dataclasses.replace(TINY, k_shot=None, train_shots=(1, 2, 3))      # T_max = 10: L = 4


@pytest.mark.parametrize("dilation_start", [0, 1])
def test_a_prefix_of_a_sequence_gives_the_outputs_of_that_sequence_alone(dev, dilation_start):
    """Causality makes a shorter sequence (a K < max K episode) an exact prefix: every block's
    step t does the same arithmetic on fewer steps.  Held to rtol 1e-13, not bits: it is not
    bit-equal here (a few ulps), as BLAS rounds a product over fewer rows differently."""
    config = dataclasses.replace(SHOTS, dilation_start=dilation_start)
    rng = np.random.default_rng(20)
    params = dev.tree(snail.init(rng, config))
    x = rng.standard_normal((2, 3, config.sequence_length, 4 + config.n_way))
    full = dev.to_host(snail.apply(params, dev.asarray(x), config))
    for steps in range(1, config.sequence_length):
        alone = snail.apply(params, dev.asarray(x[..., :steps, :]), config)
        close(dev, alone, full[..., :steps, :], rtol=1e-13, atol=1e-15)


# ----- branches: an episode's queries as the last steps of one sequence -----

def test_the_branched_mask_by_hand():
    """Two branches after three shared steps: each reads the shared steps and itself only."""
    expected = np.array([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0],
                         [1, 1, 1, 1, 0], [1, 1, 1, 0, 1]], dtype=bool)
    np.testing.assert_array_equal(blocks.causal_mask(5, np.zeros(1), branches=2), expected)
    np.testing.assert_array_equal(blocks.causal_mask(5, np.zeros(1)), np.tril(np.ones((5, 5), bool)))


def shared_and_alone(rng, prefix, branches, channels=4):
    """x (2, P + Q, C) and the Q sequences it stands for, (2, Q, P + 1, C): the shared steps, then
    branch i alone."""
    shared = rng.standard_normal((2, prefix + branches, channels))
    alone = np.stack([np.concatenate([shared[:, :prefix], shared[:, prefix + i:prefix + i + 1]], 1)
                      for i in range(branches)], axis=1)
    return shared, alone


@given(seed=seeds, prefix=st.integers(0, 7), branches=st.integers(1, 4), kernel_size=st.integers(1, 3),
       dilation_start=st.integers(0, 2))
def test_each_branch_computes_what_its_own_sequence_computes(dev, seed, prefix, branches, kernel_size,
                                                             dilation_start):
    """Every block's output and attention read: the shared steps are those of every sequence alone,
    branch i is step P of sequence i, and no branch reads another (its weight there is exactly 0).
    rtol 1e-13, not bits: BLAS rounds products over a different number of rows differently."""
    rng = np.random.default_rng(seed)
    specs, length = (("attention", 3, 2), ("tc", 2), ("attention", 2, 3)), max(prefix + 1, 2)
    dilations = blocks.tc_dilations(length, dilation_start)
    params = dev.tree(blocks.stack_init(rng, 4, specs, length, kernel_size, query_key_gain=3.0))
    shared, alone = shared_and_alone(rng, prefix, branches)
    _, by_branch = blocks.stack(params, dev.asarray(shared), specs, dilations, True, branches=branches)
    _, by_sequence = blocks.stack(params, dev.asarray(alone), specs, dilations, True)
    for name, value in by_branch.items():
        each = dev.to_host(by_sequence[name])                             # (2, Q, P + 1, …)
        if name.endswith(".probs"):                                        # (2, P + Q, P + Q)
            close(dev, value[:, :prefix, :prefix], each[:, 0, :prefix, :prefix], rtol=1e-13, atol=1e-15)
            reads = dev.to_host(value)[:, prefix:]                         # (2, Q, P + Q)
            np.testing.assert_allclose(reads[..., :prefix], each[:, :, -1, :prefix], rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(np.diagonal(reads[..., prefix:], axis1=1, axis2=2), each[:, :, -1, -1],
                                       rtol=1e-13)
            assert np.all(reads[..., prefix:][:, ~np.eye(branches, dtype=bool)] == 0.0)
            continue
        for i in range(branches):
            close(dev, value[:, :prefix], each[:, i, :prefix], rtol=1e-13, atol=1e-15)
        close(dev, value[:, prefix:], each[:, :, -1], rtol=1e-13, atol=1e-15)


def test_the_branch_comparison_fails_when_the_queries_read_each_other(dev):
    """The test above can fail: read as one ordinary causal sequence (branches = 1), the second
    and third queries see the ones before them, and their outputs move far from their own."""
    rng = np.random.default_rng(3)
    specs = (("attention", 3, 2), ("tc", 2), ("attention", 2, 3))
    params = dev.tree(blocks.stack_init(rng, 4, specs, 5, query_key_gain=3.0))
    shared, alone = shared_and_alone(rng, prefix=4, branches=3)
    leaked = dev.to_host(blocks.stack(params, dev.asarray(shared), specs, [2, 4, 8]))[:, 4:]
    own = dev.to_host(blocks.stack(params, dev.asarray(alone), specs, [2, 4, 8]))[:, :, -1]
    np.testing.assert_allclose(leaked[:, 0], own[:, 0], rtol=1e-13)      # the first reads no query
    assert np.max(np.abs(leaked[:, 1:] - own[:, 1:])) > 1e-3


@pytest.mark.equation("snail", "(1)", "(2)", "(3)")
@pytest.mark.parametrize("k_shot", SHOTS.train_shots)
def test_query_logits_equal_one_sequence_per_query(dev, k_shot):
    """``query_logits`` (branches, what loss, step and predict use) against ``make_sequences`` +
    ``apply`` (the paper's one sequence per query), for every K of one model."""
    rng = np.random.default_rng(30 + k_shot)
    params = dev.tree(snail.init(rng, SHOTS))
    support_z = dev.asarray(rng.standard_normal((2, SHOTS.n_way * k_shot, 4)))
    support_y = dev.asarray(np.stack([rng.permutation(np.repeat(np.arange(SHOTS.n_way), k_shot))
                                      for _ in range(2)]))
    query_z = dev.asarray(rng.standard_normal((2, 5, 4)))
    sequences = snail.make_sequences(support_z, support_y, query_z, SHOTS)  # (2, 5, T, d + N)
    expected = dev.to_host(snail.apply(params, sequences, SHOTS))[..., -1, :]
    close(dev, snail.query_logits(params, support_z, support_y, query_z, SHOTS), expected,
          rtol=1e-13, atol=1e-15)


def shots_episode(dev, rng, k_shot, n_tasks=2, n_query=2, n_way=3):
    """A meta-batch of n_way-way k_shot episodes, the support in random order."""
    support_y = np.stack([rng.permutation(np.repeat(np.arange(n_way), k_shot)) for _ in range(n_tasks)])
    images = lambda n: dev.asarray(rng.random((n_tasks, n, 1, 16, 16)))
    return Episode(images(n_way * k_shot), dev.asarray(support_y), images(n_query),
                   dev.asarray(rng.integers(0, n_way, (n_tasks, n_query))))


def test_every_k_of_train_shots_is_read_at_step_nk_plus_1_of_one_model(dev):
    """A K-shot episode's logits are step N·K + 1 of the T_max-long sequence that continues past
    the query with any steps at all: predict runs the short sequence, here the long one is read."""
    rng = np.random.default_rng(21)
    params = dev.tree(snail.init(rng, SHOTS))
    for k_shot in SHOTS.shots:
        episode = shots_episode(dev, rng, k_shot)
        images = anp.concatenate([episode.support_x, episode.query_x], axis=1)
        z = dev.to_host(snail.embed(params, images, SHOTS))
        n = SHOTS.n_way * k_shot
        sequences = dev.to_host(snail.make_sequences(dev.asarray(z[:, :n]), episode.support_y,
                                                     dev.asarray(z[:, n:]), SHOTS))   # (2, Q, N·K + 1, 7)
        junk = rng.standard_normal(sequences.shape[:2] + (SHOTS.sequence_length - n - 1, 7))
        padded = dev.asarray(np.concatenate([sequences, junk], axis=2))       # (2, Q, T_max, 7)
        read = dev.to_host(snail.apply(params, padded, SHOTS))[:, :, n]
        close(dev, snail.predict(params, episode, SHOTS), read, rtol=1e-13, atol=1e-15)


def test_loss_step_and_predict_take_episodes_of_every_k_and_one_model_learns_them_all(dev):
    rng = np.random.default_rng(22)
    config = dataclasses.replace(SHOTS, meta_lr=1e-2)
    params = dev.tree(snail.init(rng, config))
    state = snail.init_state(params, config)
    episodes = {k: shots_episode(dev, rng, k) for k in config.shots}
    first = {k: float(snail.loss(params, e, config)) for k, e in episodes.items()}
    for k, episode in episodes.items():
        assert snail.predict(params, episode, config).shape == (2, 2, 3)
        logits = dev.to_host(snail.predict(params, episode, config))
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        labels = dev.to_host(episode.query_y)[..., None]
        assert first[k] == pytest.approx(-np.take_along_axis(log_probs, labels, -1).mean(), rel=1e-12)
    for _ in range(20):                                         # K changes from step to step
        for k, episode in episodes.items():
            before = float(snail.loss(params, episode, config))
            params, state, loss = snail.step(params, state, episode, config)
            assert float(loss) == pytest.approx(before, rel=1e-13)
    assert state.optimizer.step == 20 * len(episodes)
    for k, episode in episodes.items():
        assert float(snail.loss(params, episode, config)) < 0.25 * first[k], k


@pytest.mark.parametrize("k_shot", [1, 2])
def test_a_short_sequence_through_the_long_models_stack_has_the_right_gradient(dev, k_shot):
    """Finite differences of the stack (smooth: no kinks) on a K < max K sequence."""
    rng = np.random.default_rng(23 + k_shot)
    params = snail.init(rng, SHOTS)
    stack = dev.tree({k: v for k, v in params.items() if not k.startswith("embed.")})
    steps = SHOTS.n_way * k_shot + 1
    x = dev.asarray(rng.standard_normal((2, steps, 4 + SHOTS.n_way)))
    w = dev.asarray(rng.standard_normal((2, steps, SHOTS.n_way)))
    gradcheck.check_grad(lambda t: anp.sum(snail.apply(without_x(t), t["x"], SHOTS) * w),
                         {**stack, "x": x}, rng=rng)


def test_a_k_outside_train_shots_is_refused(dev):
    config = dataclasses.replace(SHOTS, train_shots=(1, 3))
    rng = np.random.default_rng(24)
    params = dev.tree(snail.init(rng, config))
    state = snail.init_state(params, config)
    message = re.escape("the support set must hold N·K examples, N = 3 and K in (1, 3): 3, 9; got ")
    for k_shot in (2, 4):
        episode = shots_episode(dev, rng, k_shot)
        for entry in (lambda: snail.loss(params, episode, config), lambda: snail.predict(params, episode, config),
                      lambda: snail.step(params, state, episode, config)):
            with pytest.raises(ValueError, match=message + str(3 * k_shot)):
                entry()
    uneven = shots_episode(dev, rng, 3)._replace(support_y=dev.asarray(np.array([[0, 0, 0, 0, 1, 1, 1, 2, 2]] * 2)))
    with pytest.raises(ValueError, match=r"a 3-way 3-shot set has each class exactly 3 time\(s\); got counts "
                                         r"\[4, 3, 2\]"):
        snail.predict(params, uneven, config)


def test_train_shots_size_the_model_for_the_longest_sequence():
    paper = snail.SNAILConfig(k_shot=None, train_shots=(1, 2, 3, 4, 5))
    conventions = paper.conventions()
    assert conventions["train_shots"] == conventions["shots"] == [1, 2, 3, 4, 5]
    assert conventions["k_shot"] is None and conventions["sequence_length"] == 26
    assert conventions["dilations"] == [2, 4, 8, 16, 32]                  # L = ⌈log₂ 26⌉ = 5
    assert conventions["channels"][-1] == 64 + 5 + 416 + 256 * 5           # (4)
    fixed = snail.SNAILConfig(k_shot=5)                                      # the same model, one K
    assert snail.init(np.random.default_rng(0), fixed).keys() == snail.init(np.random.default_rng(0), paper).keys()
    assert fixed.shots == (5,) and snail.SNAILConfig().conventions()["train_shots"] is None


# ----- the masked softmax -----

@pytest.mark.equation("snail_blocks", "(4)")
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


@pytest.mark.equation("snail_blocks", "(4)")
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


@pytest.mark.equation("snail_blocks", "(4)")
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

@pytest.mark.equation("snail_blocks", "(2)")
def test_dense_block_by_its_formula(dev):
    rng = np.random.default_rng(3)
    params = blocks.dense_block_init(rng, 3, 2)
    x = rng.standard_normal((2, 6, 3))
    out = blocks.dense_block(dev.tree(params), dev.asarray(x), 4)
    conv = lambda part, seq: naive_causal_conv(seq, params[f"{part}.w"], params[f"{part}.b"], 4)
    expected = [np.concatenate([seq, np.tanh(conv("filter", seq)) / (1 + np.exp(-conv("gate", seq)))], 1)
                for seq in x]
    close(dev, out, np.stack(expected))


@pytest.mark.equation("snail_blocks", "(3)")
@pytest.mark.parametrize("steps, dilation_start, dilations", [
    (1, 1, []), (2, 1, [2]), (6, 1, [2, 4, 8]), (8, 1, [2, 4, 8]), (9, 1, [2, 4, 8, 16]),
    (21, 1, [2, 4, 8, 16, 32]), (6, 0, [1, 2, 4])])
def test_tc_dilations(steps, dilation_start, dilations):
    assert blocks.tc_dilations(steps, dilation_start) == dilations


@pytest.mark.equation("snail_blocks", "(3)")
def test_tc_block_count_is_ceil_log2_for_every_length():
    for steps in range(1, 2050):
        assert len(blocks.tc_dilations(steps)) == math.ceil(math.log2(steps))


@pytest.mark.equation("snail_blocks", "(3)")
def test_tc_block_is_dense_blocks_in_sequence(dev):
    rng = np.random.default_rng(4)
    params = blocks.tc_block_init(rng, 2, 5, 3)
    x = dev.asarray(rng.standard_normal((5, 2)))
    expected = x
    for i, dilation in enumerate([2, 4, 8]):
        expected = blocks.dense_block({k[7:]: dev.asarray(v) for k, v in params.items()
                                       if k.startswith(f"dense{i}.")}, expected, dilation)
    close(dev, blocks.tc_block(dev.tree(params), x, [2, 4, 8]), dev.to_host(expected), rtol=0, atol=0)


def test_a_stack_is_its_blocks_in_order_with_every_output_and_attention_read(dev):
    rng = np.random.default_rng(12)
    specs, steps = (("attention", 3, 2), ("tc", 2), ("attention", 2, 3)), 5
    params = blocks.stack_init(rng, 4, specs, steps, kernel_size=2)
    assert blocks.stack_channels(4, specs, steps) == [4, 6, 12, 15]
    x = dev.asarray(rng.standard_normal((2, steps, 4)))
    out, found = blocks.stack(dev.tree(params), x, specs, [2, 4, 8], return_intermediates=True)
    sub = lambda j: {k[len(f"block{j}."):]: dev.asarray(v) for k, v in params.items() if k.startswith(f"block{j}.")}
    h0, p0 = blocks.attention_block(sub(0), x, return_probs=True)
    h1 = blocks.tc_block(sub(1), h0, [2, 4, 8])
    h2, p2 = blocks.attention_block(sub(2), h1, return_probs=True)
    assert list(found) == ["block0.probs", "block0", "block1", "block2.probs", "block2"]
    for name, expected in (("block0.probs", p0), ("block0", h0), ("block1", h1), ("block2.probs", p2)):
        close(dev, found[name], dev.to_host(expected), rtol=0, atol=0)           # the same path
    close(dev, out, dev.to_host(h2), rtol=0, atol=0)


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


@pytest.mark.equation("snail", "(4)")
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

@pytest.mark.equation("snail_blocks", "(1)", "(2)", "(3)", "(4)")
@given(seed=seeds, dilation=st.integers(1, 5), kernel_size=st.integers(1, 3), branches=st.integers(1, 3))
def test_block_gradients_match_finite_differences(dev, seed, dilation, kernel_size, branches):
    rng = np.random.default_rng(seed)
    x = dev.asarray(rng.standard_normal((2, 5, 3)))
    dense = dev.tree(blocks.dense_block_init(rng, 3, 2, kernel_size))
    tc = dev.tree(blocks.tc_block_init(rng, 3, 5, 2, kernel_size))
    attention = dev.tree(host_tree(blocks.attention_block_init(rng, 3, 2, 2), scale=2.0))
    weights = lambda c: dev.asarray(rng.standard_normal((2, 5, c)))
    checks = [(lambda p, v: blocks.dense_block(p, v, dilation, branches), dense, 5),
              (lambda p, v: blocks.tc_block(p, v, [2, 4, 8], branches), tc, 9),
              (lambda p, v: blocks.attention_block(p, v, branches=branches), attention, 5)]
    for block, params, channels in checks:
        w = weights(channels)
        f = lambda tree: anp.sum(block(without_x(tree), tree["x"]) * w)
        gradcheck.check_grad(f, {**params, "x": x}, rng=rng)            # params and input at once


def without_x(tree):
    return {k: v for k, v in tree.items() if k not in ("x", "query")}


@pytest.mark.equation("snail", "(2)", "(3)")
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
    return checks.episode(Episode(dev.asarray(images(n_support)), dev.asarray(support_y),
                                  dev.asarray(images(n_query)), dev.asarray(query_y)), n_way=TINY.n_way)


# ----- sequences, loss, predict, training -----

@pytest.mark.equation("snail", "(1)")
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


@pytest.mark.equation("snail", "(2)")
def test_loss_is_the_query_step_cross_entropy(dev):
    """The loss by hand from make_sequences + apply (one sequence per query).  predict reads the
    queries as branches (query_logits): a different path, equal in exact arithmetic, so held to
    the rtol 1e-13 of test_query_logits_equal_one_sequence_per_query.  On this episode the two
    agree to the bit on numpy and the strict array (201 draws), but not in general: over 50
    draws of the K = 1, 2, 3 model (SHOTS) they differ by up to 2.7e-14 relative."""
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
    close(dev, snail.predict(params, episode, TINY), logits, rtol=1e-13, atol=1e-15)   # two paths


def test_init_state_starts_on_the_params_device_and_dtype(dev):
    params = {k: dev.asarray(v.astype(np.float32)) for k, v in snail.init(np.random.default_rng(0), TINY).items()}
    state = snail.init_state(params, TINY)
    assert isinstance(state, State) and state.optimizer.step == 0
    assert set(state.bn) == {f"embed.bn{i}.{s}" for i in range(4) for s in ("mean", "var")}
    assert all(dev.is_array(v) and v.dtype == np.float32 for v in state.bn.values())
    close(dev, state.bn["embed.bn2.mean"], np.zeros(2))
    close(dev, state.bn["embed.bn2.var"], np.ones(2))


def test_step_fits_a_fixed_batch_and_tracks_running_statistics(dev):
    rng = np.random.default_rng(7)
    config = dataclasses.replace(TINY, meta_lr=1e-2, bn_momentum=0.25)
    params = dev.tree(snail.init(rng, config))
    episode = tiny_episode(dev, rng, n_tasks=2, n_query=3)
    state = snail.init_state(params, config)
    images = anp.concatenate([episode.support_x, episode.query_x], axis=1)
    _, moments = snail.embed(params, images, config, return_bn_moments=True)
    first = float(snail.loss(params, episode, config))
    params, state, loss = snail.step(params, state, episode, config)
    assert float(loss) == pytest.approx(first, rel=1e-12)
    assert state.optimizer.step == 1
    for name in ("embed.bn0.mean", "embed.bn3.var"):                      # r ← 0.75 r + 0.25 batch
        initial = 0.0 if name.endswith("mean") else 1.0
        close(dev, state.bn[name], 0.75 * initial + 0.25 * dev.to_host(moments[name]))
    for _ in range(30):
        params, state, loss = snail.step(params, state, episode, config)
    assert float(snail.loss(params, episode, config)) < 0.2 * first


def test_meta_lr_zero_leaves_the_params_as_they_were(dev):
    rng = np.random.default_rng(10)
    config = dataclasses.replace(TINY, meta_lr=0.0)
    params = dev.tree(snail.init(rng, config))
    new, _, _ = snail.step(params, snail.init_state(params, config), tiny_episode(dev, rng, 1, 2), config)
    for name in params:
        close(dev, new[name], dev.to_host(params[name]), rtol=0, atol=0)


def test_running_mode_embeds_every_image_on_its_own(dev):
    """With running statistics the prediction of one episode does not depend on the others in
    the batch: a meta-batch gives each task's logits exactly as that task alone."""
    rng = np.random.default_rng(11)
    config = dataclasses.replace(TINY, bn_mode="running")
    params = dev.tree(snail.init(rng, config))
    episode = tiny_episode(dev, rng, n_tasks=3, n_query=2)
    state = snail.init_state(params, config)
    _, state, _ = snail.step(params, state, episode, config)               # statistics of a batch
    logits = dev.to_host(snail.predict(params, episode, config, state=state))
    assert logits.shape == (3, 2, TINY.n_way)
    for t in range(3):
        alone = Episode(*(field[t] for field in episode))
        # One task through the same layers as the meta-batch: agreement to rounding.
        close(dev, snail.predict(params, alone, config, state=state), logits[t], rtol=1e-13, atol=1e-14)
    loss = float(snail.loss(params, episode, config, state=state))
    labels = dev.to_host(episode.query_y)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert loss == pytest.approx(-np.take_along_axis(log_probs, labels[..., None], -1).mean(), rel=1e-12)


def test_conventions_are_json_and_complete():
    import json
    conventions = snail.SNAILConfig().conventions()
    assert json.loads(json.dumps(conventions)) == conventions
    assert conventions["blocks"] == [["attention", 64, 32], ["tc", 128], ["attention", 256, 128],
                                     ["tc", 128], ["attention", 512, 256]]
    assert conventions["dilations"] == [2, 4, 8] and conventions["sequence_length"] == 6
    assert conventions["kernel_size"] == 2 and conventions["channels"][-1] == 1253
    assert conventions["bn_mode"] == "transductive" and conventions["meta_lr"] == 1e-3
    assert conventions["bn_momentum"] == 0.1
    fields = {f.name for f in dataclasses.fields(snail.SNAILConfig)}
    assert fields <= set(conventions)


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


# ----- bad input, at the entry points -----

@pytest.fixture
def good(dev):
    """(params, episode, state) of TINY on ``dev``: 2 tasks, 3-way 1-shot, 2 queries."""
    rng = np.random.default_rng(8)
    params = dev.tree(snail.init(rng, TINY))
    return params, tiny_episode(dev, rng, n_tasks=2, n_query=2), snail.init_state(params, TINY)


def replaced(dev, episode, **fields):
    return episode._replace(**{k: dev.asarray(v) for k, v in fields.items()})


def test_nan_and_inf_in_the_images_are_refused(dev, good):
    params, episode, state = good
    for field, value in (("support_x", np.nan), ("query_x", np.inf)):
        images = dev.to_host(getattr(episode, field)).copy()
        images[1, 0, 0, 3, 4] = value
        bad = replaced(dev, episode, **{field: images})
        for entry in (lambda: snail.loss(params, bad, TINY), lambda: snail.predict(params, bad, TINY),
                      lambda: snail.step(params, state, bad, TINY)):
            with pytest.raises(ValueError, match=f"{field} contains NaN or inf"):
                entry()


def test_nan_and_inf_in_the_params_are_refused(dev, good):
    params, episode, state = good
    for name, value in (("block2.key.w", np.nan), ("embed.conv0.b", -np.inf)):
        leaf = dev.to_host(params[name]).copy()
        leaf.flat[0] = value
        bad = {**params, name: dev.asarray(leaf)}
        with pytest.raises(ValueError, match=re.escape(f"params['{name}'] contains NaN or inf")):
            snail.predict(bad, episode, TINY)
        with pytest.raises(ValueError, match=re.escape(f"params['{name}'] contains NaN or inf")):
            snail.step(bad, state, episode, TINY)
        with pytest.raises(ValueError, match=re.escape(f"params['{name}'] contains NaN or inf")):
            snail.init_state(bad, TINY)


def test_labels_outside_0_to_n_minus_1_are_refused(dev, good):
    params, episode, _ = good
    with pytest.raises(ValueError, match=r"support_y: labels must be in 0..2 \(n_way=3\); got values from 0 to 3"):
        snail.loss(params, replaced(dev, episode, support_y=np.array([[0, 1, 3], [2, 1, 0]])), TINY)
    with pytest.raises(ValueError, match=r"query_y: labels must be in 0..2 \(n_way=3\); got values from -1"):
        snail.predict(params, replaced(dev, episode, query_y=np.array([[0, -1], [2, 1]])), TINY)


def test_non_integer_labels_are_refused(dev, good):
    params, episode, state = good
    with pytest.raises(TypeError, match="support_y: class labels must be integers; got float64"):
        snail.step(params, state, replaced(dev, episode, support_y=dev.to_host(episode.support_y) * 1.0), TINY)
    with pytest.raises(TypeError, match="query_y: class labels must be integers; got float64"):
        snail.loss(params, replaced(dev, episode, query_y=dev.to_host(episode.query_y) * 1.0), TINY)


def test_empty_support_and_query_sets_and_zero_tasks_are_refused(dev, good):
    params, episode, _ = good
    host = {field: dev.to_host(getattr(episode, field)) for field in episode._fields}
    with pytest.raises(ValueError, match="the support set is empty"):
        snail.loss(params, replaced(dev, episode, support_x=host["support_x"][:, :0],
                                    support_y=host["support_y"][:, :0]), TINY)
    with pytest.raises(ValueError, match="the query set is empty"):
        snail.predict(params, replaced(dev, episode, query_x=host["query_x"][:, :0],
                                       query_y=host["query_y"][:, :0]), TINY)
    no_tasks = replaced(dev, episode, **{field: value[:0] for field, value in host.items()})
    with pytest.raises(ValueError, match=r"holds no task \(T = 0\): support_x \(0, 3, 1, 16, 16\)"):
        snail.loss(params, no_tasks, TINY)


def test_a_support_set_that_is_not_n_way_k_shot_is_refused(dev, good):
    params, episode, state = good
    host_x = dev.to_host(episode.support_x)
    four = replaced(dev, episode, support_x=np.concatenate([host_x, host_x[:, :1]], axis=1),
                    support_y=np.array([[0, 1, 2, 0], [2, 1, 0, 1]]))
    with pytest.raises(ValueError, match=re.escape("the support set must hold N·K examples, N = 3 and "
                                                   "K in (1,): 3; got 4")):
        snail.step(params, state, four, TINY)
    twice = replaced(dev, episode, support_y=np.array([[0, 0, 1], [2, 1, 0]]))
    with pytest.raises(ValueError, match=r"each class exactly 1 time\(s\); got counts \[2, 1, 0\]"):
        snail.predict(params, twice, TINY)


def test_images_of_another_size_are_refused(dev, good):
    params, episode, _ = good
    big = lambda n: np.zeros((2, n, 1, 28, 28))
    with pytest.raises(ValueError, match=r"support_x: each example must have shape \(1, 16, 16\); "
                                         r"got \(1, 28, 28\)"):
        snail.loss(params, replaced(dev, episode, support_x=big(3), query_x=big(2)), TINY)
    with pytest.raises(ValueError, match="support and query disagree"):
        snail.predict(params, replaced(dev, episode, query_x=big(2)), TINY)


def test_params_with_a_missing_an_extra_or_a_misshapen_key_or_none_are_refused(dev, good):
    params, episode, _ = good
    missing = {k: v for k, v in params.items() if k != "block1.dense1.gate.b"}
    with pytest.raises(ValueError, match=r"missing \['block1.dense1.gate.b'\], unexpected \[\]"):
        snail.predict(missing, episode, TINY)
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \['block9.key.w'\]"):
        snail.init_state({**params, "block9.key.w": params["out.w"]}, TINY)
    with pytest.raises(ValueError, match=r"params\['out.b'\] must have shape \(3,\); got \(4,\)"):
        snail.loss({**params, "out.b": dev.asarray(np.zeros(4))}, episode, TINY)
    with pytest.raises(ValueError, match="params is empty"):
        snail.loss({}, episode, TINY)
    with pytest.raises(TypeError, match="params must be a dict of arrays; got list"):
        snail.init_state(list(params.values()), TINY)


def test_running_mode_needs_the_state_and_transductive_mode_does_not_read_it(dev, good):
    params, episode, state = good
    running = dataclasses.replace(TINY, bn_mode="running")
    with pytest.raises(ValueError, match="state is required: batch norm in mode 'running' normalises by "
                                         "state.bn"):
        snail.predict(params, episode, running)
    far = state._replace(bn={k: v + 3.0 for k, v in state.bn.items()})
    close(dev, snail.loss(params, episode, TINY, state=far), dev.to_host(snail.loss(params, episode, TINY)),
          rtol=0, atol=0)                                                  # the same path: not read
    assert not np.allclose(dev.to_host(snail.predict(params, episode, running, state=far)),
                           dev.to_host(snail.predict(params, episode, running, state=state)))


def test_bad_running_statistics_are_refused(dev, good):
    params, episode, state = good
    running = dataclasses.replace(TINY, bn_mode="running")
    negative = state._replace(bn={**state.bn, "embed.bn1.var": dev.asarray(-np.ones(2))})
    with pytest.raises(ValueError, match=re.escape("state.bn['embed.bn1.var'] must be >= 0 everywhere")):
        snail.predict(params, episode, running, state=negative)
    nan = state._replace(bn={**state.bn, "embed.bn0.mean": dev.asarray(np.full(2, np.nan))})
    with pytest.raises(ValueError, match=re.escape("state.bn['embed.bn0.mean'] contains NaN or inf")):
        snail.loss(params, episode, running, state=nan)
    missing = state._replace(bn={k: v for k, v in state.bn.items() if k != "embed.bn3.var"})
    with pytest.raises(ValueError, match=r"state.bn do not match the model: missing \['embed.bn3.var'\]"):
        snail.predict(params, episode, running, state=missing)
    with pytest.raises(ValueError, match=re.escape("state.bn['embed.bn2.var'] must be >= 0 everywhere")):
        snail.step(params, state._replace(bn={**state.bn, "embed.bn2.var": dev.asarray(-np.ones(2))}),
                   episode, TINY)


def test_a_bad_training_state_is_refused(dev, good):
    params, episode, state = good
    with pytest.raises(TypeError, match="state must be a State; got AdamState"):
        snail.step(params, state.optimizer, episode, TINY)
    adam = state.optimizer
    for value, message in ((np.zeros((5, 3)), "state.optimizer.m['out.w'] must have shape (16, 3); got (5, 3)"),
                           (np.full((16, 3), np.nan), "state.optimizer.m['out.w'] contains NaN or inf")):
        m = {**adam.m, "out.w": dev.asarray(value)}
        with pytest.raises(ValueError, match=re.escape(message)):
            snail.step(params, state._replace(optimizer=adam._replace(m=m)), episode, TINY)
    v = {**adam.v, "out.b": dev.asarray(-np.ones(3))}
    with pytest.raises(ValueError, match=re.escape("state.optimizer.v['out.b'] must be >= 0 everywhere")):
        snail.step(params, state._replace(optimizer=adam._replace(v=v)), episode, TINY)


def test_the_wrong_config_or_rng_kind_is_refused(dev, good):
    params, episode, state = good
    with pytest.raises(TypeError, match="config must be a SNAILConfig; got dict"):
        snail.loss(params, episode, dataclasses.asdict(TINY))
    with pytest.raises(TypeError, match="rng must be a Generator; got int"):
        snail.init(0, TINY)
    with pytest.raises(TypeError, match="expected an Episode"):
        snail.predict(params, {"support_x": episode.support_x}, TINY)


@pytest.mark.parametrize("field, value, error, message", [
    ("n_way", 1, ValueError, "n_way must be an integer >= 2; got 1"),
    ("k_shot", 0, ValueError, "k_shot must be an integer >= 1; got 0"),
    ("k_shot", None, ValueError, "give k_shot .* or train_shots .*, the other None; got k_shot=None "
                                 "and train_shots=None"),
    ("train_shots", (1, 5), ValueError, r"got k_shot=1 and train_shots=\(1, 5\)"),
    ("embedding_dim", -4, ValueError, "embedding_dim must be an integer >= 1; got -4"),
    ("embedding_filters", 2.5, TypeError, "embedding_filters must be an integer >= 1; got 2.5"),
    ("kernel_size", 0, ValueError, "kernel_size must be an integer >= 1; got 0"),
    ("dilation_start", -1, ValueError, "dilation_start must be an integer >= 0; got -1"),
    ("image_size", 8, ValueError, "image_size must be an integer >= 16; got 8"),
    ("image_channels", True, TypeError, "image_channels must be an integer >= 1; got True"),
    ("blocks", (("attention", 3),), ValueError,
     r"blocks\[0\] must be \('attention', key_size, value_size\) or \('tc', filters\)"),
    ("blocks", (("tc", 2), ("lstm", 4)), ValueError, r"blocks\[1\] must be .*; got \('lstm', 4\)"),
    ("blocks", (("attention", 3, 0),), ValueError, r"blocks\[0\] value_size must be an integer >= 1; got 0"),
    ("blocks", [("tc", 2)], TypeError, "blocks must be a tuple; got list"),
    ("embedding_linear", 1, TypeError, "embedding_linear must be True or False; got 1"),
    ("bn_eps", 0.0, ValueError, r"bn_eps must be a finite number > 0; got 0.0"),
    ("attention_init_gain", math.nan, ValueError, "attention_init_gain must be a finite number > 0"),
    ("attention_init_gain", -1.0, ValueError, "attention_init_gain must be a finite number > 0"),
    ("attention_init_gain", "4", TypeError, "attention_init_gain must be a finite number > 0"),
    ("bn_mode", "eval", ValueError, "bn_mode must be one of 'transductive', 'running'; got 'eval'"),
    ("meta_lr", -1e-3, ValueError, "meta_lr must be a finite number >= 0; got -0.001"),
    ("meta_lr", math.inf, ValueError, "meta_lr must be a finite number >= 0; got inf"),
    ("bn_momentum", 1.5, ValueError, r"bn_momentum must be a finite number in \[0, 1\]; got 1.5"),
    ("bn_momentum", None, TypeError, r"bn_momentum must be a finite number in \[0, 1\]; got None"),
])
def test_config_refuses_out_of_range_and_wrongly_typed_fields(field, value, error, message):
    with pytest.raises(error, match=message):
        snail.SNAILConfig(**{field: value})


@pytest.mark.parametrize("train_shots, error, message", [
    ((), ValueError, r"train_shots must hold at least one integer; got \(\)"),
    ((2, 1), ValueError, r"train_shots must be strictly increasing; got \(2, 1\)"),
    ((1, 1), ValueError, r"train_shots must be strictly increasing; got \(1, 1\)"),
    ((0, 1), ValueError, r"train_shots\[0\] must be an integer >= 1; got 0"),
    ((1, 2.0), TypeError, r"train_shots\[1\] must be an integer >= 1; got 2.0"),
    ([1, 2], TypeError, "train_shots must be a tuple; got list"),
])
def test_config_refuses_train_shots_that_are_not_increasing_positive_integers(train_shots, error, message):
    with pytest.raises(error, match=message):
        snail.SNAILConfig(k_shot=None, train_shots=train_shots)


def test_config_refuses_an_embedding_width_without_the_linear_layer():
    with pytest.raises(ValueError, match="without embedding_linear the embedding is the conv output, "
                                         "64 wide; got embedding_dim=32"):
        snail.SNAILConfig(embedding_linear=False, embedding_dim=32)
    params = snail.init(np.random.default_rng(0), snail.SNAILConfig(embedding_linear=False, embedding_dim=64))
    assert "embed.out.w" not in params and params["block0.query.w"].shape == (64 + 5, 64)


# ----- an independent implementation: the same stack in PyTorch -----

@pytest.mark.equation("snail", "(3)")
@pytest.mark.equation("snail_blocks", "(1)", "(2)", "(3)", "(4)")
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
