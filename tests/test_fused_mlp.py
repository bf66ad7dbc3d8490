"""fused_mlp: the written-out gradient and R-operator against autograd and finite differences."""

import dataclasses

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad
from hypothesis import given, strategies as st

from helpers import max_abs_diff, mlp_loss, regression_episode, tiny_mlp, tiny_mlp_model
from refmeta import gradcheck, maml
from refmeta.data import tasks
from refmeta.fast import fused_mlp
from refmeta.nn import models

seeds = st.integers(0, 2**32 - 1)
reductions = st.sampled_from(["mean", "sum"])


def setup(dev, seed, n_tasks, hidden, depth, d_in=1, d_out=1, n_support=4):
    rng = np.random.default_rng(seed)
    params = dev.tree(tiny_mlp(rng, d_in=d_in, hidden=hidden, d_out=d_out, depth=depth))
    sizes = (d_in,) + (hidden,) * depth + (d_out,)
    episode = regression_episode(dev, rng, n_tasks, n_support, n_query=3, d_in=d_in, d_out=d_out)
    return rng, params, sizes, episode


def task_params(params, n_tasks, rng, dev):
    """Different params per task, so a mix-up between tasks would show."""
    return {k: v + dev.asarray(0.1 * rng.standard_normal((n_tasks,) + np.shape(v))) for k, v in params.items()}


@pytest.mark.equation("fused_mlp", "(1)", "(2)", "(3)")
@given(seed=seeds, activation=st.sampled_from(["tanh", "relu"]), reduction=reductions,
       n_tasks=st.integers(1, 3), hidden=st.integers(1, 5), depth=st.integers(0, 3),
       d_in=st.integers(1, 3), d_out=st.integers(1, 2))
def test_loss_gradient_and_hessian_vector_equal_autograd_on_the_generic_mlp(
        dev, seed, activation, reduction, n_tasks, hidden, depth, d_in, d_out):
    rng, params, sizes, episode = setup(dev, seed, n_tasks, hidden, depth, d_in, d_out)
    mlp = fused_mlp.FusedMLP(sizes, activation)
    per_task = task_params(params, n_tasks, rng, dev)
    x, y = episode.support_x, episode.support_y
    generic = lambda p: anp.sum(mlp_loss(activation)(p, x, y, reduction))
    fused = lambda p: anp.sum(mlp.loss_fn(mlp.pack(p), x, y, reduction))
    value = float(dev.to_host(generic(per_task)))
    assert abs(value - float(dev.to_host(fused(per_task)))) <= 1e-13 * max(1.0, abs(value))
    assert max_abs_diff(grad(generic)(per_task), grad(fused)(per_task), dev) <= 1e-12
    u = {k: dev.asarray(rng.standard_normal(np.shape(v))) for k, v in per_task.items()}
    hvp = lambda f: grad(lambda p: sum(anp.sum(g * u[k]) for k, g in grad(f)(p).items()))(per_task)
    assert max_abs_diff(hvp(generic), hvp(fused), dev) <= 1e-11
    # through a nonlinear function of the losses, the cotangent of (1) depends on θ as well
    squared = lambda f: (lambda p: anp.sum(anp.exp(f(p)) + f(p) ** 2))
    assert max_abs_diff(hvp(squared(generic)), hvp(squared(fused)), dev) <= 1e-10 * max(1.0, max_abs_diff(
        hvp(squared(generic)), {k: 0 * v for k, v in per_task.items()}, dev))


@pytest.mark.equation("fused_mlp", "(2)", "(3)")
@given(seed=seeds, activation=st.sampled_from(["tanh", "relu"]), reduction=reductions,
       depth=st.integers(1, 2))
def test_gradient_and_hessian_vector_match_finite_differences(dev, seed, activation, reduction, depth):
    rng, params, sizes, episode = setup(dev, seed, n_tasks=2, hidden=3, depth=depth)
    mlp = fused_mlp.FusedMLP(sizes, activation)
    flat = mlp.pack(task_params(params, 2, rng, dev))
    f = lambda p: anp.sum(mlp.loss_fn(p, episode.support_x, episode.support_y, reduction))
    gradcheck.check_grad(f, flat, rng=rng)
    if activation == "tanh":  # ReLU's Hessian is piecewise constant: differences straddle kinks
        gradcheck.check_hvp(f, flat, rng=rng)


@pytest.mark.equation("fused_mlp", "(3)")
@given(seed=seeds, inner_steps=st.sampled_from([0, 1, 2, 3]), first_order=st.booleans(),
       activation=st.sampled_from(["tanh", "relu"]), task_reduction=reductions, inner_reduction=reductions)
