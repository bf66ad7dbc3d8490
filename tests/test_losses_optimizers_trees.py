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


# ----- losses: bad inputs -----

def test_mismatched_loss_shapes_are_refused(dev):
    with pytest.raises(ValueError, match=r"pred \(3, 1\) and target \(2, 1\)"):
        losses.mse(dev.asarray(np.zeros((3, 1))), dev.asarray(np.zeros((2, 1))))
    with pytest.raises(ValueError, match=r"cross_entropy labels must have shape \(3,\); got \(4,\)"):
        losses.cross_entropy(dev.asarray(np.zeros((3, 2))), dev.asarray(np.zeros(4, dtype=int)))
    with pytest.raises(ValueError, match=r"expected logits \(\.\.\., n, C\); got \(3,\)"):
        losses.cross_entropy(dev.asarray(np.zeros(3)), dev.asarray(np.zeros(3, dtype=int)))


def test_unknown_reductions_are_refused(dev):
    pred = dev.asarray(np.zeros((3, 1)))
    with pytest.raises(ValueError, match="reduction must be one of 'mean', 'sum', 'none'; got 'average'"):
        losses.mse(pred, pred, "average")
    with pytest.raises(ValueError, match="got 'n_way_times_mean'"):          # classification only
        losses.mse(pred, pred, "n_way_times_mean")
    with pytest.raises(ValueError, match="got 'average'"):
        losses.cross_entropy(pred, dev.asarray(np.zeros(3, dtype=int)), "average")
    with pytest.raises(ValueError, match="reduction must be one of"):
        losses.reduce(pred[:, 0], "max")


@pytest.mark.parametrize("bad", [-1, 3])
def test_labels_outside_0_to_c_minus_1_are_refused(dev, bad):
    logits = dev.asarray(np.zeros((2, 3)))
    labels = dev.asarray(np.array([0, bad]))
    with pytest.raises(ValueError, match=rf"cross_entropy labels: labels must be in 0\.\.2 .*{bad}"):
        losses.cross_entropy(logits, labels)
    with pytest.raises(ValueError, match=r"one_hot labels: labels must be in 0\.\.2"):
        losses.one_hot(labels, 3, logits)


def test_float_labels_are_refused(dev):
    logits = dev.asarray(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="cross_entropy labels: class labels must be integers; got float64"):
        losses.cross_entropy(logits, dev.asarray(np.array([0.0, 1.0])))
    with pytest.raises(TypeError, match="one_hot labels: class labels must be integers"):
        losses.one_hot(dev.asarray(np.array([0.0, 1.0])), 3, logits)
    with pytest.raises(TypeError, match="n_classes must be an integer"):
        losses.one_hot(dev.asarray(np.array([0, 1])), 3.0, logits)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused_naming_the_array(dev, bad):
    clean = np.zeros((2, 3))
    dirty = clean.copy()
    dirty[1, 2] = bad
    with pytest.raises(ValueError, match="mse pred contains NaN or inf"):
        losses.mse(dev.asarray(dirty), dev.asarray(clean))
    with pytest.raises(ValueError, match="mse target contains NaN or inf"):
        losses.mse(dev.asarray(clean), dev.asarray(dirty))
    with pytest.raises(ValueError, match="cross_entropy logits contains NaN or inf"):
        losses.cross_entropy(dev.asarray(dirty), dev.asarray(np.array([0, 1])))


