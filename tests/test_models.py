"""Models: the MLP and the 4-block conv net, by hand, per task, against finite differences, and
their JSON descriptions.  Bad sizes and names at the initialisers are in test_layers.py."""

import json

import autograd.numpy as anp
import numpy as np
import pytest

from refmeta import gradcheck
from refmeta.nn import layers, models


def close(dev, actual, expected, rtol=1e-12, atol=1e-12):
    assert dev.is_array(actual), f"expected a {dev.name} array; got {type(actual).__name__}"
    np.testing.assert_allclose(dev.to_host(actual), expected, rtol=rtol, atol=atol)


def check_first_and_second_order(f, x, rng, n_directions=3):
    """∇f and the Hessian-vector products ∇⟨∇f(x), u⟩ of scalar f against central differences."""
    gradcheck.check_grad(f, x, rng=rng, n_directions=n_directions)
    gradcheck.check_hvp(f, x, rng=rng, n_directions=n_directions)


# ----- the MLP -----

def test_mlp_init_pytorch_default_and_normal_init():
    rng = np.random.default_rng(0)
    params = models.mlp_init(rng, (3, 40, 1))
    assert sorted(params) == ["dense0.b", "dense0.w", "dense1.b", "dense1.w"]
    assert params["dense0.w"].shape == (3, 40) and params["dense1.b"].shape == (1,)
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float64 for v in params.values())
    assert np.abs(params["dense0.w"]).max() <= 1 / np.sqrt(3)
    assert np.abs(params["dense1.w"]).max() <= 1 / np.sqrt(40)
    assert np.abs(params["dense0.w"]).max() > 0.9 / np.sqrt(3)      # actually spans the range
    normal = models.mlp_init(np.random.default_rng(0), (1, 500, 1), weight_std=0.01)
    assert normal["dense0.w"].std() == pytest.approx(0.01, rel=0.15)
    assert not normal["dense0.b"].any()
    again = models.mlp_init(np.random.default_rng(0), (3, 40, 1))
    assert all(np.array_equal(params[k], again[k]) for k in params)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_mlp_apply_matches_by_hand_and_per_task(dev, activation):
    rng = np.random.default_rng(3)
    params = models.mlp_init(rng, (2, 4, 3, 1))
    act = (lambda z: np.maximum(z, 0)) if activation == "relu" else np.tanh
    x = rng.standard_normal((5, 2))
    h = act(act(x @ params["dense0.w"] + params["dense0.b"]) @ params["dense1.w"] + params["dense1.b"])
    close(dev, models.mlp_apply(dev.tree(params), dev.asarray(x), activation),
          h @ params["dense2.w"] + params["dense2.b"])
    batched = {k: np.stack([v, 2 * v]) for k, v in params.items()}    # (T=2, ...)
    xs = rng.standard_normal((2, 5, 2))
    y = models.mlp_apply(dev.tree(batched), dev.asarray(xs), activation)
    for t in range(2):
        one = {k: v[t] for k, v in batched.items()}
        close(dev, y[t], dev.to_host(models.mlp_apply(dev.tree(one), dev.asarray(xs[t]), activation)))
    with pytest.raises(ValueError, match="activation must be one of 'relu', 'tanh'; got 'gelu'"):
        models.mlp_apply(params, x, "gelu")


# ----- the 4-block conv net -----

@pytest.mark.parametrize("variant, image_size, features", [("stride", 28, 5), ("maxpool", 28, 5),
                                                           ("maxpool", 84, 5 * 25)])
@pytest.mark.parametrize("bn_affine", ["offset", "scale", "both", "none"])
def test_conv4_init_keys_shapes_and_describe(variant, image_size, features, bn_affine):
    params = models.conv4_init(np.random.default_rng(0), 3, n_out=7, hidden=5, variant=variant,
                               bn_affine=bn_affine, image_size=image_size)
    assert params["conv0.w"].shape == (5, 3, 3, 3) and params["conv3.w"].shape == (5, 5, 3, 3)
    assert params["out.w"].shape == (features, 7) and params["out.b"].shape == (7,)
    assert ("bn2.offset" in params) == (bn_affine in ("offset", "both"))
    assert ("bn2.scale" in params) == (bn_affine in ("scale", "both"))
    assert np.abs(params["conv1.w"]).max() <= 1 / np.sqrt(5 * 9)
    description = models.conv4_describe(3, 7, 5, variant, bn_affine, image_size=image_size)
    json.dumps(description)
    named = {layer[k] for layer in description["layers"] for k in ("weight", "bias", "offset", "scale")
             if layer.get(k)}
    assert named == set(params)                              # every param is described, and no more
    assert [layer["type"] for layer in description["layers"]][:3] == ["conv2d", "batch_norm", "relu"]


