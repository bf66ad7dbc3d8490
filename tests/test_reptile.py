"""Reptile: the update rules, the k = 1 joint-training identity, and an independent Adam."""

import math

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad
from hypothesis import given, strategies as st

from helpers import max_abs_diff, mlp_loss, regression_episode, tiny_mlp
from refmeta import gradcheck, reptile
from refmeta.nn import trees

seeds = st.integers(0, 2**32 - 1)
loss_fn = mlp_loss("tanh")


def setup(dev, seed, n_tasks=2, n_support=5):
    rng = np.random.default_rng(seed)
    return rng, dev.tree(tiny_mlp(rng)), regression_episode(dev, rng, n_tasks, n_support, n_query=3)


@given(seed=seeds, inner_steps=st.integers(1, 4), optimizer=st.sampled_from(["sgd", "adam"]))
def test_batched_one_task_step_one_lands_on_adapted_params(dev, seed, inner_steps, optimizer):
    _, params, episode = setup(dev, seed, n_tasks=1)
    config = reptile.ReptileConfig(inner_lr=0.05, inner_steps=inner_steps, inner_optimizer=optimizer,
                                   meta_step_size=1.0)
    adapted = reptile.adapt(trees.broadcast_tasks(params, 1), episode.support_x, episode.support_y,
                            loss_fn, config)[-1]
    updated = reptile.batched_step(params, episode, loss_fn, config)
    assert max_abs_diff(updated, trees.take_task(adapted, 0), dev) < 1e-14


@given(seed=seeds, inner_lr=st.floats(0.001, 0.3), meta_step_size=st.floats(0.01, 1.0),
       n_tasks=st.integers(1, 4))
def test_one_sgd_step_is_a_joint_training_step(dev, seed, inner_lr, meta_step_size, n_tasks):
    """k = 1: φ_new − φ = −ε α (1/n) Σ_i ∇L_i(φ)."""
    _, params, episode = setup(dev, seed, n_tasks)
    config = reptile.ReptileConfig(inner_lr=inner_lr, inner_steps=1, inner_optimizer="sgd",
                                   meta_step_size=meta_step_size)
    joint = grad(lambda p: anp.mean(loss_fn(p, episode.support_x, episode.support_y, "mean")))(params)
    expected = trees.subtract(params, trees.scale(joint, meta_step_size * inner_lr))
    assert max_abs_diff(reptile.batched_step(params, episode, loss_fn, config), expected, dev) < 1e-14


@given(seed=seeds, n_tasks=st.integers(1, 5), optimizer=st.sampled_from(["sgd", "adam"]))
def test_sum_and_mean_over_tasks_differ_by_the_task_count(dev, seed, n_tasks, optimizer):
    _, params, episode = setup(dev, seed, n_tasks)
    common = dict(inner_lr=0.05, inner_steps=2, inner_optimizer=optimizer, meta_step_size=0.3)
    summed = reptile.batched_step(params, episode, loss_fn, reptile.ReptileConfig(task_reduction="sum", **common))
    meaned = reptile.batched_step(params, episode, loss_fn, reptile.ReptileConfig(task_reduction="mean", **common))
    assert max_abs_diff(trees.subtract(summed, params),
                        trees.scale(trees.subtract(meaned, params), n_tasks), dev) < 1e-13


@given(seed=seeds, meta_step_size=st.floats(0.0, 1.0))
def test_serial_step_interpolates_toward_each_task_in_turn(dev, seed, meta_step_size):
    _, params, episode = setup(dev, seed, n_tasks=3)
    config = reptile.ReptileConfig(inner_lr=0.05, inner_steps=2, meta_step_size=meta_step_size)
    expected = params
    for t in range(3):
        one = slice(t, t + 1)
        adapted = reptile.adapt(trees.broadcast_tasks(expected, 1), episode.support_x[one],
                                episode.support_y[one], loss_fn, config)[-1]
        expected = {k: expected[k] + meta_step_size * (adapted[k][0] - expected[k]) for k in expected}
    assert max_abs_diff(reptile.serial_step(params, episode, loss_fn, config), expected, dev) < 1e-14


