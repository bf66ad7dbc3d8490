"""MAML: finite differences, the explicit Hessian product, a hand-checked quadratic, identities."""

import math

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad, jacobian
from hypothesis import assume, given, strategies as st

from helpers import check_grad_away_from_kinks, classification_episode, max_abs_diff, mlp_loss, regression_episode, tiny_mlp
from refmeta import gradcheck, maml
from refmeta.data import tasks
from refmeta.nn import layers, losses, trees

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


@given(seed=seeds, inner_steps=st.sampled_from([1, 2, 3]), inner_lr=st.floats(0.01, 0.3),
       activation=st.sampled_from(["tanh", "relu"]), n_tasks=st.integers(1, 3),
       hidden=st.integers(2, 5), n_support=st.integers(2, 5),
       task_reduction=st.sampled_from(["mean", "sum"]))
def test_meta_gradient_matches_finite_differences_mlp(dev, seed, inner_steps, inner_lr, activation,
                                                      n_tasks, hidden, n_support, task_reduction):
    rng = np.random.default_rng(seed)
    params = dev.tree(tiny_mlp(rng, hidden=hidden))
    episode = regression_episode(dev, rng, n_tasks, n_support, n_query=4)
    config = maml.MAMLConfig(inner_lr=inner_lr, inner_steps=inner_steps, task_reduction=task_reduction)
    loss_fn = mlp_loss(activation)
    if activation == "relu":  # central differences are only valid away from ReLU's kink
        trajectory = maml.adapt_trajectory(trees.broadcast_tasks(params, n_tasks), episode.support_x,
                                           episode.support_y, loss_fn, config)
        assume(min_abs_preactivation(trajectory, [episode.support_x, episode.query_x]) > 1e-4)
    gradcheck.check_grad(lambda p: maml.meta_loss(p, episode, loss_fn, config), params,
                         rng=np.random.default_rng(seed))


@given(seed=seeds, inner_steps=st.sampled_from([1, 2]), adapt_bn=st.booleans(),
       variant=st.sampled_from(["stride", "maxpool"]))
def test_meta_gradient_matches_finite_differences_conv_bn(dev, seed, inner_steps, adapt_bn, variant):
    """A tiny 4-block conv net with transductive batch norm (offset and scale), 3-way 2-shot."""
    rng = np.random.default_rng(seed)
    params = dev.tree(layers.conv4_init(rng, in_channels=1, n_out=3, hidden=2, variant=variant,
                                        bn_affine="both", image_size=16))
    episode = classification_episode(dev, rng, n_tasks=2, n_way=3, n_shot=2, n_query=1,
                                     image_shape=(1, 16, 16))
    loss_fn = losses.model_loss(lambda p, x: layers.conv4_apply(p, x, variant=variant),
                                losses.cross_entropy)
    config = maml.MAMLConfig(inner_lr=0.1, inner_steps=inner_steps, inner_reduction="n_way_times_mean",
                             adapt_bn=adapt_bn)
    f = lambda p: maml.meta_loss(p, episode, loss_fn, config)
    assume(check_grad_away_from_kinks(f, params, rng, n_directions=2) > 0)


def support_loss_flat(unflatten, loss_fn, x, y, reduction):
    return lambda v: loss_fn(trees.broadcast_tasks(unflatten(v), 1), x, y, reduction)[0]


@given(seed=seeds, inner_steps=st.sampled_from([1, 2, 3]), inner_lr=st.floats(0.01, 0.5))
def test_meta_gradient_equals_explicit_hessian_product(seed, inner_steps, inner_lr):
    """(3): ∇L(θ) = (I − αH_0)…(I − αH_{k−1}) ∇L^Q(θ_k), Hessians formed in full (one task)."""
    rng = np.random.default_rng(seed)
    params = tiny_mlp(rng, hidden=3)
    episode = regression_episode(_numpy, rng, n_tasks=1, n_support=4, n_query=5)
    config = maml.MAMLConfig(inner_lr=inner_lr, inner_steps=inner_steps)
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
    actual = maml.meta_gradient(params, episode, loss_fn, config)
    for name in params:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-10, atol=1e-12)


class _Numpy:
    """The numpy backend for tests that form Hessians with autograd's jacobian."""
    name = "numpy"
    asarray = staticmethod(np.asarray)


_numpy = _Numpy()


def quadratic_loss(params, a, b, reduction):
    """Per-task ½ θᵀAθ − bᵀθ; "x" carries A (T, n, n) and "y" carries b (T, n)."""
    theta = params["theta"]                                             # (T, n)
    return 0.5 * anp.einsum("ti,tij,tj->t", theta, a, theta) - anp.sum(b * theta, axis=-1)


