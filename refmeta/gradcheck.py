"""Gradient checks by central finite differences, in float64.

A derivative is checked along random directions, as autograd's ``check_grads``
does, which tests every coordinate at once without forming the Jacobian:

    gradient         ⟨∇f(x), u⟩      ≈ (f(x + εu) − f(x − εu)) / 2ε            f scalar          (1)
    adjoint / VJP    ⟨Jᵀv, u⟩ = ⟨v, Ju⟩,  Ju ≈ (f(x + εu) − f(x − εu)) / 2ε     f array-valued    (2)
    Hessian-vector   ⟨w, H u⟩        ≈ ⟨w, ∇f(x + εu) − ∇f(x − εu)⟩ / 2ε                         (3)

The central difference has truncation error O(ε²) and rounding error
O(eps_machine·|f| / ε); with ε = 1e-6 in float64 both sit near 1e-10 for
well-scaled problems, so the default tolerances (rtol = 1e-5, atol = 1e-8) leave
four orders of margin while a gradient that is wrong by 0.1% still fails.

The derivative under test is passed in as a function (``grad_fn``,
``vjp_fn``, ``hvp_fn``); it defaults to autograd's, so users can check their
own gradients with the same code.  ``x`` may be an array or a ``dict`` tree.
Directions are drawn from the ``numpy.random.Generator`` given (or one seeded
with ``seed``), on the host, then moved to ``x``'s device.

Settings that cannot check anything are refused (through ``refmeta.checks``): ε ≤ 0 or not
finite, a negative or NaN tolerance, fewer than one direction, an ``x`` (or direction)
that is not a finite floating-point array or a non-empty tree of them, an ``f`` (or derivative)
that is not a function, and, where f must be scalar, an f(x) that is not a real scalar.
A derivative that disagrees, or is NaN, raises ``GradientCheckError``.
"""

import autograd.numpy as anp
import numpy as np
from autograd import grad, make_vjp

from refmeta import checks
from refmeta.nn import trees

__all__ = ["GradientCheckError", "check_grad", "check_vjp", "check_hvp", "numerical_grad",
           "directional_derivative"]


class GradientCheckError(AssertionError):
    """A derivative disagreed with finite differences by more than the tolerance."""


def check_grad(f, x, grad_fn=None, *, n_directions=3, eps=1e-6, rtol=1e-5, atol=1e-8,
               rng=None, seed=0):
    """Check the gradient of scalar ``f`` at ``x`` along random directions, by (1).

    Args:
        f: x -> scalar.
        x: array or dict tree of float64 arrays.
        grad_fn: x -> gradient with x's structure; default ``autograd.grad(f)``.
    Returns:
        list of (analytic, numeric) pairs, one per direction.
    Raises:
        GradientCheckError if |analytic − numeric| > atol + rtol·max(|analytic|, |numeric|).
    """
    rng = _check_settings(x, n_directions, eps, rtol, atol, rng, seed)
    _check_scalar_function(f, x, grad_fn=grad_fn)
    gradient = (grad_fn or grad(f))(x)
    _check_structure(gradient, x, "gradient")
    pairs = []
    for _ in range(n_directions):
        u = _random_like(x, rng)
        pairs.append((_inner(gradient, u), directional_derivative(f, x, u, eps)))
    _compare(pairs, rtol, atol, "gradient")
    return pairs


def check_vjp(f, x, vjp_fn=None, *, n_directions=3, eps=1e-6, rtol=1e-5, atol=1e-8,
              rng=None, seed=0):
    """Check a vector-Jacobian product of array-valued ``f`` by the adjoint identity (2).

    Args:
        vjp_fn: (x, v) -> Jᵀv with x's structure; default autograd's ``make_vjp``.
    """
    rng = _check_settings(x, n_directions, eps, rtol, atol, rng, seed)
    checks.function("f", f)
    if vjp_fn is not None:
        checks.function("vjp_fn", vjp_fn)
    if vjp_fn is None:
        vjp_fn = lambda x_, v_: make_vjp(f)(x_)[0](v_)
    fx = f(x)
    pairs = []
    for _ in range(n_directions):
        u, v = _random_like(x, rng), _random_like(fx, rng)
        jtv = vjp_fn(x, v)
        _check_structure(jtv, x, "vector-Jacobian product")
        numeric = _inner(v, _central(f, x, u, eps))
        pairs.append((_inner(jtv, u), numeric))
    _compare(pairs, rtol, atol, "vector-Jacobian product")
    return pairs


def check_hvp(f, x, hvp_fn=None, *, n_directions=3, eps=1e-6, rtol=1e-5, atol=1e-8,
              rng=None, seed=0):
    """Check Hessian-vector products of scalar ``f`` against differences of its gradient (3).

    Args:
        hvp_fn: (x, u) -> H(x) u with x's structure; default autograd's grad of ⟨∇f, u⟩.
            The numeric side differences autograd's gradient, so check that first.
    """
    rng = _check_settings(x, n_directions, eps, rtol, atol, rng, seed)
    _check_scalar_function(f, x, hvp_fn=hvp_fn)
    if hvp_fn is None:
        hvp_fn = lambda x_, u_: grad(lambda y: _dot(grad(f)(y), u_))(x_)
    pairs = []
    for _ in range(n_directions):
        u, w = _random_like(x, rng), _random_like(x, rng)
        hu = hvp_fn(x, u)
        _check_structure(hu, x, "Hessian-vector product")
        pairs.append((_inner(w, hu), _inner(w, _central(grad(f), x, u, eps))))
    _compare(pairs, rtol, atol, "Hessian-vector product")
    return pairs


