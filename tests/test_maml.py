"""MAML: finite differences, the explicit Hessian product, a hand-checked quadratic, identities,
and the checks at its public entry points."""

import dataclasses
import functools
import math

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad, jacobian
from hypothesis import assume, given, strategies as st

from helpers import (check_grad_away_from_kinks, classification_episode, max_abs_diff, mlp_loss,
                     regression_episode, tiny_mlp, tiny_mlp_model)
from refmeta import contract, gradcheck, maml
from refmeta.contract import State
from refmeta.data import tasks
from refmeta.nn import layers, losses, models, optimizers, trees

seeds = st.integers(0, 2**32 - 1)


def min_abs_preactivation(params_list, xs):
    """Smallest |pre-activation| of the MLP's hidden units over the given params and inputs."""
    smallest = np.inf
    for params in params_list:
        for x in xs:
            h = x
            n_layers = len(params) // 2
            for i in range(n_layers - 1):
                z = layers.dense(h, params[f"dense{i}.w"], params[f"dense{i}.b"])
                smallest = min(smallest, float(anp.min(anp.abs(z))))
                h = layers.relu(z)
    return smallest


def conv4_model(n_way, hidden=2, variant="stride", bn_affine="offset", image_size=8):
    """A tiny conv4 with transductive batch norm and the cross-entropy loss."""
    return contract.supervised(
        lambda rng: models.conv4_init(rng, 1, n_way, hidden, variant, bn_affine, image_size),
        lambda p, x: models.conv4_apply(p, x, variant=variant),
        functools.partial(losses.cross_entropy, check=False), f"conv4 {variant} {hidden}, ce")


@pytest.mark.equation("maml", "(3)")
@given(seed=seeds, inner_steps=st.sampled_from([1, 2, 3]), inner_lr=st.floats(0.01, 0.3),
       activation=st.sampled_from(["tanh", "relu"]), n_tasks=st.integers(1, 3),
       hidden=st.integers(2, 5), n_support=st.integers(2, 5),
       task_reduction=st.sampled_from(["mean", "sum"]))
def test_meta_gradient_matches_finite_differences_mlp(dev, seed, inner_steps, inner_lr, activation,
                                                      n_tasks, hidden, n_support, task_reduction):
    rng = np.random.default_rng(seed)
    params = dev.tree(tiny_mlp(rng, hidden=hidden))
    episode = regression_episode(dev, rng, n_tasks, n_support, n_query=4)
    config = maml.MAMLConfig(tiny_mlp_model(hidden=hidden, activation=activation), inner_lr=inner_lr,
                             inner_steps=inner_steps, task_reduction=task_reduction)
    if activation == "relu":  # central differences are only valid away from ReLU's kink
        trajectory = maml.adapt_trajectory(trees.broadcast_tasks(params, n_tasks), episode.support_x,
                                           episode.support_y, config)
        assume(min_abs_preactivation(trajectory, [episode.support_x, episode.query_x]) > 1e-4)
    gradcheck.check_grad(lambda p: maml.loss(p, episode, config), params,
                         rng=np.random.default_rng(seed))


@pytest.mark.equation("maml", "(3)")
@given(seed=seeds, inner_steps=st.sampled_from([1, 2]), adapt_bn=st.booleans(),
       variant=st.sampled_from(["stride", "maxpool"]))
def test_meta_gradient_matches_finite_differences_conv_bn(dev, seed, inner_steps, adapt_bn, variant):
    """A tiny 4-block conv net with transductive batch norm (offset and scale), 3-way 2-shot."""
    rng = np.random.default_rng(seed)
    params = dev.tree(models.conv4_init(rng, in_channels=1, n_out=3, hidden=2, variant=variant,
                                        bn_affine="both", image_size=16))
    episode = classification_episode(dev, rng, n_tasks=2, n_way=3, n_shot=2, n_query=1,
                                     image_shape=(1, 16, 16))
    config = maml.MAMLConfig(conv4_model(3, variant=variant, bn_affine="both", image_size=16), n_way=3,
                             inner_lr=0.1, inner_steps=inner_steps, inner_reduction="n_way_times_mean",
                             adapt_bn=adapt_bn)
    f = lambda p: maml.loss(p, episode, config)
    assume(check_grad_away_from_kinks(f, params, rng, n_directions=2) > 0)


