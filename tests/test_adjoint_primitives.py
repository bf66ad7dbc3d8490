"""The primitives whose adjoints are one array operation each (written for speed):
layers._matmul / _matmul_nt / _matmul_tn, conv.spread_channels / sum_channels, the mean of
squares under losses.mse (losses.mean_square, _scaled_residual, _residual_dot) and MAML's inner
step optimizers.descend.

Values against plain numpy, VJPs by the adjoint identity, and Hessian-vector products (which
differentiate the adjoints themselves) against finite differences, with every broadcasting
combination of task axes; on numpy and on the strict stand-in."""

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from hypothesis import given, strategies as st

from refmeta import gradcheck
from refmeta.nn import conv, layers, losses, optimizers

seeds = st.integers(0, 2**32 - 1)
LEADING = st.sampled_from([((), ()), ((2,), (2,)), ((2,), ()), ((), (2,)), ((3, 2), (2,)),
                           ((1,), (3,))])
PRODUCTS = {"nn": (layers._matmul, lambda a, b: a @ b, lambda m, k, n: ((m, k), (k, n))),
            "nt": (layers._matmul_nt, lambda a, b: a @ np.swapaxes(b, -1, -2),
                   lambda m, k, n: ((m, k), (n, k))),
            "tn": (layers._matmul_tn, lambda a, b: np.swapaxes(a, -1, -2) @ b,
                   lambda m, k, n: ((k, m), (k, n)))}


@given(seed=seeds, kind=st.sampled_from(sorted(PRODUCTS)), leading=LEADING,
       sizes=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3)))
def test_matrix_products_values_adjoints_and_second_derivatives(dev, seed, kind, leading, sizes):
    rng = np.random.default_rng(seed)
    product, reference, shapes = PRODUCTS[kind]
    a_shape, b_shape = shapes(*sizes)
    host = {"a": rng.standard_normal(leading[0] + a_shape),
            "b": rng.standard_normal(leading[1] + b_shape)}
    x = dev.tree(host)
    np.testing.assert_allclose(dev.to_host(product(x["a"], x["b"])), reference(host["a"], host["b"]),
                               rtol=1e-14, atol=1e-14)
    gradcheck.check_vjp(lambda p: product(p["a"], p["b"]), x, rng=rng)
    f = lambda p: anp.sum(anp.sin(product(p["a"], p["b"])))
    gradcheck.check_grad(f, x, rng=rng)
    gradcheck.check_hvp(f, x, rng=rng)


@given(seed=seeds, spatial=st.sampled_from([0, 2]), p_lead=st.sampled_from([(), (2,), (1,)]),
       x_lead=st.sampled_from([(), (2,), (3, 2)]))
def test_channel_spread_and_sum_are_adjoint_and_match_numpy(dev, seed, spatial, p_lead, x_lead):
    rng = np.random.default_rng(seed)
    channel, channels = -1 - spatial, 3
    shape = np.broadcast_shapes(x_lead + (4, channels) + (2, 3)[:spatial],
                                p_lead + (1, channels) + (1,) * spatial)
    p = rng.standard_normal(p_lead + (channels,))
    spread = conv.spread_channels(dev.asarray(p), shape, channel)
    view = p.reshape(p_lead + (1, channels) + (1,) * spatial)
    np.testing.assert_array_equal(dev.to_host(spread), np.broadcast_to(view, shape))
    g = rng.standard_normal(shape)
    summed = dev.to_host(conv.sum_channels(dev.asarray(g), p.shape, channel))
    extra = len(shape) - view.ndim
    expected = np.sum(g, axis=tuple(i for i in range(len(shape))
                                    if i < extra or view.shape[i - extra] == 1))
    assert summed.shape == p.shape
    np.testing.assert_allclose(summed.reshape(-1), expected.reshape(-1), rtol=1e-13, atol=1e-13)
    # ⟨spread(p), g⟩ = ⟨p, sum(g)⟩, and derivatives through both, to second order
    assert abs(np.sum(np.broadcast_to(view, shape) * g) - np.sum(p * summed)) < 1e-11
    x = dev.tree({"p": p, "q": rng.standard_normal(p.shape), "y": rng.standard_normal(shape)})
    f = lambda t: anp.sum(anp.sin(t["y"] * conv.spread_channels(t["p"], shape, channel)
                                  + conv.spread_channels(t["q"], shape, channel)) ** 2)
    gradcheck.check_grad(f, x, rng=rng)
    gradcheck.check_hvp(f, x, rng=rng)
    h = lambda t: anp.sum(anp.cos(conv.sum_channels(t["y"], p.shape, channel) * t["p"]))
    gradcheck.check_hvp(h, x, rng=rng)


