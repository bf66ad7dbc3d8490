"""Prototypical Networks: finite differences, golden values by hand, invariances, bad input."""

import math

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad
from hypothesis import assume, given, strategies as st

from helpers import check_grad_away_from_kinks
from refmeta import checks, gradcheck, matching, protonet
from refmeta.contract import Episode, Model, State, Step
from refmeta.data import omniglot
from refmeta.nn import optimizers

seeds = st.integers(0, 2**32 - 1)
distances = st.sampled_from(protonet.DISTANCES)


def smooth_embed(params, x):
    """A tanh layer: x (..., n, d_in) -> (..., n, d); smooth, so differences need no kink care."""
    return anp.tanh(anp.matmul(x, params["w"]) + params["b"])


def smooth_params(rng, d_in, d):
    return {"w": rng.standard_normal((d_in, d)), "b": rng.standard_normal(d)}


SMOOTH = Model(lambda rng: smooth_params(rng, 3, 4), smooth_embed, None, "tanh layer 3 -> 4")
SCALED_IDENTITY = Model(lambda rng: {"s": np.array(1.0)}, lambda params, x: params["s"] * x, None, "s·x")


def config(**fields):
    """A ProtoNetConfig with the tanh layer as f_φ, unless ``fields`` say otherwise."""
    return protonet.ProtoNetConfig(**{"embedding": SMOOTH, **fields})


def episode(dev, rng, n_way, k_shot, n_query, x_shape, n_tasks=None):
    """Random inputs, class-major labels; a leading task axis when n_tasks is given."""
    lead = () if n_tasks is None else (n_tasks,)
    support_y, query_y = (np.broadcast_to(np.repeat(np.arange(n_way), n), lead + (n_way * n,)).copy()
                          for n in (k_shot, n_query))
    return checks.episode(Episode(dev.asarray(rng.standard_normal(lead + (n_way * k_shot,) + x_shape)),
                                  dev.asarray(support_y),
                                  dev.asarray(rng.standard_normal(lead + (n_way * n_query,) + x_shape)),
                                  dev.asarray(query_y)), n_way=n_way)


def close(dev, actual, expected, rtol=1e-12, atol=1e-14):
    assert dev.is_array(actual), f"expected a {dev.name} array; got {type(actual).__name__}"
    np.testing.assert_allclose(dev.to_host(actual), expected, rtol=rtol, atol=atol)


# ----- finite differences -----
@pytest.mark.equation("protonet", "(3)")
@given(seed=seeds, distance=distances, n_way=st.integers(2, 4), k_shot=st.integers(1, 3),
       n_query=st.integers(1, 3), n_tasks=st.sampled_from([None, 2]), joint=st.booleans())
def test_loss_gradient_matches_finite_differences(dev, seed, distance, n_way, k_shot, n_query, n_tasks, joint):
    rng = np.random.default_rng(seed)
    params = dev.tree(smooth_params(rng, 3, 4))
    ep = episode(dev, rng, n_way, k_shot, n_query, (3,), n_tasks)
    cfg = config(n_way=n_way, distance=distance, joint_embedding=joint)
    gradcheck.check_grad(lambda p: protonet.loss(p, ep, cfg), params, rng=rng)


@pytest.mark.equation("protonet", "(3)")
@given(seed=seeds, distance=distances)
def test_loss_gradient_through_the_conv_embedding(dev, seed, distance):
    """conv4 with max-pool and transductive batch norm, 2 filters on 16×16 (a 2-d embedding)."""
    rng = np.random.default_rng(seed)
    cfg = protonet.ProtoNetConfig(protonet.conv4_embedding(hidden=2, image_size=16), n_way=3, distance=distance)
    params = dev.tree(protonet.init(rng, cfg))
    ep = episode(dev, rng, n_way=3, k_shot=2, n_query=1, x_shape=(1, 16, 16))
    assume(check_grad_away_from_kinks(lambda p: protonet.loss(p, ep, cfg), params, rng, n_directions=2) > 0)