def support_loss_flat(unflatten, loss_fn, x, y, reduction):
    return lambda v: loss_fn(trees.broadcast_tasks(unflatten(v), 1), x, y, reduction)[0]


@pytest.mark.equation("maml", "(3)")
@given(seed=seeds, inner_steps=st.sampled_from([1, 2, 3]), inner_lr=st.floats(0.01, 0.5))
def test_meta_gradient_equals_explicit_hessian_product(seed, inner_steps, inner_lr):
    """(3): ∇L(θ) = (I − αH_0)…(I − αH_{k−1}) ∇L^Q(θ_k), Hessians formed in full (one task)."""
    rng = np.random.default_rng(seed)
    params = tiny_mlp(rng, hidden=3)
    episode = regression_episode(_numpy, rng, n_tasks=1, n_support=4, n_query=5)
    config = maml.MAMLConfig(tiny_mlp_model(hidden=3), inner_lr=inner_lr, inner_steps=inner_steps)
    loss_fn = mlp_loss("tanh")

    theta, unflatten = trees.flatten(params)
    support = support_loss_flat(unflatten, loss_fn, episode.support_x, episode.support_y, "mean")
    query = support_loss_flat(unflatten, loss_fn, episode.query_x, episode.query_y, "mean")
    thetas = [theta]
    for _ in range(inner_steps):
        thetas.append(thetas[-1] - inner_lr * grad(support)(thetas[-1]))
    product = grad(query)(thetas[-1])
    for theta_j in reversed(thetas[:-1]):  # apply (I − αH_{k−1}) first, (I − αH_0) last
        product = product - inner_lr * jacobian(grad(support))(theta_j) @ product

    expected = unflatten(product)
    actual = maml.meta_gradient(params, episode, config)
    for name in params:  # two computations of (3): autograd through the steps vs full Hessians
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-10, atol=1e-12)


class _Numpy:
    """The numpy backend for tests that form Hessians with autograd's jacobian."""
    name = "numpy"
    asarray = staticmethod(np.asarray)


_numpy = _Numpy()


def quadratic_model(n):
    """Per-task ½ θᵀAθ − bᵀθ as a Model: "x" carries A (T, n, n), "y" carries b as (T, n, 1)."""
    def task_losses(params, a, b, reduction):
        theta = params["theta"]                                             # (T, n)
        return 0.5 * anp.einsum("ti,tij,tj->t", theta, a, theta) - anp.sum(b[..., 0] * theta, axis=-1)
    return contract.Model(lambda rng: {"theta": np.zeros(n)}, None, task_losses, f"quadratic {n}")


@pytest.mark.equation("maml", "(1)", "(2)", "(3)")
def test_quadratic_golden_value_by_hand(dev):
    """1-D: L^S = θ², L^Q = ½θ², θ = 1, α = 0.1.
    θ' = 1 − 0.1·2 = 0.8, and dL^Q(θ')/dθ = (1 − 0.1·2)·θ' = 0.8·0.8 = 0.64."""
    params = {"theta": dev.asarray(np.array([1.0]))}
    episode = tasks.Episode(dev.asarray(np.array([[[2.0]]])), dev.asarray(np.array([[[0.0]]])),
                            dev.asarray(np.array([[[1.0]]])), dev.asarray(np.array([[[0.0]]])))
    config = maml.MAMLConfig(quadratic_model(1), inner_lr=0.1, inner_steps=1)
    assert float(maml.loss(params, episode, config)) == pytest.approx(0.32, abs=1e-15)
    gradient = maml.meta_gradient(params, episode, config)
    assert float(gradient["theta"][0]) == pytest.approx(0.64, abs=1e-15)