def test_maml_meta_gradient_equals_the_generic_path(dev, seed, inner_steps, first_order, activation,
                                                     task_reduction, inner_reduction):
    _, params, sizes, episode = setup(dev, seed, n_tasks=3, hidden=4, depth=2)
    generic = maml.MAMLConfig(tiny_mlp_model(hidden=4, activation=activation), inner_lr=0.1,
                              inner_steps=inner_steps, first_order=first_order,
                              task_reduction=task_reduction, inner_reduction=inner_reduction)
    mlp = fused_mlp.FusedMLP(sizes, activation)
    config = dataclasses.replace(generic, model=mlp.model())
    expected = maml.meta_gradient(params, episode, generic)
    through_autograd = mlp.unpack(maml.meta_gradient(mlp.pack(params), episode, config))
    written_out = mlp.unpack(mlp.meta_gradient(mlp.pack(params), episode, config))
    scale = max(1.0, max(float(np.max(np.abs(dev.to_host(v)))) for v in expected.values()))
    assert max_abs_diff(expected, through_autograd, dev) <= 1e-12 * scale
    assert max_abs_diff(expected, written_out, dev) <= 1e-12 * scale


@pytest.mark.equation("fused_mlp", "(3)")
def test_maml_meta_gradient_matches_finite_differences(dev):
    rng, params, sizes, episode = setup(dev, 3, n_tasks=2, hidden=3, depth=2)
    mlp = fused_mlp.FusedMLP(sizes, "tanh")
    config = maml.MAMLConfig(mlp.model(), inner_lr=0.3, inner_steps=2)
    meta_loss = lambda p: maml.loss(p, episode, config)
    gradcheck.check_grad(meta_loss, mlp.pack(params), rng=rng)
    gradcheck.check_grad(meta_loss, mlp.pack(params), lambda p: mlp.meta_gradient(p, episode, config), rng=rng)


@pytest.mark.equation("fused_mlp", "(3)")
def test_a_wrong_hessian_vector_product_fails_the_comparison(monkeypatch):
    """The checks above can fail: drop the σ'' term of the R-operator and tanh's H v is wrong."""
    dev_tree = lambda t: {k: np.asarray(v) for k, v in t.items()}
    rng = np.random.default_rng(0)
    params = dev_tree(tiny_mlp(rng, hidden=3))
    x, y = rng.uniform(-2, 2, (1, 4, 1)), rng.uniform(-2, 2, (1, 4, 1))
    mlp = fused_mlp.FusedMLP((1, 3, 3, 1), "tanh")
    flat = mlp.pack({k: v[None] for k, v in params.items()})
    f = lambda p: anp.sum(mlp.loss_fn(p, x, y, "mean"))
    gradcheck.check_hvp(f, flat, rng=rng)
    monkeypatch.setattr(fused_mlp, "_slopes", lambda mlp_, z, a: (1 - a * a, None))
    with pytest.raises(gradcheck.GradientCheckError):
        gradcheck.check_hvp(f, flat, rng=rng)


def test_third_derivatives_are_refused():
    mlp = fused_mlp.FusedMLP((1, 2, 1), "tanh")
    theta = np.full(mlp.size, 0.3)
    x, y = np.linspace(-1, 1, 4)[:, None], np.zeros((4, 1))
    f = lambda t: mlp.loss_fn({fused_mlp.FLAT: t}, x, y, "mean")
    hvp = lambda t, v: grad(lambda s: anp.sum(grad(f)(s) * v))(t)
    v, w = np.linspace(-1, 1, mlp.size), np.cos(np.arange(mlp.size))
    # H v is linear in v with a symmetric H, so d⟨w, H v⟩/dv = H w: that derivative is provided
    assert np.allclose(grad(lambda v_: anp.sum(hvp(theta, v_) * w))(v), hvp(theta, w), rtol=1e-13, atol=0)
    with pytest.raises(NotImplementedError):   # the derivative in θ would be a third derivative
        grad(lambda t: anp.sum(hvp(t, v)))(theta)