def test_check_false_skips_the_checks_and_gives_the_same_number(dev):
    rng = np.random.default_rng(0)
    pred, target = dev.asarray(rng.standard_normal((2, 4, 3))), dev.asarray(rng.standard_normal((2, 4, 3)))
    logits, labels = dev.asarray(rng.standard_normal((2, 4, 3))), dev.asarray(rng.integers(0, 3, (2, 4)))
    # the same path run twice: bit-equal
    for reduction in ("mean", "sum", "none"):
        np.testing.assert_array_equal(dev.to_host(losses.mse(pred, target, reduction, check=False)),
                                      dev.to_host(losses.mse(pred, target, reduction)))
    for reduction in ("mean", "sum", "none", "n_way_times_mean"):
        np.testing.assert_array_equal(
            dev.to_host(losses.cross_entropy(logits, labels, reduction, check=False)),
            dev.to_host(losses.cross_entropy(logits, labels, reduction)))
    np.testing.assert_array_equal(dev.to_host(losses.one_hot(labels, 3, logits, check=False)),
                                  dev.to_host(losses.one_hot(labels, 3, logits)))
    # and it does skip them: NaN goes through, an unseen class is simply never hot
    nan_pred = dev.asarray(np.full((2, 1), np.nan))
    assert np.isnan(float(losses.mse(nan_pred, nan_pred, check=False)))
    assert not dev.to_host(losses.one_hot(dev.asarray(np.array([5])), 3, logits, check=False)).any()


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


def test_global_norm_clipping_by_hand(dev):
    grads = {"a": dev.asarray(np.array([3.0, 0.0])), "b": dev.asarray(np.array([[4.0]]))}   # ‖g‖ = 5
    clipped = optimizers.clip_by_global_norm(grads, 2.5)
    np.testing.assert_allclose(dev.to_host(clipped["a"]), [1.5, 0.0], rtol=1e-15)
    np.testing.assert_allclose(dev.to_host(clipped["b"]), [[2.0]], rtol=1e-15)
    assert optimizers.clip_by_global_norm(grads, 5.0) is grads            # ‖g‖ ≤ c: unchanged
    assert optimizers.clip_by_global_norm(grads, None) is grads           # None: no clipping


# ----- optimizers: bad inputs -----

def small_tree(dev):
    return {"w": dev.asarray(np.array([1.0, 2.0])), "b": dev.asarray(np.array([0.5]))}


@pytest.mark.parametrize("lr, error", [(-0.1, ValueError), (np.nan, ValueError), (np.inf, ValueError),
                                       ("0.1", TypeError), (None, TypeError)])
def test_negative_or_non_finite_learning_rates_are_refused(dev, lr, error):
    params = small_tree(dev)
    with pytest.raises(error, match=r"lr must be a finite number >= 0"):
        optimizers.sgd_update(params, params, lr)
    with pytest.raises(error, match=r"lr must be a finite number >= 0"):
        optimizers.adam_update(params, params, optimizers.adam_init(params), lr=lr)


@pytest.mark.parametrize("setting, message", [
    ({"b1": 1.0}, r"b1 must be a finite number in \[0, 1\); got 1.0"),
    ({"b1": -0.1}, r"b1 must be a finite number in \[0, 1\)"),
    ({"b2": 1.5}, r"b2 must be a finite number in \[0, 1\)"),
    ({"b2": np.nan}, r"b2 must be a finite number in \[0, 1\)"),
    ({"eps": 0.0}, r"eps must be a finite number > 0; got 0.0"),
    ({"eps": -1e-8}, r"eps must be a finite number > 0")])
def test_adam_hyperparameters_out_of_range_are_refused(dev, setting, message):
    params = small_tree(dev)
    with pytest.raises(ValueError, match=message):
        optimizers.adam_update(params, params, optimizers.adam_init(params), **setting)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_adam_refuses_nan_or_inf_in_grads_or_params_naming_the_leaf(dev, bad):
    params, state = small_tree(dev), optimizers.adam_init(small_tree(dev))
    dirty = dict(params, b=dev.asarray(np.array([bad])))
    with pytest.raises(ValueError, match=r"grads\['b'\] contains NaN or inf"):
        optimizers.adam_update(params, dirty, state)
    with pytest.raises(ValueError, match=r"params\['b'\] contains NaN or inf"):
        optimizers.adam_update(dirty, params, state)