@pytest.mark.equation("maml", "(1)", "(3)")
@given(seed=seeds, n=st.integers(1, 4), inner_steps=st.integers(0, 4), inner_lr=st.floats(0.0, 0.2))
def test_quadratic_closed_form(dev, seed, n, inner_steps, inner_lr):
    """θ_k = θ − α Σ_j (Aθ_j − b) and ∇ = (I − αA)^k (Cθ_k − d), in closed form."""
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((n, n))
    a, c = m @ m.T + np.eye(n), np.diag(rng.uniform(0.5, 2, n))
    b, d, theta = rng.standard_normal(n), rng.standard_normal(n), rng.standard_normal(n)
    episode = tasks.Episode(*(dev.asarray(v[None]) for v in (a, b[:, None], c, d[:, None])))
    config = maml.MAMLConfig(quadratic_model(n), inner_lr=inner_lr, inner_steps=inner_steps)
    gradient = maml.meta_gradient({"theta": dev.asarray(theta)}, episode, config)

    step = np.eye(n) - inner_lr * a
    theta_k = theta
    for _ in range(inner_steps):
        theta_k = theta_k - inner_lr * (a @ theta_k - b)
    expected = np.linalg.matrix_power(step, inner_steps) @ (c @ theta_k - d)
    # autograd through k steps vs the closed form: rounding only
    np.testing.assert_allclose(dev.to_host(gradient["theta"]), expected, rtol=1e-10, atol=1e-12)
    adapted = maml.adapt({"theta": dev.asarray(theta)}, episode, config, steps=inner_steps)
    np.testing.assert_allclose(dev.to_host(adapted["theta"])[0], theta_k, rtol=1e-12, atol=1e-14)


@pytest.mark.equation("maml", "(3)")
@given(seed=seeds, inner_steps=st.integers(1, 3))
def test_zero_inner_lr_gives_the_plain_gradient(dev, seed, inner_steps):
    rng = np.random.default_rng(seed)
    params = dev.tree(tiny_mlp(rng))
    episode = regression_episode(dev, rng, n_tasks=3, n_support=4, n_query=4)
    config = maml.MAMLConfig(tiny_mlp_model(), inner_lr=0.0, inner_steps=inner_steps)
    loss_fn = config.model.loss
    plain = grad(lambda p: anp.mean(loss_fn(p, episode.query_x, episode.query_y, "mean")))(params)
    assert max_abs_diff(maml.meta_gradient(params, episode, config), plain, dev) < 1e-14


@pytest.mark.equation("maml", "(3)")
@given(seed=seeds, inner_steps=st.integers(1, 3), inner_lr=st.floats(0.01, 0.3))
def test_first_order_equals_query_gradient_at_adapted_params(dev, seed, inner_steps, inner_lr):
    rng = np.random.default_rng(seed)
    params = dev.tree(tiny_mlp(rng))
    episode = regression_episode(dev, rng, n_tasks=2, n_support=4, n_query=4)
    config = maml.MAMLConfig(tiny_mlp_model(), inner_lr=inner_lr, inner_steps=inner_steps,
                             first_order=True)
    adapted = maml.adapt(params, episode, config, steps=inner_steps)
    query_grads = grad(lambda p: anp.sum(config.model.loss(p, episode.query_x, episode.query_y,
                                                           "mean")))(adapted)
    expected = {name: anp.mean(g, axis=0) for name, g in query_grads.items()}  # task mean
    assert max_abs_diff(maml.meta_gradient(params, episode, config), expected, dev) < 1e-13


