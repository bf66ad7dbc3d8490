"""The fused primitives with written-out VJPs: conv's convolutions, pool's max-pool, scatter
and gather, norm's transductive batch norm, channel_affine and channel_dot, and the dense and ReLU
primitives of layers.

Values against plain numpy; VJPs by the adjoint identity; gradients and Hessian-vector products
(which differentiate the VJPs themselves) against central differences in float64, with
hypothesis drawing shapes, strides, task axes and seeds; on numpy and on the strict stand-in.
Then each check is shown to fail on a VJP with a classic mistake in it: the transposed
convolution without the kernel flipped, batch norm's statistics held constant, the pool's
row choice taken from the wrong column."""

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import core, grad
from hypothesis import given, strategies as st

from refmeta import gradcheck
from refmeta.nn import conv, layers, norm, pool

seeds = st.integers(0, 2**32 - 1)
# (leading axes of the data, of the params): unbatched, a task axis on both, on one only
LEADING = st.sampled_from([((), ()), ((2,), (2,)), ((2,), ()), ((), (2,))])
SIZES = st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 2), st.integers(1, 5),
                  st.integers(1, 5))                                      # n, C, F, H, W


def first_and_second_order(f, x, rng):
    gradcheck.check_grad(f, x, rng=rng)
    gradcheck.check_hvp(f, x, rng=rng)


def inner(a, b):
    return float(np.sum(np.asarray(a, dtype=np.float64) * np.asarray(b, dtype=np.float64)))


# ----- the three convolutions -----
def conv_tree(rng, leading, sizes, stride):
    n, channels, filters, height, width = sizes
    out_h, out_w = conv.conv_out_size(height, stride), conv.conv_out_size(width, stride)
    lead_x, lead_w = leading
    lead = np.broadcast_shapes(lead_x, lead_w)
    return {"x": rng.standard_normal(lead_x + (n, channels, height, width)),
            "w": rng.standard_normal(lead_w + (filters, channels, 3, 3)),
            "b": rng.standard_normal(lead_w + (filters,)),
            "g": rng.standard_normal(lead + (n, filters, out_h, out_w))}


