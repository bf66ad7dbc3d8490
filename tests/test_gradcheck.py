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


@pytest.mark.equation("gradcheck", "(1)")
@given(seed=st.integers(0, 2**32 - 1))
def test_right_gradient_passes(dev, seed):
    gradcheck.check_grad(f, tree(dev, seed), seed=seed)


@pytest.mark.equation("gradcheck", "(1)")
@pytest.mark.parametrize("relative_error", [1e-3, -1e-3])
def test_gradient_wrong_by_a_tenth_of_a_percent_fails(dev, relative_error):
    wrong = lambda p: {k: g * (1 + relative_error) for k, g in grad(f)(p).items()}
    with pytest.raises(gradcheck.GradientCheckError, match="disagrees"):
        gradcheck.check_grad(f, tree(dev, 0), grad_fn=wrong)


@pytest.mark.equation("gradcheck", "(1)")
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


@pytest.mark.equation("gradcheck", "(2)")
def test_vjp_by_the_adjoint_identity(dev):
    x = dev.asarray(np.random.default_rng(0).standard_normal(4))
    gradcheck.check_vjp(g_vector, x)
    from autograd import make_vjp
    wrong = lambda x_, v: 1.001 * make_vjp(g_vector)(x_)[0](v)
    with pytest.raises(gradcheck.GradientCheckError, match="vector-Jacobian"):
        gradcheck.check_vjp(g_vector, x, vjp_fn=wrong)


@pytest.mark.equation("gradcheck", "(3)")
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
    with pytest.raises(gradcheck.GradientCheckError), np.errstate(invalid="ignore"):
        gradcheck.check_grad(lambda p: anp.sum(anp.log(p - 10.0)), dev.asarray(np.ones(2)))


# ----- more wrong derivatives the checker must catch -----

def quadratic(v):
    return 0.5 * anp.sum(v ** 2) + anp.sum(anp.sin(v))


WRONG_GRADIENTS = {
    "sign flipped": lambda v: -grad(quadratic)(v),
    "zero": lambda v: 0.0 * v,
    "NaN": lambda v: grad(quadratic)(v) * np.nan,
    "missing the sin term": lambda v: v,
    "coordinates swapped": lambda v: grad(quadratic)(v)[::-1],
    "a tenth of a percent off in one coordinate": lambda v: grad(quadratic)(v) * np.asarray(
        np.array([1.0, 1.0, 1.001]), like=getval(v)),
}


@pytest.mark.equation("gradcheck", "(1)")
@pytest.mark.parametrize("which", sorted(WRONG_GRADIENTS))
def test_wrong_gradients_of_an_array_fail(dev, which):
    x = dev.asarray(np.array([0.3, -1.2, 2.0]))
    gradcheck.check_grad(quadratic, x)                               # the right one passes
    with pytest.raises(gradcheck.GradientCheckError, match="gradient disagrees"):
        gradcheck.check_grad(quadratic, x, grad_fn=WRONG_GRADIENTS[which])


@pytest.mark.equation("gradcheck", "(1)")
def test_tolerances_decide_what_counts_as_wrong(dev):
    """A 0.1% error passes at rtol 1e-2 and fails at the default 1e-5: the tolerance is used."""
    wrong = lambda p: {k: 1.001 * g for k, g in grad(f)(p).items()}
    gradcheck.check_grad(f, tree(dev, 4), grad_fn=wrong, rtol=1e-2)
    with pytest.raises(gradcheck.GradientCheckError):
        gradcheck.check_grad(f, tree(dev, 4), grad_fn=wrong)


@pytest.mark.equation("gradcheck", "(2)", "(3)")
def test_wrong_vjp_and_hvp_on_arrays_fail(dev):
    x = dev.asarray(np.random.default_rng(5).standard_normal(4))
    from autograd import make_vjp
    one_output_dropped = lambda x_, v: make_vjp(g_vector)(x_)[0](v * np.asarray(
        np.array([1.0, 1.0, 0.0]), like=getval(x_)))
    with pytest.raises(gradcheck.GradientCheckError, match="vector-Jacobian"):
        gradcheck.check_vjp(g_vector, x, vjp_fn=one_output_dropped)
    gradcheck.check_hvp(quadratic, x)
    gauss_newton = lambda x_, u: u                                   # drops the −sin curvature
    with pytest.raises(gradcheck.GradientCheckError, match="Hessian"):
        gradcheck.check_hvp(quadratic, x, hvp_fn=gauss_newton)