def directional_derivative(f, x, u, eps=1e-6):
    """(f(x + εu) − f(x − εu)) / 2ε for scalar ``f``, as a Python float."""
    checks.positive("eps", eps)
    _check_point("x", x)
    _check_point("u", u)
    if isinstance(x, dict):
        trees.check_same_keys(u, x)
    elif np.shape(u) != np.shape(x):
        raise ValueError(f"the direction u must have x's shape {np.shape(x)}; got {np.shape(u)}")
    _check_scalar_function(f, x)
    return float(_central(f, x, u, eps))


def numerical_grad(f, x, eps=1e-6):
    """The full gradient of scalar ``f`` by central differences, one coordinate at a time.

    Costs 2·size(x) evaluations: for tiny models only.  Returns host float64
    arrays (a tree when ``x`` is a tree).
    """
    checks.positive("eps", eps)
    _check_point("x", x)
    _check_scalar_function(f, x)
    vector, unflatten = trees.flatten(x) if isinstance(x, dict) else (x.reshape(-1), None)
    host = np.empty(vector.shape[0])
    for i in range(vector.shape[0]):
        basis = np.zeros(vector.shape[0])
        basis[i] = 1.0
        u = np.asarray(basis, like=vector)
        step = unflatten(u) if unflatten else u.reshape(x.shape)
        host[i] = float(_central(f, x, step, eps))
    if unflatten is None:
        return host.reshape(x.shape)
    return {name: _to_host(value) for name, value in unflatten(np.asarray(host, like=vector)).items()}


def _central(f, x, u, eps):
    """(f(x + εu) − f(x − εu)) / 2ε, leaf-wise when f returns a tree."""
    plus, minus = f(_axpy(eps, u, x)), f(_axpy(-eps, u, x))
    if isinstance(plus, dict):
        return trees.map_tree(lambda a, b: (a - b) / (2 * eps), plus, minus)
    return (plus - minus) / (2 * eps)


def _axpy(a, u, x):
    if isinstance(x, dict):
        return trees.map_tree(lambda ui, xi: xi + a * ui, u, x)
    return x + a * u


def _dot(a, b):
    """⟨a, b⟩ summed over every leaf; differentiable in ``a`` (which may be a traced tree)."""
    if isinstance(b, dict):
        return sum(anp.sum(a[name] * b[name]) for name in sorted(b))
    return anp.sum(a * b)


def _inner(a, b):
    return float(_dot(a, b))


def _random_like(x, rng):
    if isinstance(x, dict):
        return {name: _random_like(x[name], rng) for name in sorted(x)}
    return np.asarray(rng.standard_normal(np.shape(x)), like=x)


def _check_structure(derivative, x, what):
    if isinstance(x, dict):
        trees.check_same_keys(derivative, x)
    elif np.shape(derivative) != np.shape(x):
        raise GradientCheckError(f"{what} has shape {np.shape(derivative)}; x has {np.shape(x)}")


def _compare(pairs, rtol, atol, what):
    for analytic, numeric in pairs:
        if not np.isfinite(analytic) or not np.isfinite(numeric) or \
                abs(analytic - numeric) > atol + rtol * max(abs(analytic), abs(numeric)):
            raise GradientCheckError(
                f"{what} disagrees with central differences: analytic {analytic!r}, "
                f"numeric {numeric!r} (|diff| {abs(analytic - numeric):.3e} > "
                f"atol {atol:g} + rtol {rtol:g} · max)")


def _check_point(name, x):
    """x: a finite float array, or a non-empty dict tree of them."""
    if isinstance(x, dict):
        checks.finite_tree(name, x)
    else:
        checks.finite(name, x)


def _check_scalar_function(f, x, **derivatives):
    """f is a function with a real scalar f(x) (one evaluation); each derivative given is a function."""
    checks.function("f", f)
    for name, derivative in derivatives.items():
        if derivative is not None:
            checks.function(name, derivative)
    checks.scalar_output("f", f(x))


def _check_settings(x, n_directions, eps, rtol, atol, rng, seed):
    """Refuse settings under which nothing is checked; returns the Generator to draw from."""
    _check_point("x", x)
    checks.integer("n_directions", n_directions, minimum=1)
    checks.positive("eps", eps)
    checks.nonnegative("rtol", rtol)
    checks.nonnegative("atol", atol)
    if rng is not None:
        return checks.generator(rng)
    return np.random.default_rng(checks.integer("seed", seed, minimum=0))


def _to_host(x):
    return x.get() if hasattr(x, "get") else np.asarray(x)
