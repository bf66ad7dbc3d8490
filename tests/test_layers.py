"""Layers: shapes by formula, naive-loop references, leading task axes, finite differences, and
bad sizes and names at the initialisers of the layers and of the models (test_models.py)."""

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad
from hypothesis import given, strategies as st

from refmeta import gradcheck
from refmeta.nn import conv, layers, models

seeds = st.integers(0, 2**32 - 1)


# ----- independent references: plain loops over numpy arrays -----

def naive_conv2d(x, w, b, stride):
    """x (n, C, H, W), w (F, C, 3, 3): the textbook sum, zero padding 1."""
    n, channels, height, width = x.shape
    padded = np.zeros((n, channels, height + 2, width + 2))
    padded[:, :, 1:-1, 1:-1] = x
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1
    out = np.zeros((n, w.shape[0], out_h, out_w))
    for m in range(n):
        for f in range(w.shape[0]):
            for p in range(out_h):
                for q in range(out_w):
                    window = padded[m, :, stride * p:stride * p + 3, stride * q:stride * q + 3]
                    out[m, f, p, q] = np.sum(window * w[f]) + (0.0 if b is None else b[f])
    return out


def naive_max_pool(x, ceil=False):
    """x (..., H, W) -> (..., H // 2, W // 2), or (..., ⌈H/2⌉, ⌈W/2⌉) with windows cut at the edge."""
    halve = (lambda n: -(-n // 2)) if ceil else (lambda n: n // 2)
    out = np.zeros(x.shape[:-2] + (halve(x.shape[-2]), halve(x.shape[-1])))
    for p in range(out.shape[-2]):
        for q in range(out.shape[-1]):
            out[..., p, q] = x[..., 2 * p:2 * p + 2, 2 * q:2 * q + 2].max(axis=(-2, -1))
    return out


def close(dev, actual, expected, rtol=1e-12, atol=1e-12):
    assert dev.is_array(actual), f"expected a {dev.name} array; got {type(actual).__name__}"
    np.testing.assert_allclose(dev.to_host(actual), expected, rtol=rtol, atol=atol)


def to_dev(dev, *arrays):
    return [dev.asarray(a) for a in arrays]


def check_first_and_second_order(f, x, rng, n_directions=3):
    """∇f and the Hessian-vector products ∇⟨∇f(x), u⟩ of scalar f against central differences."""
    gradcheck.check_grad(f, x, rng=rng, n_directions=n_directions)
    gradcheck.check_hvp(f, x, rng=rng, n_directions=n_directions)


# ----- dense, activations -----

def test_dense_matches_matmul_and_broadcasts_task_axes(dev):
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 5, 2)), rng.standard_normal((3, 2))
    expected = np.stack([x[t] @ w[t] + b[t] for t in range(3)])
    close(dev, layers.dense(*to_dev(dev, x, w, b)), expected)
    close(dev, layers.dense(*to_dev(dev, x, w[0], b[0])), x @ w[0] + b[0])        # shared params
    close(dev, layers.dense(*to_dev(dev, x[0], w, b)), np.stack([x[0] @ w[t] + b[t] for t in range(3)]))


