"""Prototypical Networks: finite differences, golden values by hand, invariances, bad input."""

import math

import autograd.numpy as anp
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from helpers import check_grad_away_from_kinks
from refmeta import gradcheck, matching, protonet
from refmeta.data import omniglot
from refmeta.data.tasks import Episode

seeds = st.integers(0, 2**32 - 1)
distances = st.sampled_from(protonet.DISTANCES)


def smooth_embed(params, x):
    """A tanh layer: x (..., n, d_in) -> (..., n, d); smooth, so differences need no kink care."""
    return anp.tanh(anp.matmul(x, params["w"]) + params["b"])


def smooth_params(rng, d_in, d):
    return {"w": rng.standard_normal((d_in, d)), "b": rng.standard_normal(d)}


def episode(dev, rng, n_way, k_shot, n_query, x_shape, n_tasks=None):
    """Random inputs, class-major labels; a leading task axis when n_tasks is given."""
    lead = () if n_tasks is None else (n_tasks,)
    support_y, query_y = (np.broadcast_to(np.repeat(np.arange(n_way), n), lead + (n_way * n,)).copy()
                          for n in (k_shot, n_query))
    return Episode.validated(dev.asarray(rng.standard_normal(lead + (n_way * k_shot,) + x_shape)),
                             dev.asarray(support_y),
                             dev.asarray(rng.standard_normal(lead + (n_way * n_query,) + x_shape)),
                             dev.asarray(query_y), n_way=n_way)


def close(dev, actual, expected, rtol=1e-12, atol=1e-14):
    assert dev.is_array(actual), f"expected a {dev.name} array; got {type(actual).__name__}"
    np.testing.assert_allclose(dev.to_host(actual), expected, rtol=rtol, atol=atol)


# ----- finite differences -----
@given(seed=seeds, distance=distances, n_way=st.integers(2, 4), k_shot=st.integers(1, 3),
       n_query=st.integers(1, 3), n_tasks=st.sampled_from([None, 2]), joint=st.booleans())
def test_episode_loss_gradient_matches_finite_differences(dev, seed, distance, n_way, k_shot, n_query,
                                                          n_tasks, joint):
    rng = np.random.default_rng(seed)
    params = dev.tree(smooth_params(rng, 3, 4))
    ep = episode(dev, rng, n_way, k_shot, n_query, (3,), n_tasks)
    config = protonet.ProtoNetConfig(distance=distance, joint_embedding=joint)
    gradcheck.check_grad(lambda p: protonet.episode_loss(p, ep, smooth_embed, n_way, config), params,
                         rng=rng)


@given(seed=seeds, distance=distances)
def test_episode_loss_gradient_through_the_conv_embedding(dev, seed, distance):
    """conv4 with max-pool and transductive batch norm, 2 filters on 16×16 (a 2-d embedding)."""
    rng = np.random.default_rng(seed)
    params = dev.tree(protonet.conv4_embedding_init(rng, hidden=2, image_size=16))
    ep = episode(dev, rng, n_way=3, k_shot=2, n_query=1, x_shape=(1, 16, 16))
    config = protonet.ProtoNetConfig(distance=distance)
    f = lambda p: protonet.episode_loss(p, ep, protonet.conv4_embedding(), 3, config)
    assume(check_grad_away_from_kinks(f, params, rng, n_directions=2) > 0)


# ----- golden values by hand -----
def test_identity_embedding_golden_values_by_hand(dev):
    """Prototypes c0 = mean((0,0), (2,0)) = (1,0), c1 = mean((0,3), (0,5)) = (0,4).
    Query (1,1), label 0: squared distances 1 and 10; query (0,3), label 1: 10 and 1.
    So each query's loss is log(1 + e^−9).  Euclidean: 1 and √10, loss log(1 + e^{1−√10}).
    Cosine: (1,1) is at 45° from both prototypes, p = ½; (0,3) has cos 0 and 1, loss log(1 + e^−1)."""
    identity = lambda params, x: x
    ep = Episode(*(dev.asarray(np.array(a)) for a in (
        [[0.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 5.0]], [0, 0, 1, 1], [[1.0, 1.0], [0.0, 3.0]], [0, 1])))
    close(dev, protonet.prototypes(ep.support_x, ep.support_y, 2), [[1.0, 0.0], [0.0, 4.0]], 0, 0)
    expected = {"sqeuclidean": math.log1p(math.exp(-9.0)),
                "euclidean": math.log1p(math.exp(1.0 - math.sqrt(10.0))),
                "cosine": (math.log(2.0) + math.log1p(math.exp(-1.0))) / 2}
    for distance, loss in expected.items():
        config = protonet.ProtoNetConfig(distance=distance)
        assert float(protonet.episode_loss({}, ep, identity, 2, config)) == pytest.approx(loss, rel=1e-14)