def test_quadratic_golden_value_by_hand(dev):
    """1-D: L^S = θ², L^Q = ½θ², θ = 1, α = 0.1.
    θ' = 1 − 0.1·2 = 0.8, and dL^Q(θ')/dθ = (1 − 0.1·2)·θ' = 0.8·0.8 = 0.64."""
    params = {"theta": dev.asarray(np.array([1.0]))}
    episode = tasks.Episode(dev.asarray(np.array([[[2.0]]])), dev.asarray(np.array([[0.0]])),
                            dev.asarray(np.array([[[1.0]]])), dev.asarray(np.array([[0.0]])))
    config = maml.MAMLConfig(inner_lr=0.1, inner_steps=1)
    assert float(maml.meta_loss(params, episode, quadratic_loss, config)) == pytest.approx(0.32, abs=1e-15)
    gradient = maml.meta_gradient(params, episode, quadratic_loss, config)
    assert float(gradient["theta"][0]) == pytest.approx(0.64, abs=1e-15)


@given(seed=seeds, n=st.integers(1, 4), inner_steps=st.integers(0, 4), inner_lr=st.floats(0.0, 0.2))
def test_quadratic_closed_form(dev, seed, n, inner_steps, inner_lr):
    """θ_k = θ − α Σ_j (Aθ_j − b) and ∇ = (I − αA)^k (Cθ_k − d), in closed form."""
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((n, n))
    a, c = m @ m.T + np.eye(n), np.diag(rng.uniform(0.5, 2, n))
    b, d, theta = rng.standard_normal(n), rng.standard_normal(n), rng.standard_normal(n)
    episode = tasks.Episode(*(dev.asarray(v[None]) for v in (a, b, c, d)))
    config = maml.MAMLConfig(inner_lr=inner_lr, inner_steps=inner_steps)
    gradient = maml.meta_gradient({"theta": dev.asarray(theta)}, episode, quadratic_loss, config)

    step = np.eye(n) - inner_lr * a
    theta_k = theta
    for _ in range(inner_steps):
        theta_k = theta_k - inner_lr * (a @ theta_k - b)
    expected = np.linalg.matrix_power(step, inner_steps) @ (c @ theta_k - d)
    np.testing.assert_allclose(dev.to_host(gradient["theta"]), expected, rtol=1e-10, atol=1e-12)


@given(seed=seeds, inner_steps=st.integers(1, 3))
def test_zero_inner_lr_gives_the_plain_gradient(dev, seed, inner_steps):
    rng = np.random.default_rng(seed)
    params = dev.tree(tiny_mlp(rng))
    episode = regression_episode(dev, rng, n_tasks=3, n_support=4, n_query=4)
    loss_fn = mlp_loss("tanh")
    config = maml.MAMLConfig(inner_lr=0.0, inner_steps=inner_steps)
    plain = grad(lambda p: anp.mean(loss_fn(p, episode.query_x, episode.query_y, "mean")))(params)
    assert max_abs_diff(maml.meta_gradient(params, episode, loss_fn, config), plain, dev) < 1e-14


@given(seed=seeds, inner_steps=st.integers(1, 3), inner_lr=st.floats(0.01, 0.3))
def test_first_order_equals_query_gradient_at_adapted_params(dev, seed, inner_steps, inner_lr):
    rng = np.random.default_rng(seed)
    params = dev.tree(tiny_mlp(rng))
    episode = regression_episode(dev, rng, n_tasks=2, n_support=4, n_query=4)
    loss_fn = mlp_loss("tanh")
    config = maml.MAMLConfig(inner_lr=inner_lr, inner_steps=inner_steps, first_order=True)
    adapted = maml.adapt(trees.broadcast_tasks(params, 2), episode.support_x, episode.support_y,
                         loss_fn, config)
    query_grads = grad(lambda p: anp.sum(loss_fn(p, episode.query_x, episode.query_y, "mean")))(adapted)
    expected = {name: anp.mean(g, axis=0) for name, g in query_grads.items()}  # task mean
    assert max_abs_diff(maml.meta_gradient(params, episode, loss_fn, config), expected, dev) < 1e-13


@given(seed=seeds, n_tasks=st.integers(1, 5), first_order=st.booleans())
def test_sum_and_mean_over_tasks_differ_by_the_task_count(dev, seed, n_tasks, first_order):
    rng = np.random.default_rng(seed)
    params = dev.tree(tiny_mlp(rng))
    episode = regression_episode(dev, rng, n_tasks, n_support=3, n_query=3)
    loss_fn = mlp_loss("tanh")
    common = dict(inner_lr=0.1, inner_steps=2, first_order=first_order)
    summed = maml.meta_gradient(params, episode, loss_fn, maml.MAMLConfig(task_reduction="sum", **common))
    meaned = maml.meta_gradient(params, episode, loss_fn, maml.MAMLConfig(task_reduction="mean", **common))
    assert max_abs_diff(summed, trees.scale(meaned, n_tasks), dev) < 1e-12