@pytest.mark.equation("maml", "(2)")
@given(seed=seeds, n_tasks=st.integers(1, 5), first_order=st.booleans())
def test_sum_and_mean_over_tasks_differ_by_the_task_count(dev, seed, n_tasks, first_order):
    rng = np.random.default_rng(seed)
    params = dev.tree(tiny_mlp(rng))
    episode = regression_episode(dev, rng, n_tasks, n_support=3, n_query=3)
    common = dict(model=tiny_mlp_model(), inner_lr=0.1, inner_steps=2, first_order=first_order)
    summed = maml.meta_gradient(params, episode, maml.MAMLConfig(task_reduction="sum", **common))
    meaned = maml.meta_gradient(params, episode, maml.MAMLConfig(task_reduction="mean", **common))
    assert max_abs_diff(summed, trees.scale(meaned, n_tasks), dev) < 1e-12


@pytest.mark.equation("maml", "(1)", "(2)", "(3)")
@given(seed=seeds, n_tasks=st.integers(1, 4), inner_steps=st.integers(1, 3))
def test_vectorised_meta_batch_equals_per_task_loop(dev, seed, n_tasks, inner_steps):
    rng = np.random.default_rng(seed)
    params = dev.tree(tiny_mlp(rng))
    episode = regression_episode(dev, rng, n_tasks, n_support=3, n_query=3)
    config = maml.MAMLConfig(tiny_mlp_model(), inner_lr=0.1, inner_steps=inner_steps)
    loop_model = config.model._replace(loss=maml.looped(mlp_loss("tanh")))
    vectorised = maml.meta_gradient(params, episode, config)
    loop = maml.meta_gradient(params, episode, dataclasses.replace(config, model=loop_model))
    assert max_abs_diff(vectorised, loop, dev) < 1e-13


@pytest.mark.equation("maml", "(1)")
def test_n_way_times_mean_is_n_times_the_mean_inner_step(dev):
    """The authors' inner loss with α equals the mean loss with N·α."""
    rng = np.random.default_rng(0)
    n_way = 3
    params = dev.tree(models.conv4_init(rng, in_channels=1, n_out=n_way, hidden=2, variant="stride"))
    episode = classification_episode(dev, rng, n_tasks=2, n_way=n_way, n_shot=2, n_query=1,
                                     image_shape=(1, 8, 8))
    common = dict(model=conv4_model(n_way), n_way=n_way)
    authors = maml.MAMLConfig(inner_lr=0.1, inner_reduction="n_way_times_mean", **common)
    port = maml.MAMLConfig(inner_lr=0.1 * n_way, inner_reduction="mean", **common)
    assert max_abs_diff(maml.meta_gradient(params, episode, authors),
                        maml.meta_gradient(params, episode, port), dev) < 1e-12


@pytest.mark.equation("maml", "(1)")
def test_bn_params_are_held_fixed_unless_adapt_bn(dev):
    rng = np.random.default_rng(1)
    params = dev.tree(models.conv4_init(rng, in_channels=1, n_out=2, hidden=2, variant="stride"))
    episode = classification_episode(dev, rng, n_tasks=1, n_way=2, n_shot=2, n_query=1,
                                     image_shape=(1, 8, 8))
    task_params = trees.broadcast_tasks(params, 1)
    for adapt_bn in (False, True):
        config = maml.MAMLConfig(conv4_model(2), n_way=2, inner_lr=0.5, adapt_bn=adapt_bn)
        adapted = maml.adapt(params, episode, config, steps=1)
        for name in params:
            if name.startswith("conv") and name.endswith(".b"):
                continue  # a conv bias right before batch norm has zero gradient: BN cancels it
            moved = max_abs_diff(adapted[name], task_params[name], dev) > 0
            assert moved == (adapt_bn or not name.startswith("bn")), name