# ----- golden values by hand -----
@pytest.mark.equation("protonet", "(1)", "(2)", "(3)")
def test_identity_embedding_golden_values_by_hand(dev):
    """Prototypes c0 = mean((0,0), (2,0)) = (1,0), c1 = mean((0,3), (0,5)) = (0,4).
    Query (1,1), label 0: squared distances 1 and 10; query (0,3), label 1: 10 and 1.
    So each query's loss is log(1 + e^−9).  Euclidean: 1 and √10, loss log(1 + e^{1−√10}).
    Cosine: (1,1) is at 45° from both prototypes, p = ½; (0,3) has cos 0 and 1, loss log(1 + e^−1)."""
    ep = Episode(*(dev.asarray(np.array(a)) for a in (
        [[0.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 5.0]], [0, 0, 1, 1], [[1.0, 1.0], [0.0, 3.0]], [0, 1])))
    close(dev, protonet.prototypes(ep.support_x, ep.support_y, 2), [[1.0, 0.0], [0.0, 4.0]], 0, 0)
    expected = {"sqeuclidean": math.log1p(math.exp(-9.0)),
                "euclidean": math.log1p(math.exp(1.0 - math.sqrt(10.0))),
                "cosine": (math.log(2.0) + math.log1p(math.exp(-1.0))) / 2}
    params = {"s": dev.asarray(np.array(1.0))}                              # f_φ(x) = 1·x
    for distance, loss in expected.items():
        cfg = protonet.ProtoNetConfig(SCALED_IDENTITY, n_way=2, distance=distance)
        assert float(protonet.loss(params, ep, cfg)) == pytest.approx(loss, rel=1e-14)


@pytest.mark.equation("protonet", "(1)", "(2)")
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
    # Two paths pick the same class wherever the two nearest centroids are apart by more than
    # rounding; a tie up to rounding may go either way.
    nearest = np.sort(squared, axis=1)
    clear = nearest[:, 1] - nearest[:, 0] > 1e-9 * (1.0 + nearest[:, 1])
    assert np.array_equal(np.argmax(dev.to_host(log_p), axis=1)[clear], np.argmin(squared, axis=1)[clear])


@pytest.mark.equation("protonet", "(2)")
@given(seed=seeds, n_way=st.integers(2, 5), d=st.integers(1, 5))
def test_squared_distance_protonet_is_a_linear_model(dev, seed, n_way, d):
    """Section 2.4, Eqs. (7)-(8): log p = log_softmax(z w + b) with w_k = 2 c_k, b_k = −‖c_k‖²."""
    rng = np.random.default_rng(seed)
    support, query = rng.standard_normal((2 * n_way, d)), rng.standard_normal((6, d))
    labels = np.tile(np.arange(n_way), 2)
    c = np.stack([support[labels == k].mean(axis=0) for k in range(n_way)])
    logits = query @ (2 * c).T - np.sum(c * c, axis=1)
    expected = logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
    close(dev, protonet.log_probabilities(*(dev.asarray(a) for a in (support, labels, query)), n_way),
          expected, rtol=1e-10, atol=1e-12)