def test_empty_params_trees_are_refused(dev):
    with pytest.raises(ValueError, match="params is an empty tree"):
        optimizers.adam_init({})
    with pytest.raises(TypeError, match="params must be a dict of arrays; got list"):
        optimizers.adam_init([dev.asarray(np.zeros(2))])
    params = small_tree(dev)
    with pytest.raises(ValueError, match="grads is an empty tree"):
        optimizers.adam_update(params, {}, optimizers.adam_init(params))


def test_optimizer_trees_with_a_missing_or_extra_key_are_refused_naming_it(dev):
    params = small_tree(dev)
    state = optimizers.adam_init(params)
    with pytest.raises(ValueError, match=r"\['b'\] only in the first"):
        optimizers.adam_update(params, {"w": params["w"]}, state)
    with pytest.raises(ValueError, match=r"\['extra'\] only in the second"):
        optimizers.sgd_update(params, dict(params, extra=params["b"]), 0.1)
    with pytest.raises(TypeError, match="state must be a AdamState"):
        optimizers.adam_update(params, params, (0, params, params))


def test_clipping_refuses_a_nonpositive_norm_and_nan_gradients(dev):
    grads = small_tree(dev)
    for max_norm in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="max_norm must be a finite number > 0"):
            optimizers.clip_by_global_norm(grads, max_norm)
    with pytest.raises(ValueError, match=r"grads\['w'\] contains NaN or inf"):
        optimizers.clip_by_global_norm(dict(grads, w=dev.asarray(np.array([1.0, np.nan]))), 1.0)
    with pytest.raises(ValueError, match="overflows"), np.errstate(over="ignore"):
        optimizers.clip_by_global_norm(dict(grads, w=dev.asarray(np.array([1e200, 1.0]))), 1.0)


def test_optimizers_with_check_false_give_the_same_numbers(dev):
    rng = np.random.default_rng(1)
    params = dev.tree({"w": rng.standard_normal((3, 2)), "b": rng.standard_normal(2)})
    grads = dev.tree({"w": rng.standard_normal((3, 2)), "b": rng.standard_normal(2)})
    state = optimizers.adam_init(params)
    checked, _ = optimizers.adam_update(params, grads, state, lr=0.01)
    unchecked, _ = optimizers.adam_update(params, grads, state, lr=0.01, check=False)
    same_path = [(optimizers.sgd_update(params, grads, 0.1), optimizers.sgd_update(params, grads, 0.1, check=False)),
                 (checked, unchecked),
                 (optimizers.clip_by_global_norm(grads, 0.5),
                  optimizers.clip_by_global_norm(grads, 0.5, check=False))]
    for a, b in same_path:                                   # the same path run twice: bit-equal
        for name in a:
            np.testing.assert_array_equal(dev.to_host(a[name]), dev.to_host(b[name]))


# ----- trees -----

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
    assert trees.subtree({"g.w": a["x"], "g.b": a["y"], "f.w": a["x"], "gw": a["x"]}, "g") == \
        {"w": a["x"], "b": a["y"]}


def test_empty_trees_are_refused_where_an_operation_needs_one():
    with pytest.raises(ValueError, match="flatten of an empty tree"):
        trees.flatten({})
    with pytest.raises(TypeError, match="flatten expects a dict tree; got list"):
        trees.flatten([np.zeros(2)])
    with pytest.raises(ValueError, match="mean of an empty list of trees"):
        trees.mean([])
    with pytest.raises(ValueError, match="n_tasks must be an integer >= 1; got 0"):
        trees.broadcast_tasks({"w": np.zeros(2)}, 0)
    with pytest.raises(TypeError, match="n_tasks must be an integer"):
        trees.broadcast_tasks({"w": np.zeros(2)}, 2.0)


