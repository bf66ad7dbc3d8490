"""The checker itself: it passes right derivatives and fails slightly wrong ones."""

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad
from autograd.tracer import getval
from hypothesis import given, strategies as st

from refmeta import gradcheck


def f(params):
    """A smooth scalar function of a tree: Σ sin(W x) + ‖b‖³."""
    x = np.asarray(np.linspace(-1.0, 1.0, 3), like=getval(params["w"]))
    return anp.sum(anp.sin(params["w"] @ x)) + anp.sum(params["b"] ** 2) ** 1.5


def tree(dev, seed):
    rng = np.random.default_rng(seed)
    return {"w": dev.asarray(rng.standard_normal((2, 3))), "b": dev.asarray(rng.standard_normal(2))}


@given(seed=st.integers(0, 2**32 - 1))
def test_right_gradient_passes(dev, seed):
    gradcheck.check_grad(f, tree(dev, seed), seed=seed)


@pytest.mark.parametrize("relative_error", [1e-3, -1e-3])
def test_gradient_wrong_by_a_tenth_of_a_percent_fails(dev, relative_error):
    wrong = lambda p: {k: g * (1 + relative_error) for k, g in grad(f)(p).items()}
    with pytest.raises(gradcheck.GradientCheckError, match="disagrees"):
        gradcheck.check_grad(f, tree(dev, 0), grad_fn=wrong)


def test_gradient_wrong_in_one_coordinate_fails(dev):
    def wrong(p):
        g = grad(f)(p)
        return dict(g, b=g["b"] + dev.asarray(np.array([0.0, 1e-3])))
    with pytest.raises(gradcheck.GradientCheckError):
        gradcheck.check_grad(f, tree(dev, 1), grad_fn=wrong)


def test_gradient_of_the_wrong_shape_fails(dev):
    with pytest.raises((gradcheck.GradientCheckError, ValueError)):
        gradcheck.check_grad(f, tree(dev, 1), grad_fn=lambda p: {"w": p["w"], "b": p["w"]})


def g_vector(x):
    return anp.stack([anp.sum(x ** 2), anp.prod(anp.cos(x)), anp.sum(anp.exp(x) * x[::-1])])


def test_vjp_by_the_adjoint_identity(dev):
    x = dev.asarray(np.random.default_rng(0).standard_normal(4))
    gradcheck.check_vjp(g_vector, x)
    from autograd import make_vjp
    wrong = lambda x_, v: 1.001 * make_vjp(g_vector)(x_)[0](v)
    with pytest.raises(gradcheck.GradientCheckError, match="vector-Jacobian"):
        gradcheck.check_vjp(g_vector, x, vjp_fn=wrong)


def test_hessian_vector_products(dev):
    x = tree(dev, 2)
    gradcheck.check_hvp(f, x)
    right = lambda x_, u: grad(lambda y: sum(anp.sum(grad(f)(y)[k] * u[k]) for k in u))(x_)
    wrong = lambda x_, u: {k: 1.001 * v for k, v in right(x_, u).items()}
    with pytest.raises(gradcheck.GradientCheckError, match="Hessian"):
        gradcheck.check_hvp(f, x, hvp_fn=wrong)


def test_numerical_grad_recovers_a_known_gradient(dev):
    x = dev.asarray(np.array([0.3, -1.2, 2.0]))
    quadratic = lambda v: anp.sum(v ** 2) + 3.0 * v[0] * v[1]
    expected = np.array([2 * 0.3 + 3 * -1.2, 2 * -1.2 + 3 * 0.3, 4.0])
    np.testing.assert_allclose(gradcheck.numerical_grad(quadratic, x), expected, rtol=1e-8)
    numeric_tree = gradcheck.numerical_grad(f, tree(dev, 3))
    analytic = {k: dev.to_host(v) for k, v in grad(f)(tree(dev, 3)).items()}
    for k in analytic:
        np.testing.assert_allclose(numeric_tree[k], analytic[k], rtol=1e-7, atol=1e-9)


def test_non_finite_values_fail(dev):
    with pytest.raises(gradcheck.GradientCheckError):
        gradcheck.check_grad(lambda p: anp.sum(anp.log(p - 10.0)), dev.asarray(np.ones(2)))