# ----- invariances -----
@pytest.mark.equation("protonet", "(1)", "(3)")
@given(seed=seeds, distance=distances, n_way=st.integers(2, 4), k_shot=st.integers(2, 4))
def test_loss_invariant_to_permuting_support_and_equivariant_to_relabelling(dev, seed, distance, n_way,
                                                                            k_shot):
    rng = np.random.default_rng(seed)
    params = dev.tree(smooth_params(rng, 3, 4))
    ep = episode(dev, rng, n_way, k_shot, 2, (3,))
    cfg = config(n_way=n_way, distance=distance)
    loss = float(protonet.loss(params, ep, cfg))

    order = rng.permutation(n_way * k_shot)  # shuffles examples within and across classes
    shuffled = Episode(ep.support_x[dev.asarray(order)], ep.support_y[dev.asarray(order)], ep.query_x,
                       ep.query_y)
    assert float(protonet.loss(params, shuffled, cfg)) == pytest.approx(loss, rel=1e-12)

    relabel = rng.permutation(n_way)  # class k becomes class relabel[k]
    renamed = Episode(ep.support_x, dev.asarray(relabel[dev.to_host(ep.support_y)]), ep.query_x,
                      dev.asarray(relabel[dev.to_host(ep.query_y)]))
    assert float(protonet.loss(params, renamed, cfg)) == pytest.approx(loss, rel=1e-12)
    log_p, renamed_log_p = (dev.to_host(protonet.predict(params, e, cfg)) for e in (ep, renamed))
    np.testing.assert_allclose(renamed_log_p[:, relabel], log_p, rtol=1e-12, atol=1e-14)


@pytest.mark.equation("protonet", "(2)")
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
    proto_loss = protonet.loss(params, ep, config(n_way=n_way, distance=distance))
    match_loss = matching.loss({f"embed.{k}": v for k, v in params.items()}, ep,
                               matching.MatchingConfig(SMOOTH, 4, n_way, distance=distance))
    assert float(match_loss) == pytest.approx(float(proto_loss), rel=1e-12)


@pytest.mark.equation("protonet", "(3)")
def test_task_axis_gives_the_mean_of_per_task_losses(dev):
    rng = np.random.default_rng(0)
    params = dev.tree(smooth_params(rng, 3, 4))
    ep = episode(dev, rng, 3, 2, 2, (3,), n_tasks=4)
    batched = protonet.loss(params, ep, config(n_way=3))
    per_task = [float(protonet.loss(params, Episode(*(a[t] for a in ep)), config(n_way=3))) for t in range(4)]
    assert float(batched) == pytest.approx(np.mean(per_task), rel=1e-13)
    summed = protonet.loss(params, ep, config(n_way=3, task_reduction="sum"))
    assert float(summed) == pytest.approx(np.sum(per_task), rel=1e-13)


# ----- the entry points -----
def test_step_is_one_adam_step_of_meta_lr_on_the_loss(dev):
    rng = np.random.default_rng(2)
    cfg = config(n_way=3, meta_lr=0.05)
    params = dev.tree(protonet.init(rng, cfg))
    ep = episode(dev, rng, 3, 2, 2, (3,), n_tasks=2)
    state = protonet.init_state(params, cfg)
    assert state.optimizer.step == 0 and all(not np.any(dev.to_host(m)) for m in state.optimizer.m.values())
    assert state.bn == {}                                     # this embedding has no batch norm
    result = protonet.step(params, state, ep, cfg)
    assert isinstance(result, Step) and dev.is_array(result.loss) and result.state.optimizer.step == 1
    # the step differentiates the unchecked loss, here the public one: the same operations, so
    # equal to rounding at most
    np.testing.assert_allclose(float(result.loss), float(protonet.loss(params, ep, cfg)), rtol=1e-13)
    expected, _ = optimizers.adam_update(params, grad(protonet.loss)(params, ep, cfg), state.optimizer,
                                         lr=0.05)
    for name in params:
        close(dev, result.params[name], dev.to_host(expected[name]), rtol=1e-13, atol=1e-15)
    assert float(protonet.loss(result.params, ep, cfg)) < float(result.loss)