def test_mismatched_tree_keys_are_named():
    a, b = {"w": np.zeros(2), "b": np.zeros(1)}, {"w": np.zeros(2), "bias": np.zeros(1)}
    with pytest.raises(ValueError, match=r"\['b'\] only in the first, \['bias'\] only in the second"):
        trees.add(a, b)
    with pytest.raises(ValueError, match=r"\['b'\] only in the first"):
        trees.mean([a, {"w": np.zeros(2)}])
    with pytest.raises(ValueError, match=r"parameter 'b' has shape \(1,\) in one tree and \(3,\)"):
        trees.vdot(a, {"w": np.zeros(2), "b": np.zeros(3)})
    _, unflatten = trees.flatten(a)
    with pytest.raises(ValueError, match=r"expected a vector of shape \(3,\); got \(4,\)"):
        unflatten(np.zeros(4))


# ----- trees.grad: autograd's grad with each leaf its own variable -----
def _tree_function(t):
    """A scalar reading one leaf twice, one through indexing, one not at all ("unused")."""
    return (anp.sum(anp.sin(t["w"] @ t["x"])) + anp.sum(t["w"] ** 3) + anp.cos(t["x"][1]).sum()
            + anp.sum(t["b"][0] * t["w"]))


def _tree(dev, rng):
    return dev.tree({"w": rng.standard_normal((2, 3)), "x": rng.standard_normal((3, 2)),
                     "b": rng.standard_normal((4, 3)), "unused": rng.standard_normal(5)})


@given(seed=st.integers(0, 2**32 - 1))
def test_tree_grad_equals_autograd_grad_and_finite_differences(dev, seed):
    """The same VJPs as autograd's grad over the dict, summed in arrival order: equal to
    rounding; an unread leaf gets zeros on its device; extra arguments pass through."""
    from autograd import grad
    rng = np.random.default_rng(seed)
    tree = _tree(dev, rng)
    ours, theirs = trees.grad(_tree_function)(tree), grad(_tree_function)(tree)
    assert set(ours) == set(tree)
    for name in tree:
        assert dev.is_array(ours[name]) and ours[name].shape == tree[name].shape
        np.testing.assert_allclose(dev.to_host(ours[name]), dev.to_host(theirs[name]), rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(dev.to_host(ours["unused"]), 0)
    gradcheck.check_grad(_tree_function, tree, grad_fn=trees.grad(_tree_function), rng=rng)
    scaled = trees.grad(lambda t, s, power=1: s ** power * _tree_function(t))(tree, 2.0, power=2)
    np.testing.assert_allclose(dev.to_host(scaled["w"]), 4 * dev.to_host(ours["w"]), rtol=1e-13)


@given(seed=st.integers(0, 2**32 - 1))
def test_tree_grad_nests_to_second_order(dev, seed):
    """Hessian-vector products with trees.grad inside itself and inside autograd's grad, against
    autograd alone and against central differences (MAML nests it so)."""
    from autograd import grad
    rng = np.random.default_rng(seed)
    tree = _tree(dev, rng)
    u = _tree(dev, np.random.default_rng(seed + 1))
    along_u = lambda first: lambda t: sum(anp.sum(first(t)[name] * u[name]) for name in sorted(u))
    ours = trees.grad(along_u(trees.grad(_tree_function)))(tree)
    mixed = grad(along_u(trees.grad(_tree_function)))(tree)
    theirs = grad(along_u(grad(_tree_function)))(tree)
    for name in tree:
        for other in (mixed, theirs):
            np.testing.assert_allclose(dev.to_host(ours[name]), dev.to_host(other[name]),
                                       rtol=1e-12, atol=1e-12)
    gradcheck.check_hvp(_tree_function, tree, rng=rng,
                        hvp_fn=lambda t, v: trees.grad(lambda s: trees.vdot(trees.grad(_tree_function)(s), v))(t))


def test_tree_grad_needs_a_scalar_and_gives_zeros_for_a_constant(dev):
    tree = _tree(dev, np.random.default_rng(0))
    with pytest.raises(TypeError, match=r"real scalar function; got shape \(2, 2\)"):
        trees.grad(lambda t: t["w"] @ t["x"])(tree)
    constant = trees.grad(lambda t: 3.0)(tree)
    assert all(dev.is_array(g) and not np.any(dev.to_host(g)) for g in constant.values())