@pytest.mark.equation("fused_mlp", "(1)")
def test_model_equals_the_generic_mlp_and_drives_maml(dev):
    """``FusedMLP.model()``: init is models.mlp_init's tree packed, apply and loss equal the
    generic MLP's; MAML's public entry points take it as config.model."""
    mlp = fused_mlp.FusedMLP((1, 5, 5, 1), "tanh")
    model = mlp.model()
    flat = model.init(np.random.default_rng(4))
    generic = models.mlp_init(np.random.default_rng(4), (1, 5, 5, 1))
    assert flat[fused_mlp.FLAT].shape == (mlp.size,) and flat[fused_mlp.FLAT].dtype == np.float64
    assert all(np.array_equal(mlp.unpack(flat)[k], generic[k]) for k in generic)
    episode = regression_episode(dev, np.random.default_rng(5), 2, 4, 3)
    params = dev.tree(flat)
    task_params = {fused_mlp.FLAT: anp.broadcast_to(params[fused_mlp.FLAT], (2, mlp.size))}
    generic_loss = mlp_loss("tanh")(mlp.unpack(task_params), episode.query_x, episode.query_y, "mean")
    fused_loss = model.loss(task_params, episode.query_x, episode.query_y, "mean")
    assert max_abs_diff(fused_loss, generic_loss, dev) <= 1e-13   # two paths: rounding only
    config = maml.MAMLConfig(model, inner_lr=0.1, test_inner_steps=2)
    predicted = maml.predict(params, episode, config)
    generic_config = maml.MAMLConfig(tiny_mlp_model(hidden=5), inner_lr=0.1, test_inner_steps=2)
    expected = maml.predict(dev.tree(generic), episode, generic_config)
    assert max_abs_diff(predicted, expected, dev) <= 1e-12   # two paths: rounding only
    assert maml.init(np.random.default_rng(4), config)[fused_mlp.FLAT].shape == (mlp.size,)


def test_pack_and_unpack_round_trip_with_a_task_axis():
    rng = np.random.default_rng(1)
    params = {k: rng.standard_normal((2,) + v.shape) for k, v in tiny_mlp(rng, d_in=2, hidden=3, d_out=2).items()}
    mlp = fused_mlp.FusedMLP((2, 3, 3, 2))
    flat = mlp.pack(params)
    assert flat[fused_mlp.FLAT].shape == (2, mlp.size) and mlp.size == 2 * 3 + 3 + 3 * 3 + 3 + 3 * 2 + 2
    back = mlp.unpack(flat)
    assert sorted(back) == sorted(params) and all(np.array_equal(back[k], params[k]) for k in params)


def test_bad_input_is_refused_with_what_was_expected():
    mlp = fused_mlp.FusedMLP((1, 4, 1))
    theta = {fused_mlp.FLAT: np.zeros((2, mlp.size))}
    x, y = np.zeros((2, 5, 1)), np.zeros((2, 5, 1))
    with pytest.raises(ValueError, match="sizes"):
        fused_mlp.FusedMLP((3,))
    with pytest.raises(ValueError, match="activation"):
        fused_mlp.FusedMLP((1, 2), "gelu")
    with pytest.raises(ValueError, match="reduction"):
        mlp.loss_fn(theta, x, y, "n_way_times_mean")
    with pytest.raises(ValueError, match=r"y must have shape \(2, 5, 1\)"):
        mlp.loss_fn(theta, x, np.zeros((2, 5, 2)), "mean")
    with pytest.raises(ValueError, match="theta must have shape"):
        mlp.loss_fn({fused_mlp.FLAT: np.zeros(mlp.size)}, x, y, "mean")
    with pytest.raises(ValueError, match="expected the leaves"):
        mlp.pack({"dense0.w": np.zeros((1, 4))})
    with pytest.raises(ValueError, match="dense0.w must have shape"):
        mlp.pack({"dense0.w": np.zeros((4, 1)), "dense0.b": np.zeros(4),
                  "dense1.w": np.zeros((4, 1)), "dense1.b": np.zeros(1)})
    with pytest.raises(NotImplementedError, match="θ only"):
        grad(lambda x_: anp.sum(mlp.loss_fn(theta, x_, y, "mean")))(x)
    episode = tasks.Episode(x, y, x, y)
    flat = {fused_mlp.FLAT: np.zeros(mlp.size)}
    with pytest.raises(ValueError, match="inner_reduction|reduction must be one of"):
        mlp.meta_gradient(flat, episode, maml.MAMLConfig(n_way=5, inner_reduction="n_way_times_mean"))
    with pytest.raises(ValueError, match=r"meta-parameters .*\(13,\)"):
        mlp.meta_gradient(theta, episode, maml.MAMLConfig())
    with pytest.raises(TypeError, match="not differentiable"):
        grad(lambda t: anp.sum(mlp.meta_gradient({fused_mlp.FLAT: t}, episode, maml.MAMLConfig())[fused_mlp.FLAT]))(
            np.zeros(mlp.size))