def test_predict_is_the_log_probabilities_of_the_embedded_episode(dev):
    rng = np.random.default_rng(3)
    params = dev.tree(smooth_params(rng, 3, 4))
    ep = episode(dev, rng, 3, 2, 2, (3,), n_tasks=2)
    for joint in (True, False):
        log_p = protonet.predict(params, ep, config(n_way=3, distance="cosine", joint_embedding=joint))
        expected = protonet.log_probabilities(smooth_embed(params, ep.support_x), ep.support_y,
                                              smooth_embed(params, ep.query_x), 3, "cosine")
        close(dev, log_p, dev.to_host(expected), rtol=1e-13)     # one call or two: equal to rounding
        assert log_p.shape == (2, 6, 3)
    host = np.log(np.array([[[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], [[0.2, 0.5, 0.3], [0.4, 0.4, 0.2]]]))
    accuracy = protonet.accuracy(dev.asarray(host), dev.asarray(np.array([[0, 1], [1, 2]])))
    np.testing.assert_array_equal(accuracy, [0.5, 0.5])


def test_conv4_embedding_is_64_dimensional_on_28_by_28_and_named(dev):
    cfg = protonet.ProtoNetConfig()
    params = dev.tree(protonet.init(np.random.default_rng(0), cfg))
    z = cfg.embedding.apply(params, dev.asarray(np.random.default_rng(1).random((3, 1, 28, 28))))
    assert dev.is_array(z) and z.shape == (3, 64)
    assert protonet.conv4_embedding(hidden=2, in_channels=3, image_size=16).init(
        np.random.default_rng(0))["conv0.w"].shape == (2, 3, 3, 3)
    conventions = cfg.conventions()
    assert conventions["distance"] == "sqeuclidean" and conventions["n_way"] == 5
    assert conventions["meta_lr"] == 1e-3 and conventions["embedding"] == cfg.embedding.name
    assert "64 filters" in cfg.embedding.name and "eps 1e-05" in cfg.embedding.name


def test_running_batch_norm_uses_the_given_statistics(dev):
    """bn_mode "running" with zero means and unit variances: batch norm is x/√(1 + ε)·scale + offset,
    as ``models.conv4_apply`` computes it; predict reads them from the State."""
    from refmeta.nn import models
    rng = np.random.default_rng(4)
    running = protonet.conv4_embedding(hidden=2, image_size=16, bn_mode="running")
    params = dev.tree(running.init(rng))
    stats = dev.tree(models.conv4_bn_state(2))
    x = dev.asarray(rng.random((3, 1, 16, 16)))
    expected = models.conv4_apply(params, x, variant="maxpool", bn_mode="running", bn_state=stats, bn_eps=1e-5)
    z, moments = running.batch_norm.apply(params, x, stats)
    close(dev, z, dev.to_host(expected), rtol=0, atol=0)                # the same path
    assert moments == {} and running.batch_norm.mode == "running" and running.batch_norm.momentum == 0.1
    cfg = protonet.ProtoNetConfig(running, n_way=2)
    ep = Episode(x[:2], dev.asarray(np.array([0, 1])), x[2:], dev.asarray(np.array([1])))
    state = protonet.init_state(params, cfg)
    assert set(state.bn) == {f"bn{i}.{s}" for i in range(4) for s in ("mean", "var")}
    z_all = models.conv4_apply(params, x, variant="maxpool", bn_mode="running", bn_state=state.bn, bn_eps=1e-5)
    close(dev, protonet.predict(params, ep, cfg, state=state),
          dev.to_host(protonet.log_probabilities(z_all[:2], ep.support_y, z_all[2:], 2)), rtol=1e-13)


def test_step_tracks_the_batch_statistics_of_its_pass_as_pytorch_does(dev):
    """state.bn ← 0.9·state.bn + 0.1·(the unbiased moments of the joint support-and-query pass),
    against the moments ``layers.batch_moments`` gives of each block's input, computed here."""
    from refmeta.nn import layers
    rng = np.random.default_rng(5)
    cfg = protonet.ProtoNetConfig(protonet.conv4_embedding(hidden=2, image_size=16), n_way=2)
    params = dev.tree(protonet.init(rng, cfg))
    ep = Episode(dev.asarray(rng.random((2, 4, 1, 16, 16))), dev.asarray(np.array([[0, 1, 0, 1]] * 2)),
                 dev.asarray(rng.random((2, 2, 1, 16, 16))), dev.asarray(np.array([[0, 1]] * 2)))
    state = protonet.init_state(params, cfg)
    tracked = protonet.step(params, state, ep, cfg).state.bn
    x = np.concatenate([dev.to_host(ep.support_x), dev.to_host(ep.query_x)], axis=1)
    host = {k: dev.to_host(v) for k, v in params.items()}
    for i in range(4):                                       # conv, batch norm, max-pool, relu
        x = layers.conv2d(x, host[f"conv{i}.w"], host[f"conv{i}.b"])
        mean, var = layers.batch_moments(x, 2, unbiased=True)              # (T, F): per task
        for stat, value in (("mean", mean), ("var", var)):
            initial = 0.0 if stat == "mean" else 1.0
            close(dev, tracked[f"bn{i}.{stat}"], 0.9 * initial + 0.1 * value.mean(axis=0), rtol=1e-12)
        x = layers.relu(layers.max_pool_2x2(layers.batch_norm(
            x, host[f"bn{i}.offset"], host[f"bn{i}.scale"], eps=1e-5, spatial_dims=2)))


# ----- bad input, at the entry points -----
@pytest.fixture
def setup(dev):
    rng = np.random.default_rng(0)
    return dev.tree(smooth_params(rng, 3, 4)), episode(dev, rng, 3, 2, 2, (3,)), config(n_way=3)


def with_array(dev, ep, field, change):
    host = dev.to_host(getattr(ep, field)).copy()
    return ep._replace(**{field: dev.asarray(change(host))})


def test_nan_and_inf_in_data_are_refused_naming_the_array(dev, setup):
    params, ep, cfg = setup
    for field, value in (("query_x", np.nan), ("support_x", np.inf)):
        bad = with_array(dev, ep, field, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 4, value, a))
        with pytest.raises(ValueError, match=f"{field} contains NaN or inf"):
            protonet.loss(params, bad, cfg)
    with pytest.raises(ValueError, match="log_probs contains NaN or inf"):
        protonet.accuracy(dev.asarray(np.array([[0.0, np.nan]])), dev.asarray(np.array([0])))