@given(seed=seeds, n_tasks=st.integers(1, 4), inner_steps=st.integers(1, 3))
def test_vectorised_meta_batch_equals_per_task_loop(dev, seed, n_tasks, inner_steps):
    rng = np.random.default_rng(seed)
    params = dev.tree(tiny_mlp(rng))
    episode = regression_episode(dev, rng, n_tasks, n_support=3, n_query=3)
    loss_fn = mlp_loss("tanh")
    config = maml.MAMLConfig(inner_lr=0.1, inner_steps=inner_steps)
    vectorised = maml.meta_gradient(params, episode, loss_fn, config)
    loop = maml.meta_gradient(params, episode, maml.looped(loss_fn), config)
    assert max_abs_diff(vectorised, loop, dev) < 1e-13


def test_n_way_times_mean_is_n_times_the_mean_inner_step(dev):
    """The authors' inner loss with α equals the mean loss with N·α (REFERENCE-NOTES)."""
    rng = np.random.default_rng(0)
    n_way = 3
    params = dev.tree(layers.conv4_init(rng, in_channels=1, n_out=n_way, hidden=2, variant="stride"))
    episode = classification_episode(dev, rng, n_tasks=2, n_way=n_way, n_shot=2, n_query=1,
                                     image_shape=(1, 8, 8))
    loss_fn = losses.model_loss(lambda p, x: layers.conv4_apply(p, x, variant="stride"),
                                losses.cross_entropy)
    authors = maml.MAMLConfig(inner_lr=0.1, inner_reduction="n_way_times_mean")
    port = maml.MAMLConfig(inner_lr=0.1 * n_way, inner_reduction="mean")
    assert max_abs_diff(maml.meta_gradient(params, episode, loss_fn, authors),
                        maml.meta_gradient(params, episode, loss_fn, port), dev) < 1e-12


def test_bn_params_are_held_fixed_unless_adapt_bn(dev):
    rng = np.random.default_rng(1)
    params = dev.tree(layers.conv4_init(rng, in_channels=1, n_out=2, hidden=2, variant="stride"))
    episode = classification_episode(dev, rng, n_tasks=1, n_way=2, n_shot=2, n_query=1,
                                     image_shape=(1, 8, 8))
    loss_fn = losses.model_loss(lambda p, x: layers.conv4_apply(p, x, variant="stride"),
                                losses.cross_entropy)
    task_params = trees.broadcast_tasks(params, 1)
    for adapt_bn in (False, True):
        config = maml.MAMLConfig(inner_lr=0.5, adapt_bn=adapt_bn)
        adapted = maml.adapt(task_params, episode.support_x, episode.support_y, loss_fn, config)
        for name in params:
            if name.startswith("conv") and name.endswith(".b"):
                continue  # a conv bias right before batch norm has zero gradient: BN cancels it
            moved = max_abs_diff(adapted[name], task_params[name], dev) > 0
            assert moved == (adapt_bn or not name.startswith("bn")), name


def test_meta_step_with_adam_lowers_the_meta_loss(dev):
    rng = np.random.default_rng(3)
    params = dev.tree(tiny_mlp(rng, hidden=8))
    episode = regression_episode(dev, rng, n_tasks=4, n_support=5, n_query=5)
    loss_fn = mlp_loss("tanh")
    config = maml.MAMLConfig(inner_lr=0.05, meta_lr=0.01)
    state = maml.optimizers.adam_init(params)
    first = float(maml.meta_loss(params, episode, loss_fn, config))
    for _ in range(30):
        params, state, _ = maml.meta_step(params, state, episode, loss_fn, config)
    assert float(maml.meta_loss(params, episode, loss_fn, config)) < 0.9 * first
    assert state.step == 30


@pytest.mark.parametrize("bad, message", [
    (dict(inner_steps=-1), "inner_steps"), (dict(inner_steps=1.5), "inner_steps"),
    (dict(inner_lr=math.nan), "inner_lr"), (dict(inner_lr=math.inf), "inner_lr"),
    (dict(task_reduction="average"), "task_reduction"), (dict(inner_reduction="max"), "inner_reduction"),
    (dict(first_order="yes"), "first_order"),
])
def test_bad_config_is_refused(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        maml.MAMLConfig(**bad)


def test_bad_inputs_are_refused(dev):
    rng = np.random.default_rng(0)
    params = dev.tree(tiny_mlp(rng, d_in=2))
    episode = regression_episode(dev, rng, n_tasks=2, n_support=3, n_query=3, d_in=1)
    with pytest.raises(ValueError, match="d_in|expected|got"):  # params built for 2 inputs, data has 1
        maml.meta_loss(params, episode, mlp_loss("tanh"), maml.MAMLConfig())
    with pytest.raises(ValueError, match="steps"):
        maml.adapt(params, episode.support_x, episode.support_y, mlp_loss("tanh"), maml.MAMLConfig(), steps=-2)
    with pytest.raises(ValueError, match="reduction"):  # the authors' N·mean form is for classification
        maml.meta_loss(dev.tree(tiny_mlp(rng)), episode, mlp_loss("tanh"),
                       maml.MAMLConfig(inner_reduction="n_way_times_mean"))
