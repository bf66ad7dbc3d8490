"""Reptile: the update rules, the k = 1 joint-training identity, an independent Adam, and the
checks at its public entry points."""

import dataclasses
import math
import re

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad
from hypothesis import given, strategies as st

from helpers import max_abs_diff, mlp_loss, regression_episode, tiny_mlp, tiny_mlp_model
from refmeta import contract, gradcheck, reptile
from refmeta.data import inner_batches
from refmeta.nn import losses, models, trees

EMPTY = contract.State(None, {})                 # Reptile's state: its update keeps none

seeds = st.integers(0, 2**32 - 1)
loss_fn = mlp_loss("tanh")
MODEL = tiny_mlp_model()


def config_with(**fields):
    return reptile.ReptileConfig(MODEL, **fields)


def setup(dev, seed, n_tasks=2, n_support=5):
    rng = np.random.default_rng(seed)
    return rng, dev.tree(tiny_mlp(rng)), regression_episode(dev, rng, n_tasks, n_support, n_query=3)


def step_params(params, episode, config, batch_indices=None):
    return reptile.step(params, EMPTY, episode, config, batch_indices=batch_indices).params


@pytest.mark.equation("reptile", "(2)")
@given(seed=seeds, inner_steps=st.integers(1, 4), optimizer=st.sampled_from(["sgd", "adam"]))
def test_batched_one_task_step_one_lands_on_adapted_params(dev, seed, inner_steps, optimizer):
    _, params, episode = setup(dev, seed, n_tasks=1)
    config = config_with(inner_lr=0.05, inner_steps=inner_steps, inner_optimizer=optimizer,
                         meta_step_size=1.0)
    adapted = reptile.adapt(params, episode, config, steps=inner_steps)
    assert max_abs_diff(step_params(params, episode, config), trees.take_task(adapted, 0), dev) < 1e-14


@pytest.mark.equation("reptile", "(2)")
@given(seed=seeds, inner_lr=st.floats(0.001, 0.3), meta_step_size=st.floats(0.01, 1.0),
       n_tasks=st.integers(1, 4))
def test_one_sgd_step_is_a_joint_training_step(dev, seed, inner_lr, meta_step_size, n_tasks):
    """k = 1: φ_new − φ = −ε α (1/n) Σ_i ∇L_i(φ)."""
    _, params, episode = setup(dev, seed, n_tasks)
    config = config_with(inner_lr=inner_lr, inner_steps=1, inner_optimizer="sgd",
                         meta_step_size=meta_step_size)
    joint = grad(lambda p: anp.mean(loss_fn(p, episode.support_x, episode.support_y, "mean")))(params)
    expected = trees.subtract(params, trees.scale(joint, meta_step_size * inner_lr))
    assert max_abs_diff(step_params(params, episode, config), expected, dev) < 1e-14


@pytest.mark.equation("reptile", "(2)")
@given(seed=seeds, n_tasks=st.integers(1, 5), optimizer=st.sampled_from(["sgd", "adam"]))
def test_sum_and_mean_over_tasks_differ_by_the_task_count(dev, seed, n_tasks, optimizer):
    _, params, episode = setup(dev, seed, n_tasks)
    common = dict(inner_lr=0.05, inner_steps=2, inner_optimizer=optimizer, meta_step_size=0.3)
    summed = reptile.step(params, EMPTY, episode, config_with(task_reduction="sum", **common))
    meaned = reptile.step(params, EMPTY, episode, config_with(task_reduction="mean", **common))
    assert max_abs_diff(trees.subtract(summed.params, params),
                        trees.scale(trees.subtract(meaned.params, params), n_tasks), dev) < 1e-13
    # the reported losses follow the same task reduction (the same sum, divided by T or not)
    assert abs(float(summed.loss) - n_tasks * float(meaned.loss)) <= 1e-13 * abs(float(summed.loss))