def test_nan_and_inf_in_params_are_refused_naming_the_leaf(dev, setup):
    params, ep, cfg = setup
    for value in (np.nan, -np.inf):
        bad = dict(params, b=dev.asarray(np.array([0.0, value, 0.0, 0.0])))
        with pytest.raises(ValueError, match=r"params\['b'\] contains NaN or inf"):
            protonet.step(bad, protonet.init_state(params, cfg), ep, cfg)


def test_labels_outside_0_to_n_way_minus_1_are_refused(dev, setup):
    params, ep, cfg = setup
    bad = with_array(dev, ep, "query_y", lambda y: np.where(y == 2, 3, y))
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.2 \(n_way=3\); got values from 0 to 3"):
        protonet.loss(params, bad, cfg)
    with pytest.raises(ValueError, match=r"classes \[3\] have none"):
        protonet.predict(params, ep, config(n_way=4))
    with pytest.raises(ValueError, match=r"query_y: labels must be in 0\.\.1"):
        protonet.accuracy(dev.asarray(np.zeros((2, 2))), dev.asarray(np.array([0, 2])))


def test_non_integer_labels_and_mismatched_shapes_are_refused(dev, setup):
    params, ep, cfg = setup
    with pytest.raises(TypeError, match="support_y: class labels must be integers; got float64"):
        protonet.predict(params, with_array(dev, ep, "support_y", lambda y: y.astype(float)), cfg)
    with pytest.raises(TypeError, match="query_y: class labels must be integers"):
        protonet.accuracy(dev.asarray(np.zeros((2, 3))), dev.asarray(np.array([0.0, 1.0])))
    with pytest.raises(ValueError, match=r"query_y must have shape \(2,\); got \(3,\)"):
        protonet.accuracy(dev.asarray(np.zeros((2, 3))), dev.asarray(np.array([0, 1, 2])))
    with pytest.raises(ValueError, match=r"log_probs must be \(\.\.\., n_q, N\)"):
        protonet.accuracy(dev.asarray(np.zeros(3)), dev.asarray(np.array([0])))
    with pytest.raises(ValueError, match="support and query disagree"):
        protonet.loss(params, with_array(dev, ep, "query_x", lambda x: x[:, :2]), cfg)