def test_dense_rejects_mismatched_features(dev):
    x, w, b = to_dev(dev, np.zeros((4, 5)), np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(ValueError, match=r"w \(\.\.\., d_in, d_out\) \(3, 2\) expects x \(\.\.\., n, d_in\); got x \(4, 5\)"):
        layers.dense(x, w, b)
    with pytest.raises(ValueError, match=r"d_out=2.*got b \(3,\)"):
        layers.dense(x, *to_dev(dev, np.zeros((5, 2)), np.zeros(3)))


def test_relu_and_tanh(dev):
    x = np.array([-2.0, -0.0, 0.0, 0.5, 3.0])
    close(dev, layers.relu(dev.asarray(x)), np.maximum(x, 0))
    close(dev, layers.tanh(dev.asarray(x)), np.tanh(x))
    relu_grad = grad(lambda v: anp.sum(layers.relu(v)))(dev.asarray(x))
    close(dev, relu_grad, [0, 0, 0, 1, 1])                   # relu'(0) = 0, as PyTorch


# ----- conv2d -----

@given(seed=seeds, n=st.integers(1, 3), channels=st.integers(1, 3), filters=st.integers(1, 3),
       height=st.integers(1, 7), width=st.integers(1, 7), stride=st.sampled_from([1, 2]),
       bias=st.booleans())
def test_conv2d_matches_naive_loop(dev, seed, n, channels, filters, height, width, stride, bias):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((n, channels, height, width)), rng.standard_normal((filters, channels, 3, 3))
    b = rng.standard_normal(filters) if bias else None
    y = layers.conv2d(dev.asarray(x), dev.asarray(w), None if b is None else dev.asarray(b), stride)
    expected_shape = (n, filters, (height + 2 - 3) // stride + 1, (width + 2 - 3) // stride + 1)
    assert y.shape == expected_shape
    close(dev, y, naive_conv2d(x, w, b, stride))


@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_task_axes_equal_per_task_loop(dev, stride):
    rng = np.random.default_rng(stride)
    x = rng.standard_normal((2, 3, 2, 4, 5, 6))                    # (T, S, n, C, H, W)
    w, b = rng.standard_normal((2, 1, 3, 4, 3, 3)), rng.standard_normal((2, 1, 3))
    y = layers.conv2d(*to_dev(dev, x, w, b), stride=stride)
    for t in range(2):
        for s in range(3):
            close(dev, y[t, s], naive_conv2d(x[t, s], w[t, 0], b[t, 0], stride))
    shared = layers.conv2d(*to_dev(dev, x, w[0, 0], b[0, 0]), stride=stride)   # unbatched params
    close(dev, shared[1, 2], naive_conv2d(x[1, 2], w[0, 0], b[0, 0], stride))
    per_kernel = layers.conv2d(*to_dev(dev, x[0, 0], w[:, 0], b[:, 0]), stride=stride)  # unbatched x
    close(dev, per_kernel[1], naive_conv2d(x[0, 0], w[1, 0], b[1, 0], stride))


def test_conv2d_rejects_bad_inputs(dev):
    x = dev.asarray(np.zeros((2, 3, 5, 5)))
    with pytest.raises(ValueError, match=r"expects C=2 input channels; got x \(2, 3, 5, 5\) with C=3"):
        layers.conv2d(x, dev.asarray(np.zeros((4, 2, 3, 3))))
    with pytest.raises(ValueError, match=r"kernel \(\.\.\., F, C, 3, 3\); got shape \(4, 3, 5, 5\)"):
        layers.conv2d(x, dev.asarray(np.zeros((4, 3, 5, 5))))
    with pytest.raises(ValueError, match="stride must be an integer in 1..2; got 3"):
        layers.conv2d(x, dev.asarray(np.zeros((4, 3, 3, 3))), stride=3)
    with pytest.raises(ValueError, match=r"F=4 entries; got b \(3,\)"):
        layers.conv2d(x, dev.asarray(np.zeros((4, 3, 3, 3))), dev.asarray(np.zeros(3)))
    with pytest.raises(ValueError, match=r"x \(\.\.\., n, C, H, W\); got shape \(3, 5, 5\)"):
        layers.conv2d(dev.asarray(np.zeros((3, 5, 5))), dev.asarray(np.zeros((4, 3, 3, 3))))


@pytest.mark.parametrize("stride", [1, 2])
def test_col2im_is_the_adjoint_of_im2col(dev, stride):
    """⟨im2col(x), c⟩ = ⟨x, col2im(c)⟩ exactly, which makes each the other's VJP."""
    rng = np.random.default_rng(stride)
    x = rng.standard_normal((2, 3, 2, 5, 4))
    patches = conv.im2col(dev.asarray(x), stride)
    c = rng.standard_normal(patches.shape)
    back = conv.col2im(dev.asarray(c), x.shape, stride)
    assert back.shape == x.shape
    lhs = float(anp.sum(patches * dev.asarray(c)))
    assert lhs == pytest.approx(float(np.sum(x * dev.to_host(back))), rel=1e-12)


@given(seed=seeds, stride=st.sampled_from([1, 2]), leading=st.sampled_from([(), (2,)]),
       height=st.integers(2, 5))
def test_conv2d_first_and_second_derivatives_match_finite_differences(dev, seed, stride, leading,
                                                                      height):
    """Gradient, and the Hessian-vector product ∇(∇f · u), of a nonlinear loss through conv2d."""
    rng = np.random.default_rng(seed)
    tree = dev.tree({"x": rng.standard_normal(leading + (2, 2, height, 4)),
                     "w": rng.standard_normal(leading + (3, 2, 3, 3)),
                     "b": rng.standard_normal(leading + (3,))})
    f = lambda p: anp.sum(anp.sin(layers.conv2d(p["x"], p["w"], p["b"], stride)))
    check_first_and_second_order(f, tree, rng)


# ----- max pool -----

@given(seed=seeds, leading=st.sampled_from([(1,), (2, 3), (2, 1, 2)]), height=st.integers(2, 7),
       width=st.integers(2, 7))
def test_max_pool_matches_naive_loop(dev, seed, leading, height, width):
    x = np.random.default_rng(seed).standard_normal(leading + (2, height, width))
    y = layers.max_pool_2x2(dev.asarray(x))
    assert y.shape == leading + (2, height // 2, width // 2)
    close(dev, y, naive_max_pool(x))


def test_max_pool_gradient_goes_to_first_maximum_on_ties(dev):
    x = np.array([[[[1.0, 1.0, 0.0, 2.0, 9.0],
                    [1.0, 1.0, 2.0, 2.0, 9.0],
                    [9.0, 9.0, 9.0, 9.0, 9.0]]]])                  # odd edge dropped
    gradient = grad(lambda v: anp.sum(layers.max_pool_2x2(v)))(dev.asarray(x))
    expected = np.zeros_like(x)
    expected[0, 0, 0, 0] = expected[0, 0, 0, 3] = 1.0
    close(dev, gradient, expected)


@given(seed=seeds, height=st.integers(2, 5), width=st.integers(2, 5))
def test_max_pool_first_and_second_derivatives_match_finite_differences(dev, seed, height, width):
    rng = np.random.default_rng(seed)
    x = dev.asarray(rng.standard_normal((2, 2, height, width)))
    f = lambda v: anp.sum(anp.sin(layers.max_pool_2x2(v * v)))      # curvature through the pool
    check_first_and_second_order(f, x, rng)


def test_max_pool_rejects_too_small_input(dev):
    with pytest.raises(ValueError, match=r"H, W ≥ 2; got \(2, 3, 1, 4\)"):
        layers.max_pool_2x2(dev.asarray(np.zeros((2, 3, 1, 4))))
    with pytest.raises(ValueError, match=r"H, W ≥ 1; got \(2, 3, 0, 4\) \(rounding 'ceil'\)"):
        layers.max_pool_2x2(dev.asarray(np.zeros((2, 3, 0, 4))), rounding="ceil")
    with pytest.raises(ValueError, match="rounding must be one of 'floor', 'ceil'; got 'round'"):
        layers.max_pool_2x2(dev.asarray(np.zeros((2, 3, 4, 4))), rounding="round")


def test_ceil_max_pool_by_hand_covers_the_odd_edge_alone(dev):
    """3×5: the windows of the last row and column hold 2, 2 and 1 entries; the tie 7, 7 in the
    last column sends the gradient to the first (row-major), as in the whole windows."""
    x = np.array([[[[1.0, 5.0, 2.0, 0.0, 7.0],
                    [3.0, 4.0, 6.0, 1.0, 7.0],
                    [9.0, 0.0, 8.0, 2.0, 3.0]]]])
    close(dev, layers.max_pool_2x2(dev.asarray(x), rounding="ceil"), [[[[5.0, 6.0, 7.0], [9.0, 8.0, 3.0]]]])
    close(dev, layers.max_pool_2x2(dev.asarray(x)), [[[[5.0, 6.0]]]])           # floor drops them
    gradient = grad(lambda v: anp.sum(layers.max_pool_2x2(v, rounding="ceil")))(dev.asarray(x))
    expected = np.zeros_like(x)
    for row, col in ((0, 1), (1, 2), (0, 4), (2, 0), (2, 2), (2, 4)):
        expected[0, 0, row, col] = 1.0
    close(dev, gradient, expected)
    one = np.array([[[[-2.5]]]])
    close(dev, layers.max_pool_2x2(dev.asarray(one), rounding="ceil"), one)    # 1×1 stays itself


@given(seed=seeds, leading=st.sampled_from([(1,), (2, 3)]), height=st.integers(1, 7), width=st.integers(1, 7))
def test_ceil_max_pool_matches_naive_loop_and_floor_on_the_whole_windows(dev, seed, leading, height, width):
    x = np.random.default_rng(seed).standard_normal(leading + (2, height, width))
    y = layers.max_pool_2x2(dev.asarray(x), rounding="ceil")
    assert y.shape == leading + (2, -(-height // 2), -(-width // 2))
    close(dev, y, naive_max_pool(x, ceil=True))
    if height >= 2 and width >= 2:                          # the same windows, the same maxima
        floor = dev.to_host(layers.max_pool_2x2(dev.asarray(x), rounding="floor"))
        np.testing.assert_array_equal(dev.to_host(y)[..., :height // 2, :width // 2], floor)


@given(seed=seeds, height=st.integers(1, 5), width=st.integers(1, 5))
def test_ceil_max_pool_first_and_second_derivatives_match_finite_differences(dev, seed, height, width):
    rng = np.random.default_rng(seed)
    x = dev.asarray(rng.standard_normal((2, 2, height, width)))
    f = lambda v: anp.sum(anp.sin(layers.max_pool_2x2(v * v, rounding="ceil")))
    check_first_and_second_order(f, x, rng)


def test_ceil_max_pool_and_its_gradient_match_pytorch_ceil_mode():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(3).standard_normal((2, 3, 7, 5))
    t = torch.tensor(x, requires_grad=True)
    y = torch.nn.functional.max_pool2d(t, 2, 2, ceil_mode=True)
    torch.sin(y).sum().backward()
    np.testing.assert_array_equal(layers.max_pool_2x2(x, rounding="ceil"), y.detach().numpy())
    ours = grad(lambda v: anp.sum(anp.sin(layers.max_pool_2x2(v, rounding="ceil"))))(x)
    np.testing.assert_allclose(ours, t.grad.numpy(), rtol=1e-15, atol=0)       # the same cos(max)


# ----- batch norm -----

@given(seed=seeds, shape=st.sampled_from([(2, 5, 3, 2, 2), (3, 4, 2, 3, 1), (2, 6, 3), (7, 4)]))
def test_transductive_batch_norm_standardises_each_task_and_channel(dev, seed, shape):
    rng = np.random.default_rng(seed)
    x = 3.0 + 2.0 * rng.standard_normal(shape)
    spatial = 2 if len(shape) == 5 else 0
    y = dev.to_host(layers.batch_norm(dev.asarray(x), eps=1e-3, spatial_dims=spatial))
    axes = (-2 - spatial,) + tuple(range(-spatial, 0))             # example and spatial axes
    var = x.var(axis=axes, keepdims=True)
    np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=axes, keepdims=True), var / (var + 1e-3), rtol=1e-12)
    mean, batch_var = layers.batch_moments(dev.asarray(x), spatial)
    close(dev, mean, x.mean(axis=axes).reshape(mean.shape))
    close(dev, batch_var, var.reshape(batch_var.shape))


def test_batch_norm_offset_scale_and_running_mode(dev):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 3, 2, 2))                        # (T, n, C, H, W)
    offset, scale = rng.standard_normal(3), rng.standard_normal((2, 3))
    mean, var = rng.standard_normal((2, 3)), rng.uniform(0.5, 2.0, (2, 3))
    bcast = lambda p: p[..., None, :, None, None]
    y = layers.batch_norm(*to_dev(dev, x, offset, scale), mode="running",
                          running_mean=dev.asarray(mean), running_var=dev.asarray(var), eps=1e-5)
    close(dev, y, bcast(scale) * (x - bcast(mean)) / np.sqrt(bcast(var) + 1e-5) + bcast(offset))
    standard = dev.to_host(layers.batch_norm(dev.asarray(x)))
    only_offset = layers.batch_norm(dev.asarray(x), offset=dev.asarray(offset))
    only_scale = layers.batch_norm(dev.asarray(x), scale=dev.asarray(scale))
    close(dev, only_offset, standard + bcast(offset))
    close(dev, only_scale, standard * bcast(scale))


def test_batch_norm_rejects_bad_arguments(dev):
    x = dev.asarray(np.zeros((4, 3, 2, 2)))
    with pytest.raises(ValueError, match="mode must be one of 'transductive', 'running'; got 'eval'"):
        layers.batch_norm(x, mode="eval")
    with pytest.raises(ValueError, match="needs running_mean and running_var"):
        layers.batch_norm(x, mode="running")
    with pytest.raises(ValueError, match=r"offset must have C=3 entries; got \(2,\)"):
        layers.batch_norm(x, offset=dev.asarray(np.zeros(2)))


def test_batch_norm_refuses_running_mode_without_statistics(dev):
    x, stats = dev.asarray(np.zeros((4, 3, 2, 2))), dev.asarray(np.ones(3))
    with pytest.raises(ValueError, match="mode 'running' needs running_mean and running_var; got None"):
        layers.batch_norm(x, mode="running", running_mean=stats)
    with pytest.raises(ValueError, match="batch norm running_var must be >= 0 everywhere"):
        layers.batch_norm(x, mode="running", running_mean=stats, running_var=-stats)
    with pytest.raises(ValueError, match="bn_mode 'running' needs bn_state; got None"):
        models.conv4_apply(models.conv4_init(np.random.default_rng(0), hidden=2), x[:, :1], bn_mode="running")


@pytest.mark.parametrize("eps", [0.0, -1e-5, np.nan, np.inf])
def test_batch_norm_refuses_a_nonpositive_or_non_finite_eps(dev, eps):
    x = dev.asarray(np.random.default_rng(0).standard_normal((4, 3)))
    with pytest.raises(ValueError, match="batch norm eps must be a finite number > 0"):
        layers.batch_norm(x, eps=eps)
    params = models.conv4_init(np.random.default_rng(0), hidden=2)
    with pytest.raises(ValueError, match="bn_eps must be a finite number > 0"):
        models.conv4_apply(params, dev.asarray(np.zeros((2, 1, 8, 8))), bn_eps=eps)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_batch_norm_refuses_nan_and_inf_naming_the_array(dev, bad):
    clean = np.random.default_rng(0).standard_normal((4, 3, 2, 2))
    dirty = clean.copy()
    dirty[2, 1, 0, 1] = bad
    with pytest.raises(ValueError, match="batch norm x contains NaN or inf"):
        layers.batch_norm(dev.asarray(dirty))
    with pytest.raises(ValueError, match="batch norm x contains NaN or inf"):
        layers.batch_moments(dev.asarray(dirty))
    stats = np.ones(3)
    stats[1] = bad
    with pytest.raises(ValueError, match="batch norm running_mean contains NaN or inf"):
        layers.batch_norm(dev.asarray(clean), mode="running", running_mean=dev.asarray(stats),
                          running_var=dev.asarray(np.ones(3)))
    with pytest.raises(ValueError, match="batch norm scale contains NaN or inf"):
        layers.batch_norm(dev.asarray(clean), scale=dev.asarray(stats))


def test_batch_norm_refuses_an_empty_batch(dev):
    with pytest.raises(ValueError, match=r"at least one value per channel; got x \(0, 3\)"):
        layers.batch_norm(dev.asarray(np.zeros((0, 3))))
    with pytest.raises(ValueError, match=r"at least one value per channel; got x \(2, 0, 3, 2, 2\)"):
        layers.batch_moments(dev.asarray(np.zeros((2, 0, 3, 2, 2))))


def test_batch_norm_with_check_false_gives_the_same_numbers(dev):
    rng = np.random.default_rng(3)
    x, offset, scale = to_dev(dev, rng.standard_normal((2, 4, 3, 2, 2)), rng.standard_normal(3),
                              rng.standard_normal(3))
    mean, var = to_dev(dev, rng.standard_normal(3), rng.uniform(0.5, 2.0, 3))
    for mode in ("transductive", "running"):          # the same path run twice: bit-equal
        run = lambda check: dev.to_host(layers.batch_norm(x, offset, scale, mode, mean, var, check=check))
        np.testing.assert_array_equal(run(False), run(True))
    np.testing.assert_array_equal(dev.to_host(layers.batch_moments(x, check=False)[1]),
                                  dev.to_host(layers.batch_moments(x)[1]))


@given(seed=seeds, affine=st.sampled_from(["none", "both"]), spatial=st.sampled_from([0, 2]))
def test_batch_norm_first_and_second_derivatives_match_finite_differences(dev, seed, affine, spatial):
    rng = np.random.default_rng(seed)
    shape = (2, 3, 2, 2, 3) if spatial else (2, 5, 3)
    tree = {"x": rng.standard_normal(shape)}
    if affine == "both":
        tree.update(offset=rng.standard_normal((2, 2 if spatial else 3)),
                    scale=rng.standard_normal(2 if spatial else 3))
    target = dev.asarray(rng.standard_normal(shape))
    f = lambda p: anp.sum(anp.tanh(layers.batch_norm(p["x"], p.get("offset"), p.get("scale"),
                                                     spatial_dims=spatial)) * target)
    tree = dev.tree(tree)
    check_first_and_second_order(f, tree, rng)


def test_unbiased_moments_and_running_update(dev):
    x = np.random.default_rng(2).standard_normal((5, 2, 3, 3))
    _, var = layers.batch_moments(dev.asarray(x), unbiased=True)
    close(dev, var, x.transpose(1, 0, 2, 3).reshape(2, -1).var(axis=1, ddof=1))
    running = {"m": np.array([1.0, 2.0])}
    updated = layers.update_running(running, {"m": np.array([3.0, 6.0])}, momentum=0.25)
    np.testing.assert_allclose(updated["m"], [1.5, 3.0], rtol=1e-15)
    np.testing.assert_allclose(layers.update_running(running["m"], np.zeros(2), 1.0), [0.0, 0.0])


@pytest.mark.parametrize("momentum, error", [(-0.1, ValueError), (1.5, ValueError), (np.nan, ValueError),
                                             ("0.1", TypeError)])
def test_update_running_refuses_momentum_outside_0_1(momentum, error):
    with pytest.raises(error, match=r"momentum must be a finite number in \[0, 1\]"):
        layers.update_running({"m": np.zeros(2)}, {"m": np.ones(2)}, momentum)


def test_update_running_names_a_missing_or_extra_key():
    with pytest.raises(ValueError, match=r"batch lacks \['bn1.var'\] and has unexpected \['bn1.variance'\]"):
        layers.update_running({"bn1.var": np.ones(2)}, {"bn1.variance": np.ones(2)}, 0.1)
    with pytest.raises(TypeError, match="batch must be a dict"):
        layers.update_running({"bn1.var": np.ones(2)}, np.ones(2), 0.1)


# ----- bad inputs at the initialisers and apply functions -----

INITIALISERS = {
    "mlp_init": lambda rng, size: models.mlp_init(rng, (1, size, 1)),
    "conv4_init hidden": lambda rng, size: models.conv4_init(rng, hidden=size),
    "conv4_init in_channels": lambda rng, size: models.conv4_init(rng, in_channels=size, hidden=2),
    "conv4_init n_out": lambda rng, size: models.conv4_init(rng, n_out=size, hidden=2),
    "conv4_init image_size": lambda rng, size: models.conv4_init(rng, hidden=2, image_size=size),
    "lstm_init": lambda rng, size: layers.lstm_init(rng, 3, size),
    "lstm_init recurrent_size": lambda rng, size: layers.lstm_init(rng, 3, 2, recurrent_size=size),
    "conv4_bn_state": lambda rng, size: models.conv4_bn_state(size),
}


@pytest.mark.parametrize("which", sorted(INITIALISERS))
@pytest.mark.parametrize("size, error", [(0, ValueError), (-3, ValueError), (2.0, TypeError),
                                         (True, TypeError), ("4", TypeError)])
def test_initialisers_refuse_sizes_of_zero_negative_or_non_integer(which, size, error):
    with pytest.raises(error, match=r"must be an integer >= 1; got"):
        INITIALISERS[which](np.random.default_rng(0), size)


def test_initialisers_refuse_malformed_size_lists():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"at least input and output sizes; got \[3\]"):
        models.mlp_init(rng, (3,))
    with pytest.raises(TypeError, match="sizes must be a list of layer sizes d_0..d_L; got int"):
        models.mlp_init(rng, 3)
    with pytest.raises(ValueError, match=r"sizes\[2\] must be an integer >= 1; got 0"):
        models.mlp_describe((1, 40, 0))
    with pytest.raises(ValueError, match=r"image_size must be an integer or a pair \(H, W\)"):
        models.conv4_init(rng, image_size=(28, 28, 1))
    with pytest.raises(ValueError, match=r"image_size\[1\] must be an integer >= 1; got 0"):
        models.conv4_init(rng, image_size=(28, 0))
    for weight_std in (0.0, -0.1, np.nan):
        with pytest.raises(ValueError, match="weight_std must be a finite number > 0"):
            models.mlp_init(rng, (1, 2), weight_std=weight_std)
    with pytest.raises(ValueError, match="forget_bias must be a finite number"):
        layers.lstm_init(rng, 3, 2, forget_bias=np.inf)


@pytest.mark.parametrize("rng", [np.random.RandomState(0), 0, None])
def test_initialisers_refuse_a_rng_that_is_not_a_generator(rng):
    for init in (lambda: models.mlp_init(rng, (1, 2)), lambda: models.conv4_init(rng, hidden=2),
                 lambda: layers.lstm_init(rng, 3, 2)):
        with pytest.raises(TypeError, match="rng must be a Generator; got"):
            init()


def test_unknown_choice_names_are_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="activation must be one of 'relu', 'tanh'; got 'sigmoid'"):
        models.mlp_describe((1, 2), "sigmoid")
    with pytest.raises(ValueError, match="bn_mode must be one of 'transductive', 'running'; got 'eval'"):
        models.conv4_describe(bn_mode="eval")
    params, x = models.conv4_init(rng, hidden=2), np.zeros((2, 1, 8, 8))
    with pytest.raises(ValueError, match="variant must be one of 'stride', 'maxpool'; got 'pool'"):
        models.conv4_apply(params, x, variant="pool")
    with pytest.raises(ValueError, match="bn_mode must be one of 'transductive', 'running'; got 'train'"):
        models.conv4_apply(params, x, bn_mode="train")
    with pytest.raises(TypeError, match="conv2d stride must be an integer in 1..2; got 1.0"):
        layers.conv2d(x, params["conv0.w"], stride=1.0)


def test_apply_functions_name_missing_params_keys():
    rng = np.random.default_rng(0)
    x = np.zeros((2, 1, 8, 8))
    params = models.conv4_init(rng, hidden=2)
    with pytest.raises(ValueError, match=r"params lack \['conv2.w'\]; build them with conv4_init"):
        models.conv4_apply({k: v for k, v in params.items() if k != "conv2.w"}, x)
    with pytest.raises(ValueError, match=r"params lack \['out.b'\]"):
        models.conv4_apply({k: v for k, v in params.items() if k != "out.b"}, x)
    state = models.conv4_bn_state(2)
    with pytest.raises(ValueError, match=r"bn_state lacks \['bn3.var'\]"):
        models.conv4_apply(params, x, bn_mode="running",
                           bn_state={k: v for k, v in state.items() if k != "bn3.var"})
    mlp = models.mlp_init(rng, (1, 3, 1))
    with pytest.raises(ValueError, match=r"expects the params of mlp_init.*got the keys \['dense0.b', 'dense0.w', 'dense1.w'\]"):
        models.mlp_apply({k: v for k, v in mlp.items() if k != "dense1.b"}, np.zeros((4, 1)))
    with pytest.raises(ValueError, match=r"got the keys \[\]"):
        models.mlp_apply({}, np.zeros((4, 1)))                  # would otherwise return x itself


def test_lstm_cell_refuses_mismatched_shapes():
    p = layers.lstm_init(np.random.default_rng(0), 3, 2)
    x, h, c = np.zeros((5, 3)), np.zeros((5, 2)), np.zeros((5, 2))
    with pytest.raises(ValueError, match=r"expects h \(\.\.\., n, 2\); got \(5, 4\)"):
        layers.lstm_cell(x, np.zeros((5, 4)), c, p["w_x"], p["w_h"], p["b"])
    with pytest.raises(ValueError, match=r"expects c \(\.\.\., n, H=2\); got \(5, 3\)"):
        layers.lstm_cell(x, h, np.zeros((5, 3)), p["w_x"], p["w_h"], p["b"])
    with pytest.raises(ValueError, match="need the same 4H ≥ 4 columns"):
        layers.lstm_cell(x, h, c, p["w_x"], p["w_h"][:, :4], p["b"])
    with pytest.raises(ValueError, match=r"dense: w .* expects x \(\.\.\., n, d_in\); got x \(5, 4\)"):
        layers.lstm_cell(np.zeros((5, 4)), h, c, p["w_x"], p["w_h"], p["b"])