@pytest.mark.equation("reptile", "(1)")
@given(seed=seeds, meta_step_size=st.floats(0.0, 1.0))
def test_serial_step_interpolates_toward_each_task_in_turn(dev, seed, meta_step_size):
    _, params, episode = setup(dev, seed, n_tasks=3)
    config = config_with(inner_lr=0.05, inner_steps=2, meta_step_size=meta_step_size, variant="serial")
    expected = params
    for t in range(3):
        one = slice(t, t + 1)
        adapted = reptile.adapt_trajectory(trees.broadcast_tasks(expected, 1), episode.support_x[one],
                                           episode.support_y[one], config)[-1]
        expected = {k: expected[k] + meta_step_size * (adapted[k][0] - expected[k]) for k in expected}
    assert max_abs_diff(step_params(params, episode, config), expected, dev) < 1e-14


@given(seed=seeds, variant=st.sampled_from(["batched", "serial"]), batch_size=st.integers(1, 5),
       inner_steps=st.integers(0, 3))
def test_step_reports_the_support_loss_at_the_starting_params(dev, seed, variant, batch_size, inner_steps):
    """Step.loss = mean over tasks of L_i(φ) on the first inner step's batch (the whole support
    set when there is no inner step)."""
    rng, params, episode = setup(dev, seed, n_tasks=3, n_support=5)
    config = config_with(inner_lr=0.05, inner_steps=inner_steps, variant=variant)
    batches = inner_batches.sample_inner_batches(rng, 3, 5, inner_steps, batch_size)
    result = reptile.step(params, EMPTY, episode, config, batch_indices=dev.asarray(batches))
    task_params = trees.broadcast_tasks(params, 3)
    if inner_steps:
        x = np.stack([dev.to_host(episode.support_x)[t, batches[t, 0]] for t in range(3)])
        y = np.stack([dev.to_host(episode.support_y)[t, batches[t, 0]] for t in range(3)])
        expected = loss_fn(task_params, dev.asarray(x), dev.asarray(y), "mean")
    else:
        expected = loss_fn(task_params, episode.support_x, episode.support_y, "mean")
    expected = float(dev.to_host(anp.mean(expected)))
    # Σ_i L_i / T (the step) against mean_i L_i (here): the same numbers summed in another order
    assert abs(float(dev.to_host(result.loss)) - expected) <= 1e-13 * abs(expected)
    assert result.state == EMPTY


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
    config = config_with(inner_lr=0.01, inner_steps=4, adam_b1=b1)
    batches = inner_batches.sample_inner_batches(rng, 2, 5, 4, batch_size)
    adapted = reptile.adapt(params, episode, config, steps=4, batch_indices=batches)
    for t in range(2):
        expected = reference_adam(params, episode.support_x[t], episode.support_y[t], 0.01, b1, 0.999,
                                  1e-8, 4, batches[t])
        for k in params:  # two implementations of Adam: rounding only
            np.testing.assert_allclose(adapted[k][t], expected[k], rtol=1e-12, atol=1e-14)


class _Numpy:
    name = "numpy"
    asarray = staticmethod(np.asarray)
    tree = staticmethod(lambda t: t)


_numpy = _Numpy()


def test_mini_batches_on_device_match_host(dev):
    rng, params, episode = setup(dev, 4, n_tasks=2, n_support=6)
    batches = inner_batches.sample_inner_batches(rng, 2, 6, 3, 2)
    config = config_with(inner_lr=0.05, inner_steps=3, inner_optimizer="sgd")
    on_device = step_params(params, episode, config, dev.asarray(batches))
    host_params = {k: dev.to_host(v) for k, v in params.items()}
    host_episode = type(episode)(*(dev.to_host(a) for a in episode))
    on_host = step_params(host_params, host_episode, config, batches)
    assert max_abs_diff(on_device, on_host, dev) < 1e-14