def test_step_with_adam_lowers_the_meta_loss(dev):
    rng = np.random.default_rng(3)
    params = dev.tree(tiny_mlp(rng, hidden=8))
    episode = regression_episode(dev, rng, n_tasks=4, n_support=5, n_query=5)
    config = maml.MAMLConfig(tiny_mlp_model(hidden=8), inner_lr=0.05, meta_lr=0.01)
    state = maml.init_state(params, config)
    first = float(maml.loss(params, episode, config))
    for i in range(30):
        params, state, value = maml.step(params, state, episode, config)
        if i == 0:
            assert float(value) == first  # the loss at the params the step started from
    assert float(maml.loss(params, episode, config)) < 0.9 * first
    assert state.optimizer.step == 30


def close(dev, actual, expected, rtol):
    np.testing.assert_allclose(dev.to_host(actual), expected, rtol=rtol, atol=1e-14)


def kept_batch_norm(model, variant="stride", mode="transductive", momentum=0.1):
    """``model`` (conv4_model's) with its batch norm's running statistics kept."""
    def apply(params, x, running):
        if running is not None:
            return models.conv4_apply(params, x, variant, "running", running), {}
        return models.conv4_apply(params, x, variant, return_bn_moments=True)
    return model._replace(batch_norm=contract.BatchNorm(lambda: models.conv4_bn_state(2), apply, mode,
                                                        momentum))


def test_step_tracks_the_query_pass_statistics_and_predict_can_read_them(dev):
    """A model that keeps its running statistics: state.bn ← (1 − 0.3)·state.bn + 0.3·(the
    moments of the query pass at θ_i^(k), averaged over tasks), computed here from ``adapt``;
    in mode "running", predict normalises the query pass at θ_i^(k) by state.bn."""
    rng = np.random.default_rng(7)
    config = maml.MAMLConfig(kept_batch_norm(conv4_model(3), momentum=0.3), n_way=3, inner_lr=0.2,
                             inner_steps=2, test_inner_steps=2)
    params = dev.tree(maml.init(rng, config))
    episode = classification_episode(dev, rng, n_tasks=2, n_way=3, n_shot=1, n_query=2,
                                     image_shape=(1, 8, 8))
    state = maml.init_state(params, config)
    assert set(state.bn) == {f"bn{i}.{s}" for i in range(4) for s in ("mean", "var")}
    result = maml.step(params, state, episode, config)
    adapted = maml.adapt(params, episode, config)                  # θ_i^(2), (T, ...) leaves
    _, moments = models.conv4_apply(adapted, episode.query_x, "stride", return_bn_moments=True)
    for name, value in moments.items():                               # (T, F): one per task
        initial = 0.0 if name.endswith("mean") else 1.0
        close(dev, result.state.bn[name], 0.7 * initial + 0.3 * dev.to_host(value).mean(axis=0),
              rtol=1e-12)
    running = dataclasses.replace(config, model=kept_batch_norm(conv4_model(3), mode="running"))
    expected = models.conv4_apply(adapted, episode.query_x, "stride", "running", result.state.bn)
    close(dev, maml.predict(params, episode, running, state=result.state), dev.to_host(expected),
          rtol=1e-12)
    with pytest.raises(ValueError, match="state is required"):
        maml.predict(params, episode, running)


def test_adapt_and_predict_take_test_inner_steps_by_default(dev):
    rng = np.random.default_rng(5)
    params = dev.tree(tiny_mlp(rng))
    episode = regression_episode(dev, rng, n_tasks=2, n_support=4, n_query=3)
    config = maml.MAMLConfig(tiny_mlp_model(), inner_lr=0.1, inner_steps=1, test_inner_steps=3)
    trajectory = maml.adapt_trajectory(trees.broadcast_tasks(params, 2), episode.support_x,
                                       episode.support_y, config, steps=3)
    adapted = maml.adapt(params, episode, config)
    assert max_abs_diff(adapted, trajectory[3], dev) == 0  # the same path run twice
    assert max_abs_diff(maml.adapt(params, episode, config, steps=1), trajectory[1], dev) == 0
    predicted = maml.predict(params, episode, config)
    assert predicted.shape == (2, 3, 1)
    assert max_abs_diff(predicted, config.model.apply(trajectory[3], episode.query_x), dev) == 0