# ----- settings that cannot check anything are refused -----

def checkers(dev):
    """Every public entry point, called at x with the keyword settings given."""
    x = dev.asarray(np.array([0.3, -1.2]))
    return {"check_grad": lambda **kw: gradcheck.check_grad(quadratic, x, **kw),
            "check_vjp": lambda **kw: gradcheck.check_vjp(g_vector, x, **kw),
            "check_hvp": lambda **kw: gradcheck.check_hvp(quadratic, x, **kw),
            "numerical_grad": lambda **kw: gradcheck.numerical_grad(quadratic, x, **kw),
            "directional_derivative": lambda **kw: gradcheck.directional_derivative(
                quadratic, x, x, **kw)}


CHECKERS = ("check_grad", "check_vjp", "check_hvp", "numerical_grad", "directional_derivative")
DIRECTIONAL = ("check_grad", "check_vjp", "check_hvp")


@pytest.mark.parametrize("which", CHECKERS)
@pytest.mark.parametrize("eps", [0.0, -1e-6, np.nan, np.inf])
def test_nonpositive_or_non_finite_eps_is_refused(dev, which, eps):
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        checkers(dev)[which](eps=eps)


@pytest.mark.parametrize("which", DIRECTIONAL)
@pytest.mark.parametrize("tolerance", ["rtol", "atol"])
@pytest.mark.parametrize("value", [-1e-5, np.nan, np.inf])
def test_negative_or_nan_tolerances_are_refused(dev, which, tolerance, value):
    with pytest.raises(ValueError, match=f"{tolerance} must be a finite number >= 0"):
        checkers(dev)[which](**{tolerance: value})


@pytest.mark.parametrize("which", DIRECTIONAL)
@pytest.mark.parametrize("n, error", [(0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError)])
def test_fewer_than_one_or_non_integer_directions_are_refused(dev, which, n, error):
    with pytest.raises(error, match="n_directions must be an integer >= 1"):
        checkers(dev)[which](n_directions=n)


@pytest.mark.parametrize("which", DIRECTIONAL)
def test_a_rng_that_is_not_a_generator_or_a_bad_seed_is_refused(dev, which):
    with pytest.raises(TypeError, match="rng must be a Generator; got RandomState"):
        checkers(dev)[which](rng=np.random.RandomState(0))
    with pytest.raises(ValueError, match="seed must be an integer >= 0; got -1"):
        checkers(dev)[which](seed=-1)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_x_is_refused_naming_it(dev, bad):
    dirty = dev.asarray(np.array([0.3, bad]))
    for check in (lambda: gradcheck.check_grad(quadratic, dirty),
                  lambda: gradcheck.check_vjp(g_vector, dirty),
                  lambda: gradcheck.check_hvp(quadratic, dirty),
                  lambda: gradcheck.numerical_grad(quadratic, dirty),
                  lambda: gradcheck.directional_derivative(quadratic, dirty, dirty)):
        with pytest.raises(ValueError, match="x contains NaN or inf"):
            check()
    dirty_tree = dict(tree(dev, 0), b=dirty)
    with pytest.raises(ValueError, match=r"x\['b'\] contains NaN or inf"):
        gradcheck.check_grad(f, dirty_tree)
    clean = dev.asarray(np.array([0.3, 1.0]))
    with pytest.raises(ValueError, match="u contains NaN or inf"):
        gradcheck.directional_derivative(quadratic, clean, dirty)


def test_x_that_is_not_a_float_array_or_is_an_empty_tree_is_refused(dev):
    with pytest.raises(TypeError, match="x must be a floating-point array; got dtype int64"):
        gradcheck.check_grad(quadratic, dev.asarray(np.array([1, 2])))
    with pytest.raises(TypeError, match="x must be a floating-point array; got list"):
        gradcheck.check_grad(quadratic, [0.3, 1.0])
    with pytest.raises(ValueError, match="x is an empty tree"):
        gradcheck.check_grad(lambda p: 0.0, {})
    with pytest.raises(ValueError, match=r"the direction u must have x's shape \(2,\); got \(3,\)"):
        gradcheck.directional_derivative(quadratic, dev.asarray(np.zeros(2)), dev.asarray(np.zeros(3)))