@given(seed=seeds, leading=LEADING, sizes=SIZES, stride=st.sampled_from([1, 2]))
def test_the_transpose_and_the_weight_gradient_are_the_adjoints(dev, seed, leading, sizes, stride):
    """⟨w ⋆ x, g⟩ = ⟨x, (w ⋆)ᵀ g⟩ = ⟨w, w̄(x, g)⟩, each side summed over the broadcast task axes."""
    host = conv_tree(np.random.default_rng(seed), leading, sizes, stride)
    x, w, g = (dev.asarray(host[k]) for k in "xwg")
    y = dev.to_host(conv.conv3x3(x, w, None, stride))
    x_bar = dev.to_host(conv.conv3x3_transpose(g, w, stride, host["x"].shape))
    w_bar = dev.to_host(conv.conv3x3_weight_grad(x, g, stride, host["w"].shape))
    assert x_bar.shape == host["x"].shape and w_bar.shape == host["w"].shape
    reference = inner(y, host["g"])
    assert inner(host["x"], x_bar) == pytest.approx(reference, rel=1e-12, abs=1e-12)
    assert inner(host["w"], w_bar) == pytest.approx(reference, rel=1e-12, abs=1e-12)
    both = [dev.to_host(a) for a in conv.conv3x3_grads(g, x, w, stride)]     # the two at once
    np.testing.assert_allclose(both[0], x_bar, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(both[1], w_bar, rtol=1e-12, atol=1e-12)


@given(seed=seeds, leading=LEADING, sizes=SIZES, stride=st.sampled_from([1, 2]))
def test_convolution_derivatives_match_finite_differences(dev, seed, leading, sizes, stride):
    """First and second derivatives through each of the three primitives, in every argument."""
    rng = np.random.default_rng(seed)
    host = conv_tree(rng, leading, sizes, stride)
    tree = dev.tree(host)
    x_shape, w_shape = host["x"].shape, host["w"].shape
    first_and_second_order(lambda t: anp.sum(anp.sin(conv.conv3x3(t["x"], t["w"], t["b"], stride))),
                           {k: tree[k] for k in "xwb"}, rng)
    first_and_second_order(lambda t: anp.sum(anp.sin(conv.conv3x3_transpose(t["g"], t["w"], stride,
                                                                             x_shape))),
                           {k: tree[k] for k in "gw"}, rng)
    first_and_second_order(lambda t: anp.sum(anp.sin(conv.conv3x3_weight_grad(t["x"], t["g"], stride,
                                                                               w_shape))),
                           {k: tree[k] for k in "xg"}, rng)

    def both(t):
        x_bar, w_bar = conv.conv3x3_grads(t["g"], t["x"], t["w"], stride)
        return anp.sum(anp.sin(x_bar)) + anp.sum(anp.cos(w_bar))
    first_and_second_order(both, {k: tree[k] for k in "gxw"}, rng)


@pytest.mark.parametrize("wrt", ["x", "x and w"])
def test_a_transposed_convolution_without_the_flip_fails_the_check(dev, monkeypatch, wrt):
    """The adjoint of a correlation is the correlation with the kernel flipped; forget the flip
    (swap the channel axes only) and the gradient in x is wrong: in conv3x3_transpose (x alone
    differentiated) and in conv3x3_grads (x and w together)."""
    rng = np.random.default_rng(0)
    host = conv_tree(rng, ((), ()), (2, 2, 3, 4, 5), 1)
    tree = dev.tree({k: host[k] for k in (["x"] if wrt == "x" else ["x", "w"])})
    w = dev.asarray(host["w"])
    f = lambda t: anp.sum(anp.sin(conv.conv3x3(t["x"], t.get("w", w), None, 1)))
    gradcheck.check_grad(f, tree, rng=rng)
    unflipped = lambda g, w, stride, x_shape: conv._correlate(g, w.swapaxes(-4, -3), 1)
    monkeypatch.setattr(conv, "conv3x3_transpose", unflipped)
    monkeypatch.setattr(conv, "conv3x3_grads", lambda g, x, w, stride: (
        unflipped(g, w, stride, x.shape), conv.conv3x3_weight_grad(x, g, stride, w.shape)))
    with pytest.raises(gradcheck.GradientCheckError):
        gradcheck.check_grad(f, tree, rng=rng)


def test_im2col_chunks_give_the_same_convolution(dev, monkeypatch):
    """Patch arrays made one image at a time, or all at once: the same numbers up to rounding
    (BLAS may order a product's sums differently for a narrower matrix)."""
    rng = np.random.default_rng(1)
    host = conv_tree(rng, ((2,), (2,)), (5, 3, 2, 6, 7), 1)
    x, w, g = (dev.asarray(host[k]) for k in "xwg")
    whole = [dev.to_host(conv.conv3x3(x, w, None, s)) for s in (1, 2)]
    weights = dev.to_host(conv.conv3x3_weight_grad(x, g, 1, host["w"].shape))
    monkeypatch.setattr(conv, "CHUNK_BYTES", 1)                         # one image per chunk
    assert len(conv._image_chunks(host["x"].shape, 1, 8)) == 5
    for s in (1, 2):
        np.testing.assert_allclose(dev.to_host(conv.conv3x3(x, w, None, s)), whole[s - 1],
                                   rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dev.to_host(conv.conv3x3_weight_grad(x, g, 1, host["w"].shape)),
                               weights, rtol=1e-13, atol=1e-13)       # summed chunk by chunk


# ----- the max-pool -----
@given(seed=seeds, leading=st.sampled_from([(1,), (2, 3)]), height=st.integers(2, 7),
       width=st.integers(2, 7))
def test_scatter_and_gather_are_adjoints_and_the_pool_is_a_gather(dev, seed, leading, height, width):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(leading + (height, width))
    g = rng.standard_normal(leading + (height // 2, width // 2))
    choice = pool.window_choice(dev.asarray(x))
    gathered = dev.to_host(pool.pool_gather(dev.asarray(x), choice))
    np.testing.assert_array_equal(gathered, dev.to_host(pool.max_pool(dev.asarray(x))[0]))
    scattered = dev.to_host(pool.pool_scatter(dev.asarray(g), choice, x.shape))
    assert inner(x, scattered) == pytest.approx(inner(gathered, g), rel=1e-12, abs=1e-12)
    assert np.count_nonzero(scattered) == np.count_nonzero(g)           # one entry per window


@given(seed=seeds, height=st.integers(2, 5), width=st.integers(2, 5))
def test_pool_derivatives_match_finite_differences(dev, seed, height, width):
    """Through max_pool, and through scatter and gather at a fixed choice (second-order MAML
    differentiates the scatter, whose VJP is the gather)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 2, height, width))
    choice = pool.window_choice(dev.asarray(x))
    g = dev.asarray(rng.standard_normal((2, 2, height // 2, width // 2)))
    first_and_second_order(lambda v: anp.sum(anp.sin(pool.pooled(pool.max_pool(v * v)))), dev.asarray(x), rng)
    first_and_second_order(lambda v: anp.sum(anp.sin(pool.pool_scatter(v * v, choice, x.shape))), g, rng)
    first_and_second_order(lambda v: anp.sum(anp.sin(pool.pool_gather(v * v, choice))), dev.asarray(x), rng)


def test_a_choice_compared_the_wrong_way_round_fails_the_check(dev, monkeypatch):
    """The picks must name each pair's larger entry; compared the wrong way round they name the
    smaller, the pooled values stay right (they are maxima) and the gradient goes astray."""
    rng = np.random.default_rng(2)
    x = dev.asarray(rng.standard_normal((2, 3, 6, 6)))
    weights = dev.asarray(np.arange(9.0).reshape(3, 3))
    f = lambda v: anp.sum(anp.sin(pool.pooled(pool.max_pool(v))) * weights)
    gradcheck.check_grad(f, x, rng=rng)
    monkeypatch.setattr(pool, "second_wins", lambda first, second: second < first)
    maxima = dev.to_host(x).reshape(2, 3, 3, 2, 3, 2).max(axis=(3, 5))
    np.testing.assert_array_equal(dev.to_host(pool.max_pool(x)[0]), maxima)
    with pytest.raises(gradcheck.GradientCheckError):
        gradcheck.check_grad(f, x, rng=rng)


# ----- batch norm -----
@given(seed=seeds, spatial=st.sampled_from([0, 2]), leading=LEADING,
       affine=st.sampled_from([(True, True), (True, False), (False, True), (False, False)]))
def test_transductive_batch_norm_derivatives_match_finite_differences(dev, seed, spatial, leading,
                                                                      affine):
    """y, μ and s of ``transductive`` all carry gradients (second-order MAML reads μ and s in the
    VJP it differentiates), each checked to first and second order."""
    rng = np.random.default_rng(seed)
    channel = -1 - spatial
    lead_x, lead_p = leading
    x = rng.standard_normal(lead_x + (3, 2) + (2, 3)[:spatial])
    tree = {"x": x}
    if affine[0]:
        tree["scale"] = rng.standard_normal(lead_p + (2,))
    if affine[1]:
        tree["offset"] = rng.standard_normal(lead_p + (2,))
    tree = dev.tree(tree)

    def f(t):
        y, mean, inv_std = norm.transductive(t["x"], t.get("scale"), t.get("offset"), channel, 0.1)
        return anp.sum(anp.sin(y)) + anp.sum(anp.tanh(mean)) + anp.sum(inv_std * inv_std)
    first_and_second_order(f, tree, rng)
    y = dev.to_host(norm.batch_norm(tree["x"], tree.get("offset"), tree.get("scale"), eps=0.1,
                                    spatial_dims=spatial))
    axes = (channel - 1,) + tuple(range(channel + 1, 0))
    expected = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + 0.1)
    view = lambda p: dev.to_host(p).reshape(dev.to_host(p).shape[:-1] + (1, 2) + (1,) * spatial)
    expected = expected * (view(tree["scale"]) if affine[0] else 1) + (view(tree["offset"]) if affine[1] else 0)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@given(seed=seeds, spatial=st.sampled_from([0, 2]), leading=LEADING, extra=st.booleans(),
       centred=st.booleans(), chunk=st.sampled_from([1, 2 << 20]))
def test_channel_affine_and_dot_match_numpy_and_finite_differences(dev, seed, spatial, leading, extra,
                                                                   centred, chunk):
    """a x + b (e − c) + k and Σ u (v − c), with and without the center c, made in blocks of one
    channel or all at once; values against numpy, derivatives to second order in every argument."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(norm, "CHUNK_BYTES", chunk)
        _check_channel_affine_and_dot(dev, seed, spatial, leading, extra, centred)


def _check_channel_affine_and_dot(dev, seed, spatial, leading, extra, centred):
    rng = np.random.default_rng(seed)
    channel = -1 - spatial
    lead_x, lead_p = leading
    shape = lead_x + (3, 2) + (2, 3)[:spatial]
    host = {"x": rng.standard_normal(shape), "e": rng.standard_normal(shape),
            "a": rng.standard_normal(lead_p + (2,)), "b": rng.standard_normal(lead_p + (2,)),
            "k": rng.standard_normal(lead_p + (2,)), "c": rng.standard_normal(lead_p + (2,))}
    tree = dev.tree(host)
    c = (lambda t: t["c"]) if centred else (lambda t: None)
    affine = lambda t: norm.channel_affine(t["x"], t["a"], t["k"], channel, t["e"] if extra else None,
                                           t["b"] if extra else None, c(t) if extra else None)
    view = lambda p: p.reshape(p.shape[:-1] + (1, 2) + (1,) * spatial)
    minus_c = (lambda v: v - view(host["c"])) if centred else (lambda v: v)
    expected = host["x"] * view(host["a"]) + view(host["k"]) + (minus_c(host["e"]) * view(host["b"])
                                                                if extra else 0)
    np.testing.assert_allclose(dev.to_host(affine(tree)), expected, rtol=1e-13, atol=1e-13)
    first_and_second_order(lambda t: anp.sum(anp.sin(affine(t))), tree, rng)
    dot = lambda t: norm.channel_dot(t["x"], t["e"] * t["e"], channel, c(t))
    axes = (-2 - spatial,) + tuple(range(-spatial, 0))           # n and the spatial axes
    expected = np.sum(host["x"] * minus_c(host["e"] ** 2), axis=axes)
    np.testing.assert_allclose(dev.to_host(dot(tree)), expected, rtol=1e-13, atol=1e-13)
    first_and_second_order(lambda t: anp.sum(anp.cos(dot(t))), {k: tree[k] for k in "xec"}, rng)


def test_batch_norm_with_its_statistics_held_constant_fails_the_check(dev, monkeypatch):
    """x̄ = γ s ḡ, the VJP of batch norm with μ and σ taken for constants, misses the two terms
    through which every entry moves the statistics."""
    rng = np.random.default_rng(3)
    tree = dev.tree({"x": rng.standard_normal((4, 2, 3, 3)), "scale": rng.standard_normal(2)})
    f = lambda t: anp.sum(anp.sin(norm.batch_norm(t["x"], None, t["scale"], eps=0.1)))
    gradcheck.check_grad(f, tree, rng=rng)

    def constant_statistics(argnums, ans, args, kwargs):
        x, scale, offset, channel, eps = args
        gain = ans[2] * scale
        grads = {0: lambda g: norm.channel_affine(g[0], gain, None, channel),
                 1: lambda g: norm.channel_dot(g[0], (x - norm.spread_channels(ans[1], x.shape, channel))
                                               * norm.spread_channels(ans[2], x.shape, channel), channel)}
        return lambda g: tuple(grads[argnum](g) for argnum in argnums)
    monkeypatch.setitem(core.primitive_vjps, norm.transductive, constant_statistics)
    with pytest.raises(gradcheck.GradientCheckError):
        gradcheck.check_grad(f, tree, rng=rng)


# ----- dense and ReLU -----
@given(seed=seeds, leading=LEADING)
def test_relu_derivatives_match_finite_differences_and_zero_has_derivative_zero(dev, seed, leading):
    rng = np.random.default_rng(seed)
    x = dev.asarray(rng.standard_normal(leading[0] + (3, 4)))
    first_and_second_order(lambda v: anp.sum(anp.sin(layers.relu(v * v - 0.5)) ** 2), x, rng)
    at_zero = grad(lambda v: anp.sum(layers.relu(v)))(dev.asarray(np.array([-1.0, 0.0, 2.0])))
    np.testing.assert_array_equal(dev.to_host(at_zero), [0.0, 0.0, 1.0])