def test_init_builds_the_papers_sinusoid_mlp():
    config = maml.MAMLConfig()
    params = maml.init(np.random.default_rng(0), config)
    assert {k: v.shape for k, v in params.items()} == {
        "dense0.w": (1, 40), "dense0.b": (40,), "dense1.w": (40, 40), "dense1.b": (40,),
        "dense2.w": (40, 1), "dense2.b": (1,)}
    assert all(v.dtype == np.float64 for v in params.values())
    assert config.conventions()["model"] == "mlp 1-40-40-1 relu, mse"
    assert set(config.conventions()) == {f.name for f in dataclasses.fields(config)}


# ----- bad input at the public entry points -----
def _setup(dev, n_tasks=2):
    rng = np.random.default_rng(0)
    params = dev.tree(tiny_mlp(rng))
    episode = regression_episode(dev, rng, n_tasks=n_tasks, n_support=3, n_query=3)
    return params, episode, maml.MAMLConfig(tiny_mlp_model(), inner_lr=0.1)


def _every_entry(params, episode, config):
    """Each public entry point that takes (params, episode, config), as a zero-argument call."""
    state = State(optimizers.adam_init(params), {}) if isinstance(params, dict) and params else None
    return [lambda: maml.loss(params, episode, config),
            lambda: maml.meta_gradient(params, episode, config),
            lambda: maml.step(params, state, episode, config),
            lambda: maml.adapt(params, episode, config),
            lambda: maml.predict(params, episode, config)]