def test_adapt_loss_and_predict_use_their_step_counts(dev):
    _, params, episode = setup(dev, 6, n_tasks=2)
    config = config_with(inner_lr=0.05, inner_steps=2, test_inner_steps=4, inner_optimizer="sgd")
    trajectory = reptile.adapt_trajectory(trees.broadcast_tasks(params, 2), episode.support_x,
                                          episode.support_y, config, steps=4)
    adapted = reptile.adapt(params, episode, config)
    assert isinstance(adapted, dict) and max_abs_diff(adapted, trajectory[4], dev) == 0
    predicted = reptile.predict(params, episode, config)
    assert max_abs_diff(predicted, MODEL.apply(trajectory[4], episode.query_x), dev) == 0
    query = anp.mean(loss_fn(trajectory[2], episode.query_x, episode.query_y, "mean"))
    # Σ_i / T against mean_i: the same numbers, another order of summation
    assert abs(float(reptile.loss(params, episode, config)) - float(query)) <= 1e-13 * float(query)


def test_init_and_conventions():
    config = config_with()
    params = reptile.init(np.random.default_rng(0), config)
    assert sorted(params) == sorted(tiny_mlp(np.random.default_rng(0)))
    assert reptile.init_state(params, config) == EMPTY == contract.State(optimizer=None, bn={})
    conventions = config.conventions()
    assert conventions["model"] == MODEL.name and conventions["test_inner_steps"] == 50
    assert "reset for every task" in conventions["inner_optimizer_state"]
    assert "carry Adam's moments over" in conventions["inner_optimizer_state"]
    assert set(conventions) == {f.name for f in dataclasses.fields(config)} | {"inner_optimizer_state"}


@given(seed=seeds, n_examples=st.integers(1, 12), steps=st.integers(1, 6), data=st.data())
def test_inner_batches_follow_the_shuffle_and_cut_scheme(seed, n_examples, steps, data):
    batch_size = data.draw(st.integers(1, n_examples))
    first = inner_batches.sample_inner_batches(np.random.default_rng(seed), 3, n_examples, steps, batch_size)
    again = inner_batches.sample_inner_batches(np.random.default_rng(seed), 3, n_examples, steps, batch_size)
    assert first.shape == (3, steps, batch_size) and np.array_equal(first, again)
    assert first.min() >= 0 and first.max() < n_examples
    for batch in first.reshape(-1, batch_size):
        assert len(set(batch.tolist())) == batch_size  # no example twice in one batch


def test_inner_gradient_matches_finite_differences(dev):
    _, params, episode = setup(dev, 7, n_tasks=1)
    task = trees.broadcast_tasks(params, 1)
    gradcheck.check_grad(lambda p: anp.sum(loss_fn(p, episode.support_x, episode.support_y, "mean")), task)


# ----- bad input at the public entry points -----
def _every_entry(params, episode, config):
    return [lambda: reptile.loss(params, episode, config),
            lambda: reptile.step(params, EMPTY, episode, config),
            lambda: reptile.adapt(params, episode, config),
            lambda: reptile.predict(params, episode, config)]