@given(seed=seeds, leading=LEADING)
def test_dense_with_any_task_axes_has_right_first_and_second_derivatives(dev, seed, leading):
    rng = np.random.default_rng(seed)
    x = dev.tree({"x": rng.standard_normal(leading[0] + (3, 2)),
                  "w": rng.standard_normal(leading[1] + (2, 4)),
                  "b": rng.standard_normal(leading[1] + (4,))})
    f = lambda p: anp.sum(anp.tanh(layers.dense(p["x"], p["w"], p["b"])) ** 2)
    gradcheck.check_grad(f, x, rng=rng)
    gradcheck.check_hvp(f, x, rng=rng)


@given(seed=seeds, lead=st.sampled_from([(), (2,), (3, 2)]), axes=st.sampled_from([(-2, -1), (-1,)]),
       n=st.integers(1, 3), d=st.integers(1, 3))
def test_mean_square_matches_numpy_and_finite_differences_to_third_order(dev, seed, lead, axes, n, d):
    rng = np.random.default_rng(seed)
    r = rng.standard_normal(lead + (n, d))
    np.testing.assert_array_equal(dev.to_host(losses.mean_square(dev.asarray(r), axes)),
                                  np.mean(np.square(r), axis=axes))
    x = dev.tree({"r": r, "c": rng.standard_normal(r.shape[:len(r.shape) - len(axes)])})
    f = lambda t: anp.sum(anp.sin(t["c"] * losses.mean_square(anp.tanh(t["r"]), axes)))
    gradcheck.check_grad(f, x, rng=rng)
    gradcheck.check_hvp(f, x, rng=rng)                          # _scaled_residual's VJPs
    gradient_norm = lambda t: anp.sum(autograd.grad(f)(t)["r"] ** 2)
    gradcheck.check_hvp(gradient_norm, x, rng=rng)              # _residual_dot's too


def test_mean_square_with_a_wrong_count_in_its_vjp_fails_the_check(dev, monkeypatch):
    rng = np.random.default_rng(0)
    r = dev.asarray(rng.standard_normal((2, 3, 2)))
    f = lambda r: anp.sum(anp.sin(losses.mean_square(r, (-2, -1))))
    gradcheck.check_grad(f, r, rng=np.random.default_rng(1))
    entries = losses._entries                    # the VJP divides by the last axis alone (d, not n·d)
    monkeypatch.setattr(losses, "_entries", lambda r, axes: entries(r, axes[-1:]))
    with pytest.raises(AssertionError):
        gradcheck.check_grad(f, r, rng=np.random.default_rng(1))


@given(seed=seeds, lr=st.floats(0.0, 2.0), broadcast=st.booleans())
def test_descend_is_theta_minus_lr_g_to_second_order(dev, seed, lr, broadcast):
    rng = np.random.default_rng(seed)
    host = {"theta": rng.standard_normal((3,) if broadcast else (2, 3)), "g": rng.standard_normal((2, 3))}
    x = dev.tree(host)
    np.testing.assert_array_equal(dev.to_host(optimizers.descend(x["theta"], x["g"], lr)),
                                  host["theta"] - lr * host["g"])
    f = lambda t: anp.sum(anp.sin(optimizers.descend(t["theta"], t["g"] ** 2, lr)) ** 2)
    gradcheck.check_grad(f, x, rng=rng)
    gradcheck.check_hvp(f, x, rng=rng)