@pytest.mark.parametrize("bad, message", [
    (dict(inner_steps=-1), "inner_steps"), (dict(inner_steps=1.5), "inner_steps"),
    (dict(test_inner_steps=-2), "test_inner_steps"),
    (dict(inner_lr=math.nan), "inner_lr"), (dict(inner_lr=math.inf), "inner_lr"),
    (dict(inner_lr=-0.1), "inner_lr"), (dict(meta_lr=-1e-3), "meta_lr"),
    (dict(meta_lr="0.1"), "meta_lr"),
    (dict(task_reduction="average"), "task_reduction"), (dict(inner_reduction="max"), "inner_reduction"),
    (dict(query_reduction="median"), "query_reduction"),
    (dict(inner_reduction="n_way_times_mean"), "inner_reduction"),  # needs classification
    (dict(first_order="yes"), "first_order"), (dict(adapt_bn=1), "adapt_bn"),
    (dict(n_way=1), "n_way"), (dict(n_way=2.5), "n_way"),
    (dict(model=lambda p, x: x), "model"), (dict(model=contract.Model(None, None)), "no loss"),
])
def test_bad_config_is_refused(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        maml.MAMLConfig(**bad)


@pytest.mark.parametrize("field", ["support_x", "support_y", "query_x", "query_y"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nan_or_inf_in_the_episode_is_refused(dev, field, value):
    params, episode, config = _setup(dev)
    host = dev.to_host(getattr(episode, field)).copy()
    host[1, 0, 0] = value
    bad = episode._replace(**{field: dev.asarray(host)})
    for call in _every_entry(params, bad, config):
        with pytest.raises(ValueError, match=f"{field} contains NaN or inf"):
            call()


@pytest.mark.parametrize("value", [math.nan, -math.inf])
def test_nan_or_inf_in_params_is_refused(dev, value):
    params, episode, config = _setup(dev)
    host = dev.to_host(params["dense1.w"]).copy()
    host[0, 0] = value
    bad = dict(params, **{"dense1.w": dev.asarray(host)})
    for call in _every_entry(bad, episode, config) + [lambda: maml.init_state(bad, config)]:
        with pytest.raises(ValueError, match=r"params\['dense1.w'\] contains NaN or inf"):
            call()


def test_params_with_a_missing_or_an_extra_key_or_a_wrong_shape_are_refused(dev):
    params, episode, config = _setup(dev)
    missing = {k: v for k, v in params.items() if k != "dense0.b"}
    extra = dict(params, **{"dense9.w": params["dense0.w"]})
    for bad, message in ((missing, r"missing \['dense0.b'\]"), (extra, r"unexpected \['dense9.w'\]"),
                         ({}, "empty"), (dict(params, **{"dense0.w": params["dense1.w"]}),
                                         r"params\['dense0.w'\] must have shape \(1, 4\)")):
        for call in _every_entry(bad, episode, config):
            with pytest.raises(ValueError, match=message):
                call()
    with pytest.raises(TypeError, match="params must be a dict"):
        maml.loss([params], episode, config)


def test_empty_sets_and_zero_tasks_are_refused(dev):
    params, episode, config = _setup(dev)
    cases = [(episode._replace(support_x=episode.support_x[:, :0], support_y=episode.support_y[:, :0]),
              "support set is empty"),
             (episode._replace(query_x=episode.query_x[:, :0], query_y=episode.query_y[:, :0]),
              "query set is empty"),
             (tasks.Episode(*(a[:0] for a in episode)), r"holds no task \(T = 0\)"),
             (tasks.Episode(*(a[None] for a in episode)), r"expected one task, support_x \(n, \.\.\.\), "
                                                             r"or a meta-batch with one task axis")]
    for bad, message in cases:
        for call in _every_entry(params, bad, config):
            with pytest.raises(ValueError, match=message):
                call()


def test_labels_outside_0_to_n_minus_1_or_not_integers_are_refused(dev):
    rng = np.random.default_rng(2)
    params = dev.tree(models.conv4_init(rng, in_channels=1, n_out=3, hidden=2, variant="stride"))
    episode = classification_episode(dev, rng, n_tasks=1, n_way=3, n_shot=1, n_query=1,
                                     image_shape=(1, 8, 8))
    config = maml.MAMLConfig(conv4_model(3), n_way=3)
    query_y = dev.to_host(episode.query_y).copy()
    query_y[0, 0] = 3
    for bad, error, message in (
            (episode._replace(query_y=dev.asarray(query_y)), ValueError, r"labels must be in 0..2"),
            (episode._replace(support_y=dev.asarray(dev.to_host(episode.support_y) * 1.0)), TypeError,
             "must be integers")):
        for call in _every_entry(params, bad, config):
            with pytest.raises(error, match=message):
                call()


def test_bad_arguments_to_init_step_adapt_and_predict_are_refused(dev):
    params, episode, config = _setup(dev)
    with pytest.raises(TypeError, match="rng must be a Generator"):
        maml.init(0, config)
    with pytest.raises(TypeError, match="config must be a MAMLConfig"):
        maml.init(np.random.default_rng(0), {"inner_lr": 0.1})
    with pytest.raises(TypeError, match="config must be a MAMLConfig"):
        maml.loss(params, episode, None)
    with pytest.raises(TypeError, match="state must be a State; got NoneType"):
        maml.step(params, None, episode, config)
    with pytest.raises(TypeError, match="state.optimizer must be Adam's state"):
        maml.step(params, State(None, {}), episode, config)
    for steps, error in ((-1, ValueError), (1.5, TypeError), ("3", TypeError)):
        with pytest.raises(error, match="steps must be an integer >= 0"):
            maml.adapt(params, episode, config, steps=steps)
        with pytest.raises(error, match="steps must be an integer >= 0"):
            maml.predict(params, episode, config, steps=steps)
    with pytest.raises(ValueError, match="one loss per task"):  # a model whose loss is not per task
        summed = config.model._replace(loss=lambda p, x, y, r: anp.sum(mlp_loss("tanh")(p, x, y, r)))
        maml.loss(params, episode, dataclasses.replace(config, model=summed))
    with pytest.raises(TypeError, match="expected an Episode"):
        maml.loss(params, episode[:3], config)
