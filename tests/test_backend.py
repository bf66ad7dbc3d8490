"""refmeta.device.backend, autograd_patches and strict: the strict stand-in is strict, and autograd through the
patched internals gives the same numbers on every device as on plain numpy."""

import os
import subprocess
import sys

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
import scipy.special
from hypothesis import given, strategies as st
from autograd.core import primitive_vjps
from autograd.numpy import numpy_vjps, numpy_wrapper
from autograd.test_util import check_grads

from refmeta.device import autograd_patches, backend
from refmeta.device.strict import StrictArray, from_strict, to_strict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def host(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ----- the stand-in is strict -----
def test_strict_refuses_implicit_conversion():
    s = to_strict(host(3))
    with pytest.raises(TypeError, match="implicit conversion to a NumPy array is not allowed"):
        np.asarray(s)
    with pytest.raises(TypeError):
        np.array([s, s])


@pytest.mark.parametrize("op", [
    lambda s, h: s + h, lambda s, h: h + s, lambda s, h: s * h[0, 0, ...],
    lambda s, h: s + np.array(1.0), lambda s, h: s @ h, lambda s, h: np.add(s, h),
    lambda s, h: np.concatenate([s, h]), lambda s, h: anp.concatenate([s, h]),
    lambda s, h: anp.where(s > 0, s, h), lambda s, h: s.__setitem__(0, h[0]),
    lambda s, h: np.dot(s, h.astype(np.int64)),
], ids=["add", "radd", "0d-view", "0d", "matmul", "ufunc", "concatenate", "anp.concatenate",
        "where", "setitem", "dot-int"])
def test_strict_refuses_numpy_operands(op):
    s, h = to_strict(host((2, 2))), host((2, 2), seed=1)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        op(s, h)


def test_strict_accepts_scalars_and_reads_explicitly():
    h = host((2, 3))
    s = to_strict(h)
    for result, expected in [(s + 1, h + 1), (2.0 * s, 2.0 * h), (np.float64(2) * s, 2 * h),
                             (s / np.float32(4), h / 4), (np.int64(3) - s, 3 - h),
                             (s ** 2, h ** 2), (-abs(s), -abs(h)), (s.T @ s, h.T @ h)]:
        assert isinstance(result, StrictArray)
        np.testing.assert_array_equal(result.get(), expected)
    assert isinstance(s.sum(), StrictArray) and s.sum().shape == ()  # 0-d, as on CuPy
    assert float(s[0, 0]) == h[0, 0] and s[0, 1].item() == h[0, 1] and bool(s[0, 0] == h[0, 0])
    with pytest.raises(TypeError, match="size-1"):
        float(s)
    s += 1
    s[0, :] = 0.0
    s[1] = to_strict(np.arange(3.0))
    np.testing.assert_array_equal(from_strict(s), [[0, 0, 0], [0, 1, 2]])


def test_like_creates_strict_arrays_with_a_copy():
    s = to_strict(host(3))
    h = np.arange(3.0)
    moved = np.asarray(h, like=s)
    h[0] = 99.0
    assert isinstance(moved, StrictArray) and moved.get()[0] == 0.0
    for made in [np.zeros((2, 3), like=s), np.ones(4, like=s), anp.zeros_like(s),
                 np.asarray([1.0, 2.0], like=s), np.arange(3, like=s)]:
        assert isinstance(made, StrictArray)


def test_ufunc_at_refuses_slices_and_tuples_like_cupy():
    s = to_strict(np.zeros(4))
    with pytest.raises(TypeError, match="slice or tuple"):
        np.add.at(s, slice(0, 2), 1.0)
    with pytest.raises(TypeError, match="slice or tuple"):
        np.add.at(s, (np.array([0, 1]),), 1.0)
    np.add.at(s, to_strict(np.array([0, 2, 0])), 1.0)  # an index array is fine; repeats add up
    np.testing.assert_array_equal(s.get(), [2, 0, 1, 0])


def test_autograd_tools_work_on_strict():
    """The registered VSpace is complete: check_grads (both modes), jacobian, complex inputs."""
    x = to_strict(host((3, 4)))
    check_grads(lambda x: anp.sum(anp.tanh(x) ** 2), modes=["rev", "fwd"], order=2)(x)
    jac = autograd.jacobian(lambda x: anp.tanh(x[0]) * 2)(x)
    assert isinstance(jac, StrictArray) and jac.shape == (4, 3, 4)
    z = to_strict(host(3) + 1j * host(3, seed=1))
    check_grads(lambda z: anp.real(anp.sum(anp.sin(z) * z)), modes=["rev"], order=1)(z)


# ----- gradients through the patched internals, on every device -----
def _mlp_loss(params, x, labels):
    """Softmax cross-entropy of a 2-layer MLP: indexing, logsumexp, maximum, dict params."""
    hidden = anp.maximum(x @ params["W1"] + params["b1"], 0.0)  # (n, h)
    logits = hidden @ params["W2"] + params["b2"]  # (n, k)
    log_probs = logits - autograd_patches.logsumexp(logits, axis=1, keepdims=True)
    return -anp.mean(log_probs[anp.arange(x.shape[0]), labels])


# name -> (scalar function of one array, input shape); each stresses one replacement
CASES = {
    "sum_axes_keepdims": (lambda x: anp.sum(anp.sin(anp.sum(x ** 2, axis=(0, 2), keepdims=True))), (2, 3, 4)),
    "sum_all": (lambda x: anp.sum(x ** 3), (3, 4)),
    "mean_axis": (lambda x: anp.sum(anp.mean(x ** 3, axis=-1) ** 2), (3, 4)),
    "var_ddof": (lambda x: anp.sum(anp.var(x, axis=0, ddof=1) * anp.var(x)), (3, 4)),
    "std": (lambda x: anp.sum(anp.std(x, axis=1)), (3, 4)),
    "max_keepdims": (lambda x: anp.sum(anp.max(x, axis=1, keepdims=True) * x), (3, 4)),
    "min_all": (lambda x: anp.min(x) * anp.sum(x ** 2), (3, 4)),
    "logsumexp_axis": (lambda x: anp.sum(autograd_patches.logsumexp(x, axis=1) ** 2), (3, 4)),
    "logsumexp_all_keepdims": (lambda x: anp.sum(autograd_patches.logsumexp(x * x, keepdims=True)), (3, 4)),
    "where": (lambda x: anp.sum(anp.where(x > 0, x ** 2, anp.sin(x))), (3, 4)),
    "where_broadcast": (lambda x: anp.sum(anp.where(x > 0, anp.sum(x, axis=0), x) ** 2), (3, 4)),
    "concatenate": (lambda x: anp.sum(anp.concatenate([x, x ** 2], axis=1) ** 2), (3, 4)),
    "stack": (lambda x: anp.sum(anp.stack([x, anp.sin(x)], axis=1) ** 3), (3, 4)),
    "array_of_rows": (lambda x: anp.sum(anp.array([x[0], x[2] ** 2, x[1]]) ** 3), (3, 4)),
    "dot_2d": (lambda x: anp.sum(anp.dot(x, x.T) ** 2), (3, 4)),
    "dot_1d_2d": (lambda x: anp.sum(anp.dot(x[0], x.T) ** 2) + anp.dot(x[0], x[1]) ** 2, (3, 4)),
    "matmul_batched": (lambda x: anp.sum((x @ anp.swapaxes(x, 1, 2)) ** 2), (2, 3, 4)),
    "index_basic": (lambda x: anp.sum(x[1:, ::2] ** 2) + x[0, 1] ** 3 + anp.sum(x[..., 2] ** 3), (3, 4)),
    "index_repeated": (lambda x: anp.sum(x[[0, 2, 0]] ** 2) + anp.sum(x[:, [1, 1]] ** 3), (3, 4)),
    "index_pairs": (lambda x: anp.sum(x[anp.arange(3), anp.array([1, 0, 1])] ** 2), (3, 4)),
    "index_mask": (lambda x: anp.sum(x[x > 0] ** 3), (3, 4)),
    "einsum": (lambda x: anp.sum(anp.einsum("ij,kj->ik", x, x) ** 2), (3, 4)),
    "einsum_summed_out": (lambda x: anp.sum(anp.einsum("ij,ik->i", x, x ** 2) ** 2), (3, 4)),
    "einsum_ellipsis": (lambda x: anp.sum(anp.einsum("...ij->...j", x) ** 3), (2, 3, 4)),
    "broadcasting": (lambda x: anp.sum((x + anp.sum(x, axis=0)) * x[:1] / (2.0 + x[:, :1] ** 2)), (3, 4)),
    "maximum": (lambda x: anp.sum(anp.maximum(x, 0.1) ** 2 + anp.maximum(x, x[::-1])), (3, 4)),
    "broadcast_to_leading": (lambda x: anp.sum(anp.broadcast_to(x, (5, 3, 4)) * anp.cos(x)), (3, 4)),
}


def _hvp(f, x, v):
    """Hessian-vector product as the gradient of a gradient: ∇_x ⟨∇f(x), v⟩."""
    return autograd.grad(lambda y: anp.sum(autograd.grad(f)(y) * v))(x)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_is_correct_on_numpy(name):
    f, shape = CASES[name]
    check_grads(f, modes=["rev"], order=2)(host(shape))


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_and_hvp_match_numpy(dev, name):
    f, shape = CASES[name]
    x, v = host(shape), host(shape, seed=1)
    grad, hvp = autograd.grad(f)(dev.asarray(x)), _hvp(f, dev.asarray(x), dev.asarray(v))
    assert dev.is_array(grad) and dev.is_array(hvp)
    np.testing.assert_allclose(dev.to_host(grad), autograd.grad(f)(x), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dev.to_host(hvp), _hvp(f, x, v), rtol=1e-12, atol=1e-13)


@given(shape=st.lists(st.integers(1, 3), min_size=1, max_size=3), data=st.data())
def test_reduction_gradients_match_numpy(dev, shape, data):
    """Any reduction, axis and keepdims: the broadcasting helper (replacement 1) on every device."""
    axis = data.draw(st.none() | st.integers(-len(shape), len(shape) - 1))
    keepdims, reduction = data.draw(st.booleans()), data.draw(st.sampled_from(["sum", "mean", "var", "max"]))
    f = lambda x: anp.sum(anp.sin(getattr(anp, reduction)(x ** 3, axis=axis, keepdims=keepdims)))
    x = host(tuple(shape))
    grad = autograd.grad(f)(dev.asarray(x))
    assert dev.is_array(grad)
    np.testing.assert_allclose(dev.to_host(grad), autograd.grad(f)(x), rtol=1e-12, atol=1e-13)


def test_mlp_gradient_and_hvp_match_numpy(dev):
    params = {"W1": host((4, 8)), "b1": host(8, 1), "W2": host((8, 3), 2), "b2": host(3, 3)}
    x, labels, v = host((6, 4), 4), np.array([0, 1, 2, 2, 1, 0]), host((4, 8), 5)
    loss_w1 = lambda w1, p, *data: _mlp_loss(dict(p, W1=w1), *data)
    grads = autograd.grad(_mlp_loss)(dev.tree(params), dev.asarray(x), dev.asarray(labels))
    hvp = _hvp(lambda w: loss_w1(w, dev.tree(params), dev.asarray(x), dev.asarray(labels)),
               dev.asarray(params["W1"]), dev.asarray(v))
    assert all(dev.is_array(g) for g in grads.values())
    expected = autograd.grad(_mlp_loss)(params, x, labels)
    for name in params:
        np.testing.assert_allclose(dev.to_host(grads[name]), expected[name], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dev.to_host(hvp), _hvp(lambda w: loss_w1(w, params, x, labels),
                                                      params["W1"], v), rtol=1e-12, atol=1e-14)


def test_logsumexp_matches_scipy(dev):
    x = np.array([[1000.0, 1000.0, -5.0], [-np.inf, 0.0, 1.0]])
    for axis, keepdims in [(None, False), (1, True), (0, False), (-1, False)]:
        got = autograd_patches.logsumexp(dev.asarray(x), axis=axis, keepdims=keepdims)
        np.testing.assert_allclose(dev.to_host(got), scipy.special.logsumexp(x, axis, keepdims=keepdims),
                                   rtol=1e-15)
    assert np.isneginf(dev.to_host(autograd_patches.logsumexp(dev.asarray(np.full(3, -np.inf)))))


# ----- without each replacement, autograd fails on the strict stand-in -----
def _undo(monkeypatch, key):
    """Put back autograd's original for one replacement (for the length of a test)."""
    original = autograd_patches._originals[key]
    targets = {"vjp of where": anp._original_where, "vjp of einsum": anp.einsum,
               "vjp of broadcast_to": anp.broadcast_to}
    if key in targets:
        monkeypatch.setitem(primitive_vjps, targets[key], original)
    else:
        monkeypatch.setattr(numpy_vjps if hasattr(numpy_vjps, key) else numpy_wrapper, key, original)


@pytest.mark.parametrize("key, case", [
    ("repeat_to_match_shape", "mean_axis"), ("vjp of where", "where"),
    ("concatenate_args", "concatenate"), ("dot_adjoint_0", "dot_2d"), ("untake", "index_basic"),
    ("parse_einsum_input", "einsum"), ("vjp of einsum", "einsum_summed_out"),
    ("_array_from_scalar_or_array", "stack"), ("array_from_args", "array_of_rows"),
])
def test_each_replacement_is_needed_on_strict(monkeypatch, key, case):
    f, shape = CASES[case]
    _undo(monkeypatch, key)
    autograd.grad(f)(host(shape))  # the original still works on numpy
    with pytest.raises((TypeError, AttributeError)):
        autograd.grad(f)(to_strict(host(shape)))


def test_scipy_logsumexp_fails_on_strict():
    from autograd.scipy.special import logsumexp
    with pytest.raises(TypeError):
        logsumexp(to_strict(host(3)))


def test_broadcast_to_leading_axes_needs_its_replacement(monkeypatch):
    f, shape = CASES["broadcast_to_leading"]
    _undo(monkeypatch, "vjp of broadcast_to")
    with pytest.raises(AssertionError, match="leading dims"):
        autograd.grad(f)(host(shape))


def test_patched_autograd_gives_the_unpatched_numbers_on_numpy(tmp_path):
    """The MLP gradient with the replacements is bit-for-bit the one from plain autograd."""
    script = ("import numpy as np, autograd, autograd.numpy as anp\n"
              "from autograd.scipy.special import logsumexp\n"
              "rng = np.random.default_rng(0)\n"
              "W, x = rng.standard_normal((4, 3)), rng.standard_normal((6, 4))\n"
              "def loss(W):\n"
              "    logits = anp.concatenate([x @ W, anp.einsum('ij,jk->ik', x, W)], 1)\n"
              "    logits = anp.where(logits > 0, logits, 0.1 * logits)\n"
              "    lp = logits - logsumexp(logits, axis=1, keepdims=True)\n"
              "    extra = anp.dot(W[0], W[1]) + anp.sum(anp.stack([W[:, 0], W[:, 1] ** 2]) ** 2)\n"
              "    extra = extra + anp.sum(anp.einsum('ij->i', W) ** 3) + anp.var(anp.array([W[0], W[2]]))\n"
              "    return -anp.mean(lp[anp.arange(6), [0, 1, 2, 3, 4, 5]]) + anp.sum(anp.max(W, 0) ** 2) + extra\n"
              f"np.save({str(tmp_path / 'g.npy')!r}, autograd.grad(loss)(W))\n"
              f"np.save({str(tmp_path / 'h.npy')!r}, autograd.hessian(loss)(W))\n")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    namespace = {}
    exec(script.replace("np.save(", "print("), namespace)
    for name, fn in [("g", autograd.grad), ("h", autograd.hessian)]:
        np.testing.assert_array_equal(fn(namespace["loss"])(namespace["W"]), np.load(tmp_path / f"{name}.npy"))


# ----- choosing the backend -----
def test_use_rejects_unknown_backends():
    with pytest.raises(ValueError, match="numpy, cupy"):
        backend.use("nonsense")
    assert backend.current() == "numpy"


def _run(env_value):
    env = dict(os.environ, REFMETA_BACKEND=env_value)
    return subprocess.run([sys.executable, "-c", "from refmeta.device import backend; print(backend.current())"],
                          env=env, cwd=REPO, capture_output=True, text=True)


def test_env_variable_is_honoured():
    assert _run("numpy").stdout.strip() == "numpy"
    bad = _run("nonsense")
    assert bad.returncode != 0 and "ValueError" in bad.stderr and "numpy, cupy" in bad.stderr


@pytest.mark.skipif(backend.is_available("cupy"), reason="cupy and a GPU are present")
def test_cupy_unavailable_fails_cleanly():
    assert backend.is_available("cupy") is False and backend.is_available("numpy") is True
    with pytest.raises((ImportError, RuntimeError), match="cupy"):
        backend.use("cupy")
    assert backend.current() == "numpy"
    result = _run("cupy")
    assert result.returncode != 0 and "backend 'cupy'" in result.stderr


def test_asarray_and_to_host_round_trip():
    tree = {"w": to_strict(np.eye(2)), "b": np.ones(2), "steps": 3, "pair": [to_strict(np.zeros(1))]}
    back = backend.to_host(tree)
    assert type(back["w"]) is np.ndarray and type(back["pair"][0]) is np.ndarray and back["steps"] == 3
    from refmeta.data.tasks import Episode
    episode = backend.to_host(Episode(*(to_strict(np.zeros(2)) for _ in range(4))))
    assert isinstance(episode, Episode) and type(episode.query_y) is np.ndarray
    assert backend.asarray([1, 2]).dtype == np.float64 and backend.asarray([1, 2], dtype=None).dtype.kind == "i"


def test_install_is_idempotent():
    before = (numpy_wrapper.concatenate_args, numpy_vjps.untake, dict(primitive_vjps))
    autograd_patches.install_autograd_patches()
    assert before == (numpy_wrapper.concatenate_args, numpy_vjps.untake, dict(primitive_vjps))