@given(seed=seeds, n_way=st.integers(2, 5), k_shot=st.integers(1, 4), d=st.integers(1, 4))
def test_identity_embedding_is_a_nearest_centroid_classifier(dev, seed, n_way, k_shot, d):
    rng = np.random.default_rng(seed)
    support, query = rng.standard_normal((n_way * k_shot, d)), rng.standard_normal((7, d))
    labels = np.repeat(np.arange(n_way), k_shot)
    centroids = np.array([support[labels == k].mean(axis=0) for k in range(n_way)])
    squared = np.array([[np.sum((q - c) ** 2) for c in centroids] for q in query])  # loops, by definition
    log_p = protonet.log_probabilities(dev.asarray(support), dev.asarray(labels), dev.asarray(query), n_way)
    expected = -squared - np.log(np.sum(np.exp(-squared), axis=1, keepdims=True))
    close(dev, log_p, expected, rtol=1e-10, atol=1e-12)
    assert np.array_equal(np.argmax(dev.to_host(log_p), axis=1), np.argmin(squared, axis=1))


@given(seed=seeds, n_way=st.integers(2, 5), d=st.integers(1, 5))
def test_squared_distance_protonet_is_a_linear_model(dev, seed, n_way, d):
    """Section 2.4: log p = log_softmax(z w + b) with w_k = 2 c_k, b_k = −‖c_k‖²."""
    rng = np.random.default_rng(seed)
    support, query = rng.standard_normal((2 * n_way, d)), rng.standard_normal((6, d))
    labels = np.tile(np.arange(n_way), 2)
    c = np.stack([support[labels == k].mean(axis=0) for k in range(n_way)])
    logits = query @ (2 * c).T - np.sum(c * c, axis=1)
    expected = logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
    close(dev, protonet.log_probabilities(*(dev.asarray(a) for a in (support, labels, query)), n_way),
          expected, rtol=1e-10, atol=1e-12)


# ----- invariances -----
@given(seed=seeds, distance=distances, n_way=st.integers(2, 4), k_shot=st.integers(2, 4))
def test_loss_invariant_to_permuting_support_and_equivariant_to_relabelling(dev, seed, distance, n_way,
                                                                            k_shot):
    rng = np.random.default_rng(seed)
    params = dev.tree(smooth_params(rng, 3, 4))
    ep = episode(dev, rng, n_way, k_shot, 2, (3,))
    config = protonet.ProtoNetConfig(distance=distance)
    loss = float(protonet.episode_loss(params, ep, smooth_embed, n_way, config))

    order = rng.permutation(n_way * k_shot)  # shuffles examples within and across classes
    shuffled = Episode(ep.support_x[dev.asarray(order)], ep.support_y[dev.asarray(order)], ep.query_x,
                       ep.query_y)
    assert float(protonet.episode_loss(params, shuffled, smooth_embed, n_way, config)) == \
        pytest.approx(loss, rel=1e-12)

    relabel = rng.permutation(n_way)  # class k becomes class relabel[k]
    renamed = Episode(ep.support_x, dev.asarray(relabel[dev.to_host(ep.support_y)]), ep.query_x,
                      dev.asarray(relabel[dev.to_host(ep.query_y)]))
    assert float(protonet.episode_loss(params, renamed, smooth_embed, n_way, config)) == \
        pytest.approx(loss, rel=1e-12)
    z_s, z_q = (smooth_embed(params, x) for x in (ep.support_x, ep.query_x))
    log_p = dev.to_host(protonet.log_probabilities(z_s, ep.support_y, z_q, n_way, distance))
    renamed_log_p = dev.to_host(protonet.log_probabilities(z_s, renamed.support_y, z_q, n_way, distance))
    np.testing.assert_allclose(renamed_log_p[:, relabel], log_p, rtol=1e-12, atol=1e-14)