def test_empty_sets_no_tasks_and_an_empty_params_tree_are_refused(dev, setup):
    params, ep, cfg = setup
    for which in ("support", "query"):
        empty = ep._replace(**{f"{which}_x": dev.asarray(np.zeros((0, 3))),
                               f"{which}_y": dev.asarray(np.zeros(0, dtype=int))})
        with pytest.raises(ValueError, match=f"the {which} set is empty"):
            protonet.loss(params, empty, cfg)
    no_tasks = Episode(*(dev.asarray(np.zeros((0,) + dev.to_host(a).shape, dev.to_host(a).dtype)) for a in ep))
    with pytest.raises(ValueError, match=r"holds no task \(T = 0\): support_x \(0, 6, 3\)"):
        protonet.loss(params, no_tasks, cfg)
    with pytest.raises(ValueError, match="params is empty"):
        protonet.init_state({}, cfg)


def test_a_missing_or_extra_params_key_is_named(dev, setup):
    params, ep, cfg = setup
    with pytest.raises(ValueError, match=r"missing \['b'\], unexpected \[\]"):
        protonet.loss({"w": params["w"]}, ep, cfg)
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \['c'\]"):
        protonet.predict(dict(params, c=params["b"]), ep, cfg)
    with pytest.raises(ValueError, match=r"params\['w'\] must have shape \(3, 4\); got \(4, 3\)"):
        protonet.loss(dict(params, w=dev.asarray(np.zeros((4, 3)))), ep, cfg)
    with pytest.raises(ValueError, match=r"state.optimizer.m do not match the model: missing \['b'\]"):
        protonet.step(params, State(optimizers.adam_init({"w": params["w"]}), {}), ep, cfg)


def test_negative_learning_rates_and_out_of_range_settings_are_refused():
    with pytest.raises(ValueError, match=r"meta_lr must be a finite number >= 0; got -0\.001"):
        protonet.ProtoNetConfig(meta_lr=-1e-3)
    with pytest.raises(ValueError, match="meta_lr must be a finite number >= 0; got inf"):
        protonet.ProtoNetConfig(meta_lr=float("inf"))
    with pytest.raises(ValueError, match="n_way must be an integer >= 2; got 1"):
        protonet.ProtoNetConfig(n_way=1)
    with pytest.raises(TypeError, match="n_way must be an integer >= 2; got True"):
        protonet.ProtoNetConfig(n_way=True)
    with pytest.raises(TypeError, match="joint_embedding must be True or False; got 1"):
        protonet.ProtoNetConfig(joint_embedding=1)
    with pytest.raises(ValueError, match="bn_eps must be a finite number > 0; got 0"):
        protonet.conv4_embedding(bn_eps=0)
    with pytest.raises(ValueError, match=r"bn_momentum must be a finite number in \[0, 1\]; got 1.5"):
        protonet.conv4_embedding(bn_momentum=1.5)


def test_init_sizes_of_zero_negative_or_not_integers_are_refused():
    for name, value in (("hidden", 0), ("in_channels", -1), ("image_size", 8)):
        with pytest.raises(ValueError, match=f"{name} must be an integer >= "):
            protonet.conv4_embedding(**{name: value})
    with pytest.raises(TypeError, match="hidden must be an integer >= 1; got 2.5"):
        protonet.conv4_embedding(hidden=2.5)