@pytest.mark.parametrize("bad, message", [
    (dict(inner_steps=-1), "inner_steps"), (dict(inner_steps=2.0), "inner_steps"),
    (dict(test_inner_steps=-5), "test_inner_steps"),
    (dict(inner_lr=math.nan), "inner_lr"), (dict(inner_lr=-1e-3), "inner_lr"),
    (dict(inner_optimizer="rmsprop"), "inner_optimizer"), (dict(task_reduction="median"), "task_reduction"),
    (dict(inner_reduction="n_way_times_mean"), "inner_reduction"), (dict(variant="parallel"), "variant"),
    (dict(meta_step_size=math.inf), "meta_step_size"), (dict(meta_step_size=-0.5), "meta_step_size"),
    (dict(adam_b1=1.0), "adam_b1"), (dict(adam_b2=-0.1), "adam_b2"), (dict(adam_eps=0.0), "adam_eps"),
    (dict(n_way=0), "n_way"),
])
def test_bad_config_is_refused(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        config_with(**bad)
    with pytest.raises(TypeError, match="model must be a Model"):
        reptile.ReptileConfig("mlp")
    with pytest.raises(ValueError, match="no loss"):
        reptile.ReptileConfig(contract.Model(None, None))


def test_a_model_that_declares_running_batch_norm_statistics_is_refused():
    """Reptile keeps no running statistics (its State is State(None, {})): the conv4 classifier
    whose statistics MAML tracks is refused, naming the contract; the same network without
    ``batch_norm`` (batch norm on the batch at hand, the authors') is taken."""
    from test_contract import conv4_classifier
    with pytest.raises(ValueError, match=re.escape(
            "model 'conv4 max-pool 2 filters, 2-way, cross-entropy' declares running batch-norm "
            "statistics (model.batch_norm, a contract.BatchNorm), which Reptile does not keep: its "
            "State is State(None, {}); give the Model batch_norm=None")):
        reptile.ReptileConfig(model=conv4_classifier(batch_norm=True), n_way=2)
    config = reptile.ReptileConfig(model=conv4_classifier(), n_way=2)
    params = reptile.init(np.random.default_rng(0), config)
    assert reptile.init_state(params, config) == contract.State(None, {})


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nan_or_inf_in_data_and_params_is_refused(dev, value):
    _, params, episode = setup(dev, 0)
    config = config_with(inner_steps=1)
    host = dev.to_host(episode.query_x).copy()
    host[0, 1, 0] = value
    bad_episode = episode._replace(query_x=dev.asarray(host))
    bad_params = dict(params, **{"dense0.b": params["dense0.b"] + value})
    for call in _every_entry(params, bad_episode, config):
        with pytest.raises(ValueError, match="query_x contains NaN or inf"):
            call()
    for call in _every_entry(bad_params, episode, config) + [lambda: reptile.init_state(bad_params, config)]:
        with pytest.raises(ValueError, match=r"params\['dense0.b'\] contains NaN or inf"):
            call()


def test_bad_params_trees_and_empty_sets_are_refused(dev):
    _, params, episode = setup(dev, 0)
    config = config_with(inner_steps=1)
    cases = [({k: v for k, v in params.items() if k != "dense2.w"}, episode, r"missing \['dense2.w'\]"),
             (dict(params, extra=params["dense0.b"]), episode, r"unexpected \['extra'\]"),
             ({}, episode, "empty"),
             (params, episode._replace(support_x=episode.support_x[:, :0],
                                       support_y=episode.support_y[:, :0]), "support set is empty"),
             (params, episode._replace(query_x=episode.query_x[:, :0], query_y=episode.query_y[:, :0]),
              "query set is empty"),
             (params, type(episode)(*(a[:0] for a in episode)), r"T = 0")]
    for bad_params, bad_episode, message in cases:
        for call in _every_entry(bad_params, bad_episode, config):
            with pytest.raises(ValueError, match=message):
                call()


def test_labels_outside_0_to_n_minus_1_or_not_integers_are_refused(dev):
    rng = np.random.default_rng(1)
    model = contract.supervised(lambda r: tiny_mlp(r, d_in=2, d_out=3), models.mlp_apply,
                                losses.cross_entropy, "mlp 2-4-4-3 relu, cross-entropy")
    config = reptile.ReptileConfig(model, n_way=3, inner_steps=1)
    params = dev.tree(tiny_mlp(rng, d_in=2, d_out=3))
    labels = np.array([[0, 1, 2, 0]])
    episode = contract.Episode(dev.asarray(rng.standard_normal((1, 4, 2))), dev.asarray(labels),
                               dev.asarray(rng.standard_normal((1, 4, 2))), dev.asarray(labels))
    assert np.isfinite(float(reptile.loss(params, episode, config)))
    for bad, error, message in ((episode._replace(support_y=dev.asarray(labels + 1)), ValueError,
                                 r"labels must be in 0..2"),
                                (episode._replace(query_y=dev.asarray(labels * 1.0)), TypeError,
                                 "must be integers")):
        for call in _every_entry(params, bad, config):
            with pytest.raises(error, match=message):
                call()


def test_bad_batch_indices_state_and_steps_are_refused(dev):
    _, params, episode = setup(dev, 0, n_tasks=2, n_support=4)
    config = config_with(inner_steps=2)
    step = lambda batches: reptile.step(params, EMPTY, episode, config, batch_indices=batches)
    with pytest.raises(ValueError, match=r"batch_indices must have shape \(2, 2, any\)"):
        step(dev.asarray(np.zeros((2, 3, 1), int)))
    with pytest.raises(ValueError, match="0..3"):
        step(dev.asarray(np.full((2, 2, 1), 4)))
    with pytest.raises(ValueError, match="0..3"):
        step(dev.asarray(np.full((2, 2, 1), -1)))
    with pytest.raises(TypeError, match="integer array"):
        step(dev.asarray(np.zeros((2, 2, 1))))
    with pytest.raises(ValueError, match="mini-batch size"):
        step(dev.asarray(np.zeros((2, 2, 0), int)))
    with pytest.raises(ValueError, match=r"\(2, 50, any\)"):  # adapt takes test_inner_steps batches
        reptile.adapt(params, episode, config, batch_indices=dev.asarray(np.zeros((2, 2, 1), int)))
    with pytest.raises(TypeError, match="state must be a State; got dict"):
        reptile.step(params, {"step": 0}, episode, config)
    with pytest.raises(TypeError, match="state must be a State; got NoneType"):
        reptile.step(params, None, episode, config)
    with pytest.raises(TypeError, match=r"state.optimizer must be None \(this update keeps no optimizer"):
        reptile.step(params, contract.State(0, {}), episode, config)
    with pytest.raises(ValueError, match=r"state.bn must be \{\}: no batch-norm statistics are kept"):
        reptile.step(params, contract.State(None, {"bn0.mean": np.zeros(2)}), episode, config)
    one = contract.Episode(*(field[0] for field in episode))          # one task: batch indices (k, b)
    alone = reptile.adapt(params, one, config, steps=2, batch_indices=dev.asarray(np.zeros((2, 1), int)))
    first = reptile.adapt(params, episode, config, steps=2, batch_indices=dev.asarray(np.zeros((2, 2, 1), int)))
    np.testing.assert_allclose(dev.to_host(alone["dense0.w"]), dev.to_host(first["dense0.w"])[0], rtol=1e-13)
    for steps, error in ((-1, ValueError), (0.5, TypeError)):
        with pytest.raises(error, match="steps must be an integer >= 0"):
            reptile.adapt(params, episode, config, steps=steps)
        with pytest.raises(error, match="steps must be an integer >= 0"):
            reptile.predict(params, episode, config, steps=steps)
    with pytest.raises(TypeError, match="rng must be a Generator"):
        reptile.init(None, config)
    with pytest.raises(TypeError, match="config must be a ReptileConfig"):
        reptile.loss(params, episode, {"inner_lr": 1e-3})


@pytest.mark.parametrize("args, error, message", [
    ((1, 4, 2, 5), ValueError, "batch_size"), ((1, 4, 2, 0), ValueError, "batch_size"),
    ((0, 4, 2, 1), ValueError, "n_tasks"), ((1, 0, 2, 1), ValueError, "n_examples"),
    ((1, 4, -1, 1), ValueError, "inner_steps"), ((1, 4.0, 2, 1), TypeError, "n_examples"),
])
def test_bad_arguments_to_sample_inner_batches_are_refused(args, error, message):
    with pytest.raises(error, match=message):
        inner_batches.sample_inner_batches(np.random.default_rng(0), *args)
    with pytest.raises(TypeError, match="rng must be a Generator"):
        inner_batches.sample_inner_batches(0, 1, 4, 2, 1)
