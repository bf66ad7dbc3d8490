"""Losses, optimizers and tree helpers: hand values, stability, finite differences."""

import autograd.numpy as anp
import numpy as np
import pytest
from hypothesis import given, strategies as st

from refmeta import gradcheck
from refmeta.nn import losses, optimizers, trees

seeds = st.integers(0, 2**32 - 1)


def test_cross_entropy_by_hand(dev):
    logits = dev.asarray(np.array([[0.0, 0.0], [np.log(3.0), 0.0]]))
    labels = dev.asarray(np.array([0, 1]))
    per_example = dev.to_host(losses.cross_entropy(logits, labels, reduction="none"))
    np.testing.assert_allclose(per_example, [np.log(2.0), np.log(4.0)], rtol=1e-15)
    assert float(losses.cross_entropy(logits, labels, "sum")) == pytest.approx(np.log(8.0), rel=1e-15)
    assert float(losses.cross_entropy(logits, labels, "n_way_times_mean")) == pytest.approx(np.log(8.0), rel=1e-15)


def test_cross_entropy_is_stable_for_huge_logits(dev):
    logits = dev.asarray(np.array([[1e4, -1e4, 0.0]]))
    value = float(losses.cross_entropy(logits, dev.asarray(np.array([1])), "mean"))
    assert value == pytest.approx(2e4, rel=1e-12)


def test_mse_by_hand_and_reductions_keep_task_axes(dev):
    pred = dev.asarray(np.array([[[1.0], [2.0]], [[0.0], [0.0]]]))    # (T=2, n=2, 1)
    target = dev.asarray(np.array([[[0.0], [0.0]], [[3.0], [1.0]]]))
    np.testing.assert_allclose(dev.to_host(losses.mse(pred, target, "mean")), [2.5, 5.0])
    np.testing.assert_allclose(dev.to_host(losses.mse(pred, target, "sum")), [5.0, 10.0])
    assert dev.to_host(losses.mse(pred, target, "none")).shape == (2, 2)


@given(seed=seeds, n=st.integers(1, 5), classes=st.integers(2, 5),
       reduction=st.sampled_from(["mean", "sum", "n_way_times_mean"]))
def test_cross_entropy_gradient_matches_finite_differences(dev, seed, n, classes, reduction):
    rng = np.random.default_rng(seed)
    logits = dev.asarray(3 * rng.standard_normal((2, n, classes)))
    labels = dev.asarray(rng.integers(0, classes, (2, n)))
    gradcheck.check_grad(lambda z: anp.sum(losses.cross_entropy(z, labels, reduction)), logits, seed=seed)


@given(seed=seeds, reduction=st.sampled_from(["mean", "sum"]))
def test_mse_gradient_matches_finite_differences(dev, seed, reduction):
    rng = np.random.default_rng(seed)
    target = dev.asarray(rng.standard_normal((3, 2)))
    gradcheck.check_grad(lambda p: losses.mse(p, target, reduction), dev.asarray(rng.standard_normal((3, 2))))


def test_bad_loss_inputs_are_refused(dev):
    with pytest.raises(ValueError, match="shape"):
        losses.mse(dev.asarray(np.zeros((3, 1))), dev.asarray(np.zeros((2, 1))))
    with pytest.raises(ValueError, match="labels"):
        losses.cross_entropy(dev.asarray(np.zeros((3, 2))), dev.asarray(np.zeros(4, dtype=int)))
    with pytest.raises(ValueError, match="reduction"):
        losses.mse(dev.asarray(np.zeros((3, 1))), dev.asarray(np.zeros((3, 1))), "average")


def test_adam_first_step_and_convergence_on_a_quadratic(dev):
    """First Adam step moves every coordinate by lr·sign(g); Adam then converges on ½‖Aθ − b‖²."""
    a = dev.asarray(np.diag([1.0, 10.0]))
    b = dev.asarray(np.array([1.0, -2.0]))
    loss = lambda p: 0.5 * anp.sum((a @ p["theta"] - b) ** 2)
    params = {"theta": dev.asarray(np.array([3.0, 3.0]))}
    state = optimizers.adam_init(params)
    from autograd import grad
    first, state = optimizers.adam_update(params, grad(loss)(params), state, lr=0.1)
    np.testing.assert_allclose(dev.to_host(first["theta"]), [2.9, 2.9], rtol=1e-6)
    params = first
    for _ in range(2000):
        params, state = optimizers.adam_update(params, grad(loss)(params), state, lr=0.02)
    np.testing.assert_allclose(dev.to_host(params["theta"]), [1.0, -0.2], atol=1e-4)


def test_sgd_step(dev):
    params = {"w": dev.asarray(np.array([1.0, 2.0]))}
    out = optimizers.sgd_update(params, {"w": dev.asarray(np.array([0.5, -1.0]))}, lr=0.1)
    np.testing.assert_allclose(dev.to_host(out["w"]), [0.95, 2.1], rtol=1e-15)


def test_tree_helpers(dev):
    a = {"x": dev.asarray(np.array([1.0, 2.0])), "y": dev.asarray(np.ones((2, 2)))}
    b = trees.scale(a, 3.0)
    np.testing.assert_array_equal(dev.to_host(trees.interpolate(a, b, 0.0)["x"]), [1.0, 2.0])
    np.testing.assert_array_equal(dev.to_host(trees.interpolate(a, b, 1.0)["y"]), 3 * np.ones((2, 2)))
    np.testing.assert_array_equal(dev.to_host(trees.add(a, b)["x"]), [4.0, 8.0])
    vector, unflatten = trees.flatten(a)
    assert dev.to_host(vector).tolist() == [1.0, 2.0, 1.0, 1.0, 1.0, 1.0]
    assert float(trees.vdot(unflatten(vector), a)) == pytest.approx(9.0)
    batched = trees.broadcast_tasks(a, 4)
    assert batched["y"].shape == (4, 2, 2)
    np.testing.assert_array_equal(dev.to_host(trees.take_task(batched, 2)["x"]), [1.0, 2.0])
    with pytest.raises(ValueError, match="keys"):
        trees.add(a, {"x": a["x"]})
    with pytest.raises(ValueError, match="shape"):
        trees.add(a, {"x": a["y"], "y": a["y"]})