def test_unknown_names_and_wrong_kinds_are_refused(setup):
    params, ep, cfg = setup
    with pytest.raises(ValueError, match="distance must be one of 'sqeuclidean', 'euclidean', 'cosine'; "
                                         "got 'manhattan'"):
        protonet.ProtoNetConfig(distance="manhattan")
    with pytest.raises(ValueError, match="task_reduction must be one of 'mean', 'sum'; got 'median'"):
        protonet.ProtoNetConfig(task_reduction="median")
    with pytest.raises(ValueError, match="bn_mode must be one of"):
        protonet.conv4_embedding(bn_mode="batch")
    with pytest.raises(TypeError, match="embedding must be a Model; got function"):
        protonet.ProtoNetConfig(embedding=smooth_embed)
    with pytest.raises(TypeError, match="config must be a ProtoNetConfig; got MatchingConfig"):
        protonet.loss(params, ep, matching.MatchingConfig())
    with pytest.raises(TypeError, match="rng must be a Generator; got int"):
        protonet.init(0, cfg)
    with pytest.raises(TypeError, match=r"state must be a State; got NoneType"):
        protonet.step(params, None, ep, cfg)
    with pytest.raises(TypeError, match=r"state.optimizer must be Adam's state \(step, m, v\); got NoneType"):
        protonet.step(params, State(None, {}), ep, cfg)


def test_pairwise_distance_checks_its_inputs_then_computes_the_distances(dev):
    """The public door: the distance's name, finite floats (..., m, d) and (..., n, d), then
    distance_matrix, the docstring's three distances, here by hand."""
    z, c = dev.asarray(np.array([[1.0, 0.0], [3.0, 4.0]])), dev.asarray(np.array([[2.0, 0.0], [0.0, 4.0]]))
    expected = {"sqeuclidean": [[1, 17], [17, 9]], "euclidean": np.sqrt([[1, 17], [17, 9]]),
                "cosine": [[0, 1], [1 - 6 / 10, 1 - 16 / 20]]}
    for distance, by_hand in expected.items():
        np.testing.assert_allclose(dev.to_host(protonet.pairwise_distance(z, c, distance)), by_hand,
                                   rtol=1e-15, atol=1e-15)
    for call, error, message in [
            (lambda: protonet.pairwise_distance(z, c, "l1"), ValueError, "distance must be one of"),
            (lambda: protonet.pairwise_distance(z * np.nan, c), ValueError, "z contains NaN or inf"),
            (lambda: protonet.pairwise_distance(z, c / 0.0), ValueError, "c contains NaN or inf"),
            (lambda: protonet.pairwise_distance(z, dev.asarray(np.ones((2, 3)))), ValueError,
             r"z and c must be \(\.\.\., m, d\) and \(\.\.\., n, d\) with the same d; got \(2, 2\) and \(2, 3\)"),
            (lambda: protonet.pairwise_distance(dev.asarray(np.ones(2)), c), ValueError, "with the same d"),
            (lambda: protonet.pairwise_distance(dev.asarray(np.ones((2, 2), int)), c), TypeError,
             "z must be a floating-point array; got dtype int64")]:
        with np.errstate(all="ignore"), pytest.raises(error, match=message):
            call()


def test_bad_input_changes_nothing(dev, setup):
    params, ep, cfg = setup
    snapshot = {k: dev.to_host(v).copy() for k, v in params.items()}
    state = protonet.init_state(params, cfg)
    with pytest.raises(ValueError):
        protonet.step(params, state, with_array(dev, ep, "query_y", lambda y: y + 1), cfg)
    for name in snapshot:
        np.testing.assert_array_equal(dev.to_host(params[name]), snapshot[name])
    assert state.optimizer.step == 0


def test_the_omniglot_sampler_refuses_too_few_classes_or_drawings():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="a 5-way episode needs 5 classes; the images hold 4"):
        omniglot.sample_episode(rng, np.zeros((4, 20, 28, 28)), 5, 1, 1)
    with pytest.raises(ValueError, match="needs 21 examples per class"):
        omniglot.sample_episode(rng, np.zeros((6, 20, 28, 28)), 5, 1, 20)