@given(seed=seeds, distance=distances, n_way=st.integers(2, 5))
def test_one_shot_protonet_equals_matching_net_without_fce(dev, seed, distance, n_way):
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_way)                       # support in any class order
    z_support, z_query = dev.asarray(rng.standard_normal((n_way, 4))), dev.asarray(rng.standard_normal((5, 4)))
    support_y = dev.asarray(order)
    proto = protonet.log_probabilities(z_support, support_y, z_query, n_way, distance)
    match = matching.class_log_probabilities(z_query, z_support, support_y, n_way, distance)
    close(dev, match, dev.to_host(proto), rtol=1e-12, atol=1e-13)

    params = dev.tree(smooth_params(rng, 3, 4))
    ep = episode(dev, rng, n_way, 1, 2, (3,))
    proto_loss = protonet.episode_loss(params, ep, smooth_embed, n_way, protonet.ProtoNetConfig(distance))
    match_loss = matching.episode_loss({f"embed.{k}": v for k, v in params.items()}, ep, smooth_embed,
                                       n_way, matching.MatchingConfig(distance=distance))
    assert float(match_loss) == pytest.approx(float(proto_loss), rel=1e-12)


def test_task_axis_gives_the_mean_of_per_task_losses(dev):
    rng = np.random.default_rng(0)
    params = dev.tree(smooth_params(rng, 3, 4))
    ep = episode(dev, rng, 3, 2, 2, (3,), n_tasks=4)
    batched = protonet.episode_loss(params, ep, smooth_embed, 3)
    per_task = [float(protonet.episode_loss(params, Episode(*(a[t] for a in ep)), smooth_embed, 3))
                for t in range(4)]
    assert float(batched) == pytest.approx(np.mean(per_task), rel=1e-13)
    summed = protonet.episode_loss(params, ep, smooth_embed, 3, protonet.ProtoNetConfig(task_reduction="sum"))
    assert float(summed) == pytest.approx(np.sum(per_task), rel=1e-13)


def test_conv4_embedding_is_64_dimensional_on_28_by_28(dev):
    params = dev.tree(protonet.conv4_embedding_init(np.random.default_rng(0)))
    z = protonet.conv4_embedding()(params, dev.asarray(np.random.default_rng(1).random((3, 1, 28, 28))))
    assert dev.is_array(z) and z.shape == (3, 64)
    assert protonet.ProtoNetConfig().conventions()["distance"] == "sqeuclidean"


# ----- bad input -----
def test_bad_input_raises_clear_errors_and_changes_nothing(dev):
    rng = np.random.default_rng(0)
    params = dev.tree(smooth_params(rng, 3, 4))
    snapshot = {k: dev.to_host(v).copy() for k, v in params.items()}
    ep = episode(dev, rng, 3, 2, 2, (3,))
    z = dev.asarray(rng.standard_normal((6, 4)))
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.2 \(n_way=3\); got values from 0 to 3"):
        protonet.episode_loss(params, Episode(ep.support_x, ep.support_y, ep.query_x,
                                              dev.asarray(np.array([0, 1, 2, 3, 0, 1]))), smooth_embed, 3)
    with pytest.raises(ValueError, match=r"classes \[2\] have none"):
        protonet.prototypes(z, dev.asarray(np.array([0, 0, 1, 1, 1, 0])), 3)
    with pytest.raises(ValueError, match="same task axes and d"):
        protonet.log_probabilities(z, ep.support_y, dev.asarray(rng.standard_normal((6, 5))), 3)
    with pytest.raises(ValueError, match="same d"):
        protonet.pairwise_distance(z, dev.asarray(rng.standard_normal((2, 3))))
    nan_x = dev.to_host(ep.query_x).copy()
    nan_x[1, 2] = np.nan
    with pytest.raises(ValueError, match="query_x contains NaN"):
        protonet.episode_loss(params, Episode(ep.support_x, ep.support_y, dev.asarray(nan_x), ep.query_y),
                              smooth_embed, 3)
    with pytest.raises(ValueError, match="unknown distance 'manhattan'; expected one of sqeuclidean"):
        protonet.ProtoNetConfig(distance="manhattan")
    with pytest.raises(ValueError, match="unknown distance"):
        protonet.pairwise_distance(z, z, "l1")
    with pytest.raises(TypeError, match="support labels must be an integer array"):
        protonet.prototypes(z, dev.asarray(np.zeros(6)), 3)
    with pytest.raises(ValueError, match="n_way must be an integer >= 2"):
        protonet.prototypes(z, ep.support_y, True)
    with pytest.raises(ValueError, match="z_support must be"):
        protonet.prototypes(z[:5], ep.support_y, 3)
    with pytest.raises(ValueError, match="a 5-way episode needs 5 classes; the images hold 4"):
        omniglot.sample_episode(rng, np.zeros((4, 20, 28, 28)), 5, 1, 1)
    with pytest.raises(ValueError, match="needs 21 examples per class"):
        omniglot.sample_episode(rng, np.zeros((6, 20, 28, 28)), 5, 1, 20)
    for name in snapshot:
        np.testing.assert_array_equal(dev.to_host(params[name]), snapshot[name])