@pytest.mark.parametrize("variant", ["stride", "maxpool"])
def test_conv4_apply_shapes_and_task_axes_equal_per_task_loop(dev, variant):
    rng = np.random.default_rng(4)
    params = models.conv4_init(rng, 1, n_out=3, hidden=4, variant=variant, bn_affine="both",
                               image_size=16)
    x = rng.standard_normal((2, 5, 1, 16, 16))                     # (T, n, C, H, W)
    batched = {k: np.stack([v, v + 0.1 * rng.standard_normal(v.shape)]) for k, v in params.items()}
    y = models.conv4_apply(dev.tree(batched), dev.asarray(x), variant)
    assert y.shape == (2, 5, 3)
    for t in range(2):                     # BN statistics are per task: the loop must agree
        one = dev.tree({k: v[t] for k, v in batched.items()})
        close(dev, y[t], dev.to_host(models.conv4_apply(one, dev.asarray(x[t]), variant)))
    embedding = models.conv4_apply(dev.tree({k: v for k, v in params.items() if "out" not in k}),
                                   dev.asarray(x), variant)
    assert embedding.shape == (2, 5, 4 if variant == "stride" else 4 * 1 * 1)


def test_conv4_running_statistics(dev):
    rng = np.random.default_rng(5)
    params = dev.tree(models.conv4_init(rng, 1, n_out=2, hidden=3, variant="maxpool", image_size=16))
    x = dev.asarray(rng.standard_normal((6, 1, 16, 16)))
    out, moments = models.conv4_apply(params, x, "maxpool", return_bn_moments=True)
    n_values = {k: 6 * 16 * 16 // 4 ** int(k[2]) for k in moments}   # m = n·H·W at block i
    biased = {k: v * ((n_values[k] - 1) / n_values[k]) if k.endswith("var") else v
              for k, v in moments.items()}
    # running mode with the batch's own (biased) moments reproduces transductive mode
    close(dev, models.conv4_apply(params, x, "maxpool", "running", biased), dev.to_host(out), atol=1e-10)
    state = layers.update_running(dev.tree(models.conv4_bn_state(3)), moments, 0.1)
    close(dev, state["bn1.var"], 0.9 + 0.1 * dev.to_host(moments["bn1.var"]))
    with pytest.raises(ValueError, match="needs bn_state"):
        models.conv4_apply(params, x, "maxpool", "running")


@pytest.mark.parametrize("variant", ["stride", "maxpool"])
def test_conv4_first_and_second_derivatives_match_finite_differences(dev, variant):
    rng = np.random.default_rng(6)
    params = dev.tree(models.conv4_init(rng, 1, n_out=2, hidden=2, variant=variant,
                                        bn_affine="both", image_size=16))
    x = dev.asarray(rng.standard_normal((2, 3, 1, 16, 16)))
    f = lambda p: anp.sum(anp.sin(models.conv4_apply(p, x, variant)))
    check_first_and_second_order(f, params, rng, n_directions=2)


def test_conv4_rejects_unknown_options():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="variant must be one of 'stride', 'maxpool'; got 'pool'"):
        models.conv4_init(rng, variant="pool")
    with pytest.raises(ValueError, match=r"bn_affine must be one of .*; got 'gamma'"):
        models.conv4_init(rng, bn_affine="gamma")
    with pytest.raises(ValueError, match="image_size 8 is too small for 4 pools"):
        models.conv4_init(rng, variant="maxpool", image_size=8)


def test_mlp_describe_is_json():
    description = models.mlp_describe((1, 40, 40, 1), "relu", 0.01)
    assert [layer["type"] for layer in description["layers"]] == ["dense", "relu", "dense", "relu", "dense"]
    assert json.loads(json.dumps(description))["init"] == "w ~ N(0, 0.01^2), b = 0"