def reference_adam(params, x, y, inner_lr, b1, b2, eps, steps, batches):
    """Adam written out from Kingma & Ba's Algorithm 1, one task, host numpy, independent of refmeta."""
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(w) for k, w in params.items()}
    for t in range(1, steps + 1):
        rows = batches[t - 1]
        g = grad(lambda p: loss_fn(p, x[rows], y[rows], "mean"))(params)
        for k in params:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            m_hat, v_hat = m[k] / (1 - b1 ** t), v[k] / (1 - b2 ** t)
            params = dict(params, **{k: params[k] - inner_lr * m_hat / (np.sqrt(v_hat) + eps)})
    return params


@given(seed=seeds, b1=st.sampled_from([0.0, 0.9]), batch_size=st.integers(1, 5))
def test_inner_adam_on_mini_batches_matches_a_written_out_adam(seed, b1, batch_size):
    rng, params, episode = setup(_numpy, seed, n_tasks=2, n_support=5)
    config = reptile.ReptileConfig(inner_lr=0.01, inner_steps=4, adam_b1=b1)
    batches = reptile.sample_inner_batches(rng, 2, 5, 4, batch_size)
    adapted = reptile.adapt(trees.broadcast_tasks(params, 2), episode.support_x, episode.support_y,
                            loss_fn, config, batches)[-1]
    for t in range(2):
        expected = reference_adam(params, episode.support_x[t], episode.support_y[t], 0.01, b1, 0.999,
                                  1e-8, 4, batches[t])
        for k in params:
            np.testing.assert_allclose(adapted[k][t], expected[k], rtol=1e-12, atol=1e-14)


class _Numpy:
    name = "numpy"
    asarray = staticmethod(np.asarray)
    tree = staticmethod(lambda t: t)


_numpy = _Numpy()


def test_mini_batches_on_device_match_host(dev):
    rng, params, episode = setup(dev, 4, n_tasks=2, n_support=6)
    batches = reptile.sample_inner_batches(rng, 2, 6, 3, 2)
    config = reptile.ReptileConfig(inner_lr=0.05, inner_steps=3, inner_optimizer="sgd")
    on_device = reptile.batched_step(params, episode, loss_fn, config, dev.asarray(batches))
    host_params = {k: dev.to_host(v) for k, v in params.items()}
    host_episode = type(episode)(*(dev.to_host(a) for a in episode))
    on_host = reptile.batched_step(host_params, host_episode, loss_fn, config, batches)
    assert max_abs_diff(on_device, on_host, dev) < 1e-14


@given(seed=seeds, n_examples=st.integers(1, 12), steps=st.integers(1, 6), data=st.data())
def test_inner_batches_follow_the_shuffle_and_cut_scheme(seed, n_examples, steps, data):
    batch_size = data.draw(st.integers(1, n_examples))
    first = reptile.sample_inner_batches(np.random.default_rng(seed), 3, n_examples, steps, batch_size)
    again = reptile.sample_inner_batches(np.random.default_rng(seed), 3, n_examples, steps, batch_size)
    assert first.shape == (3, steps, batch_size) and np.array_equal(first, again)
    assert first.min() >= 0 and first.max() < n_examples
    for batch in first.reshape(-1, batch_size):
        assert len(set(batch.tolist())) == batch_size  # no example twice in one batch


def test_inner_gradient_matches_finite_differences(dev):
    _, params, episode = setup(dev, 7, n_tasks=1)
    task = trees.broadcast_tasks(params, 1)
    gradcheck.check_grad(lambda p: anp.sum(loss_fn(p, episode.support_x, episode.support_y, "mean")), task)


@pytest.mark.parametrize("bad, message", [
    (dict(inner_steps=-1), "inner_steps"), (dict(inner_lr=math.nan), "inner_lr"),
    (dict(inner_optimizer="rmsprop"), "inner_optimizer"), (dict(task_reduction="median"), "task_reduction"),
    (dict(meta_step_size=math.inf), "meta_step_size"),
])
def test_bad_config_is_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        reptile.ReptileConfig(**bad)


def test_bad_batch_indices_are_refused(dev):
    _, params, episode = setup(dev, 0, n_tasks=2, n_support=4)
    config = reptile.ReptileConfig(inner_steps=2)
    with pytest.raises(ValueError, match="shape"):
        reptile.batched_step(params, episode, loss_fn, config, dev.asarray(np.zeros((2, 3, 1), int)))
    with pytest.raises(ValueError, match="0..3"):
        reptile.batched_step(params, episode, loss_fn, config, dev.asarray(np.full((2, 2, 1), 4)))
    with pytest.raises(ValueError, match="batch_size"):
        reptile.sample_inner_batches(np.random.default_rng(0), 1, 4, 2, 5)
