"""Matching Networks and the LSTM cell: independent references, finite differences, identities."""

import dataclasses
import math

import autograd

import autograd.numpy as anp
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from helpers import check_grad_away_from_kinks
from refmeta import checks, gradcheck, matching, protonet
from refmeta.contract import Episode, Model, State, Step
from refmeta.nn import layers, optimizers

seeds = st.integers(0, 2**32 - 1)


def close(dev, actual, expected, rtol=1e-12, atol=1e-13):
    assert dev.is_array(actual), f"expected a {dev.name} array; got {type(actual).__name__}"
    np.testing.assert_allclose(dev.to_host(actual), expected, rtol=rtol, atol=atol)


# ----- an independent reference on the host: loops and the textbook formulas -----
def ref_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def ref_lstm(p, x, h, c):
    """One LSTM step on vectors, gates (i, f, g, o) as in PyTorch's nn.LSTMCell documentation."""
    hidden = len(c)
    pre = x @ p["w_x"] + h @ p["w_h"] + p["b"]
    i, f, g, o = (pre[k * hidden:(k + 1) * hidden] for k in range(4))
    c_new = ref_sigmoid(f) * c + ref_sigmoid(i) * np.tanh(g)
    return ref_sigmoid(o) * np.tanh(c_new), c_new


def ref_fce(p, g_prime, f_prime, read_steps, h0="embedding"):
    """Appendix A.2 then A.1, one support vector and one query at a time."""
    lstm = lambda name: {k: p[f"fce.{name}.{k}"] for k in ("w_x", "w_h", "b")}
    n, d = g_prime.shape
    forward, backward = np.zeros((n, d)), np.zeros((n, d))
    h, c = np.zeros(d), np.zeros(d)
    for i in range(n):
        h, c = ref_lstm(lstm("fw"), g_prime[i], h, c)
        forward[i] = h
    h, c = np.zeros(d), np.zeros(d)
    for i in reversed(range(n)):
        h, c = ref_lstm(lstm("bw"), g_prime[i], h, c)
        backward[i] = h
    g = forward + backward + g_prime                                       # (G)
    f = np.zeros_like(f_prime)
    for q, x in enumerate(f_prime):
        h, c = (x.copy() if h0 == "embedding" else np.zeros(d)), np.zeros(d)
        for _ in range(read_steps):
            logits = np.array([h @ g_i for g_i in g])
            a = np.exp(logits - logits.max()) / np.sum(np.exp(logits - logits.max()))
            r = sum(a_i * g_i for a_i, g_i in zip(a, g))                    # (R)
            h_hat, c = ref_lstm(lstm("att"), x, np.concatenate([h, r]), c)  # (F1)
            h = h_hat + x                                                   # (F2)
        f[q] = h
    return g, f


def ref_cosine_model(f, g, support_y, n_way, scale=1.0):
    """(A) and (P) by the definitions: cosines, attention, class sums of attention; log p."""
    cos = np.array([[fi @ gj / (np.linalg.norm(fi) * np.linalg.norm(gj)) for gj in g] for fi in f])
    a = np.exp(scale * cos) / np.sum(np.exp(scale * cos), axis=1, keepdims=True)
    p = np.stack([a[:, support_y == k].sum(axis=1) for k in range(n_way)], axis=1)
    return a, np.log(p)


def smooth_embed(params, x):
    return anp.tanh(anp.matmul(x, params["w"]) + params["b"])


SMOOTH = Model(lambda rng: {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}, smooth_embed, None,
               "tanh layer 3 -> 4")
NO_PARAMS = Model(lambda rng: {}, lambda params, x: x, None, "identity")
SCALED_IDENTITY = Model(lambda rng: {"s": np.array(1.0)}, lambda params, x: params["s"] * x, None, "s·x")


def config(**fields):
    """A MatchingConfig with the tanh layer as f′ = g′ (d = 4), 3-way, unless ``fields`` say otherwise."""
    return matching.MatchingConfig(**{"embedding": SMOOTH, "embedding_dim": 4, "n_way": 3, **fields})


def fce_params(rng, d, scale=0.5):
    params = matching.init(rng, config(embedding=NO_PARAMS, embedding_dim=d, fce=True))
    return {k: scale * rng.standard_normal(v.shape) for k, v in params.items()}


def episode(dev, rng, n_way, k_shot, n_query, d_in=3, n_tasks=None):
    lead = () if n_tasks is None else (n_tasks,)
    ys = [np.broadcast_to(np.repeat(np.arange(n_way), n), lead + (n_way * n,)).copy() for n in (k_shot, n_query)]
    support_x, query_x = (rng.standard_normal(lead + (n_way * n, d_in)) for n in (k_shot, n_query))
    return checks.episode(Episode(dev.asarray(support_x), dev.asarray(ys[0]), dev.asarray(query_x),
                                  dev.asarray(ys[1])), n_way=n_way)


def model_params(dev, rng, cfg):
    params = matching.init(rng, cfg)
    return dev.tree({k: (0.5 * rng.standard_normal(v.shape) if k.startswith("fce") else v)
                     for k, v in params.items()})


# ----- the LSTM cell -----
@given(seed=seeds, d_in=st.integers(1, 4), hidden=st.integers(1, 4), recurrent=st.integers(1, 6))
def test_lstm_cell_matches_the_textbook_equations(dev, seed, d_in, hidden, recurrent):
    rng = np.random.default_rng(seed)
    p = {k: 0.7 * rng.standard_normal(v.shape) for k, v in layers.lstm_init(rng, d_in, hidden, recurrent).items()}
    x, h, c = rng.standard_normal((3, d_in)), rng.standard_normal((3, recurrent)), rng.standard_normal((3, hidden))
    h_new, c_new = layers.lstm_cell(*(dev.asarray(a) for a in (x, h, c, p["w_x"], p["w_h"], p["b"])))
    expected = [ref_lstm(p, x[n], h[n], c[n]) for n in range(3)]
    close(dev, h_new, np.stack([e[0] for e in expected]))
    close(dev, c_new, np.stack([e[1] for e in expected]))


def test_lstm_cell_broadcasts_task_axes_and_checks_shapes(dev):
    rng = np.random.default_rng(1)
    p = {k: rng.standard_normal((2,) + v.shape) for k, v in layers.lstm_init(rng, 3, 2).items()}  # 2 tasks
    x, h, c = rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 5, 2)), rng.standard_normal((2, 5, 2))
    h_new, _ = layers.lstm_cell(*(dev.asarray(a) for a in (x, h, c, p["w_x"], p["w_h"], p["b"])))
    for t in range(2):
        task = {k: v[t] for k, v in p.items()}
        close(dev, h_new[t], np.stack([ref_lstm(task, x[t, n], h[t, n], c[t, n])[0] for n in range(5)]))
    with pytest.raises(ValueError, match=r"expects h \(\.\.\., n, 2\)"):
        layers.lstm_cell(*(dev.asarray(a) for a in (x, x, c, p["w_x"], p["w_h"], p["b"])))
    with pytest.raises(ValueError, match=r"expects c \(\.\.\., n, H=2\)"):
        layers.lstm_cell(*(dev.asarray(a) for a in (x, h, x, p["w_x"], p["w_h"], p["b"])))
    init = layers.lstm_init(np.random.default_rng(0), 3, 4, recurrent_size=8, forget_bias=1.0)
    assert init["w_x"].shape == (3, 16) and init["w_h"].shape == (8, 16) and init["b"].shape == (16,)
    assert np.all(np.abs(init["w_x"]) <= 0.5) and np.all(init["b"][4:8] >= 0.5)


@given(seed=seeds)
def test_lstm_cell_gradient_matches_finite_differences(dev, seed):
    rng = np.random.default_rng(seed)
    tree = dev.tree({**layers.lstm_init(rng, 3, 2, 4), "x": rng.standard_normal((2, 3)),
                     "h": rng.standard_normal((2, 4)), "c": rng.standard_normal((2, 2))})
    f = lambda t: anp.sum(anp.sin(sum(layers.lstm_cell(t["x"], t["h"], t["c"], t["w_x"], t["w_h"], t["b"]))))
    gradcheck.check_grad(f, tree, rng=rng)


# ----- the model against the independent reference -----
@pytest.mark.equation("matching", "(A)", "(L)")
@given(seed=seeds, n_way=st.integers(2, 4), k_shot=st.integers(1, 3), n_query=st.integers(1, 3),
       scale=st.sampled_from([1.0, 7.5]))
def test_without_fce_the_model_is_hand_computed_cosine_attention(dev, seed, n_way, k_shot, n_query, scale):
    rng = np.random.default_rng(seed)
    g, f = rng.standard_normal((n_way * k_shot, 4)), rng.standard_normal((n_way * n_query, 4))
    support_y, query_y = np.repeat(np.arange(n_way), k_shot), np.repeat(np.arange(n_way), n_query)
    a, log_p = ref_cosine_model(f, g, support_y, n_way, scale)
    close(dev, matching.attention(dev.asarray(f), dev.asarray(g), scale=scale), a)
    close(dev, matching.class_log_probabilities(*(dev.asarray(v) for v in (f, g, support_y)), n_way,
                                                scale=scale), log_p)
    cfg = config(embedding=NO_PARAMS, n_way=n_way, attention_scale=scale)
    loss = matching.loss_from_embeddings({}, *(dev.asarray(v) for v in (g, support_y, f, query_y)), n_way, cfg)
    assert float(loss) == pytest.approx(-np.mean(log_p[np.arange(len(query_y)), query_y]), rel=1e-12)


@pytest.mark.equation("matching", "(A)", "(P)", "(L)")
def test_golden_value_by_hand(dev):
    """g = (1,0) [class 0], (0,1), (1,1) [class 1]; f = (1,0): cosines 1, 0, 1/√2, so
    p(0) = e / (e + 1 + e^{1/√2}) and the loss for label 0 is −log p(0).  With f′ = g′ = 1·x
    through the entry points, the same number."""
    g, f = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), np.array([[1.0, 0.0]])
    expected = -math.log(math.e / (math.e + 1.0 + math.exp(1 / math.sqrt(2))))
    ep = Episode(dev.asarray(g), dev.asarray(np.array([0, 1, 1])), dev.asarray(f), dev.asarray(np.array([0])))
    cfg = config(embedding=SCALED_IDENTITY, n_way=2)
    loss = matching.loss_from_embeddings({}, ep.support_x, ep.support_y, ep.query_x, ep.query_y, 2, cfg)
    assert float(loss) == pytest.approx(expected, rel=1e-14)
    for joint in (True, False):
        cfg = config(embedding=SCALED_IDENTITY, n_way=2, joint_embedding=joint)
        params = {"embed.s": dev.asarray(np.array(1.0))}
        assert float(matching.loss(params, ep, cfg)) == pytest.approx(expected, rel=1e-14)
        assert float(matching.predict(params, ep, cfg)[0, 0]) == pytest.approx(-expected, rel=1e-14)


@pytest.mark.equation("matching", "(G)", "(R)", "(F1)", "(F2)")
@given(seed=seeds, read_steps=st.integers(0, 3), h0=st.sampled_from(matching.ATTENTION_H0),
       n_support=st.integers(1, 5))
def test_fce_follows_the_appendix_equations(dev, seed, read_steps, h0, n_support):
    rng = np.random.default_rng(seed)
    p = fce_params(rng, 3)
    g_prime, f_prime = rng.standard_normal((n_support, 3)), rng.standard_normal((4, 3))
    cfg = config(embedding=NO_PARAMS, embedding_dim=3, fce=True, read_steps=read_steps, attention_h0=h0)
    g, f = matching.full_context_embeddings(dev.tree(p), dev.asarray(g_prime), dev.asarray(f_prime), cfg)
    expected_g, expected_f = ref_fce(p, g_prime, f_prime, read_steps, h0)
    close(dev, g, expected_g)
    close(dev, f, expected_f)


@pytest.mark.equation("matching", "(G)")
def test_fce_reads_the_support_set_in_order_and_no_fce_does_not(dev):
    rng = np.random.default_rng(3)
    p = dev.tree(fce_params(rng, 3))
    g_prime, f_prime = rng.standard_normal((4, 3)), rng.standard_normal((2, 3))
    y = np.array([0, 1, 0, 1])
    order = np.array([2, 0, 3, 1])
    for fce, invariant in ((False, True), (True, False)):
        cfg = config(embedding=NO_PARAMS, embedding_dim=3, n_way=2, fce=fce)
        log_p = [dev.to_host(matching.log_probabilities(p, dev.asarray(g_prime[o]), dev.asarray(y[o]),
                                                        dev.asarray(f_prime), 2, cfg))
                 for o in (np.arange(4), order)]
        assert np.allclose(log_p[0], log_p[1], rtol=1e-12, atol=1e-14) == invariant


# ----- probabilities, attention, relabelling -----
@pytest.mark.equation("matching", "(A)", "(P)", "(L)")
@given(seed=seeds, fce=st.booleans(), n_way=st.integers(2, 4), k_shot=st.integers(1, 3),
       distance=st.sampled_from(protonet.DISTANCES))
def test_attention_rows_and_class_probabilities_sum_to_one(dev, seed, fce, n_way, k_shot, distance):
    rng = np.random.default_rng(seed)
    p = dev.tree(fce_params(rng, 4))
    g_prime, f_prime = dev.asarray(rng.standard_normal((n_way * k_shot, 4))), dev.asarray(rng.standard_normal((5, 4)))
    support_y = dev.asarray(rng.permutation(np.repeat(np.arange(n_way), k_shot)))
    cfg = config(embedding=NO_PARAMS, n_way=n_way, fce=fce, read_steps=2, distance=distance)
    g, f = matching.full_context_embeddings(p, g_prime, f_prime, cfg)
    a = dev.to_host(matching.attention(f, g, distance))
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-13)
    probabilities = np.exp(dev.to_host(matching.log_probabilities(p, g_prime, support_y, f_prime, n_way, cfg)))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-13)
    by_class = np.stack([a[:, dev.to_host(support_y) == k].sum(axis=1) for k in range(n_way)], axis=1)
    np.testing.assert_allclose(probabilities, by_class, rtol=1e-12)   # (P): sums of attention, no 2nd softmax
    assert not np.allclose(np.exp(by_class) / np.exp(by_class).sum(1, keepdims=True), probabilities)


@pytest.mark.equation("matching", "(P)", "(L)")
@given(seed=seeds, fce=st.booleans(), n_way=st.integers(2, 4))
def test_relabelling_classes_permutes_the_probabilities(dev, seed, fce, n_way):
    rng = np.random.default_rng(seed)
    cfg = config(n_way=n_way, fce=fce, read_steps=2)
    params = model_params(dev, rng, cfg)
    ep = episode(dev, rng, n_way, 2, 2)
    relabel = rng.permutation(n_way)
    renamed = Episode(ep.support_x, dev.asarray(relabel[dev.to_host(ep.support_y)]), ep.query_x,
                      dev.asarray(relabel[dev.to_host(ep.query_y)]))
    log_p, renamed_log_p = (dev.to_host(matching.predict(params, e, cfg)) for e in (ep, renamed))
    np.testing.assert_allclose(renamed_log_p[:, relabel], log_p, rtol=1e-12, atol=1e-14)
    assert float(matching.loss(params, renamed, cfg)) == pytest.approx(float(matching.loss(params, ep, cfg)),
                                                                       rel=1e-12)


@pytest.mark.equation("matching", "(L)")
def test_per_class_logsumexp_is_stable_where_summing_attention_underflows(dev):
    """Squared distances of ~1e3 underflow exp; (L) still gives the exact log-probabilities."""
    g = np.array([[0.0], [40.0], [41.0]])                  # class 0 far from the query, class 1 near
    log_p = dev.to_host(matching.class_log_probabilities(dev.asarray(np.array([[41.0]])), dev.asarray(g),
                                                         dev.asarray(np.array([0, 1, 1])), 2, "sqeuclidean"))
    scores = -(41.0 - g[:, 0]) ** 2                         # −1681, −1, 0
    np.testing.assert_allclose(log_p, [[scores[0] - np.logaddexp.reduce(scores),
                                        np.logaddexp(scores[1], scores[2]) - np.logaddexp.reduce(scores)]],
                               rtol=1e-13)
    assert np.isfinite(log_p).all()


def test_task_axis_gives_the_mean_and_the_sum_of_per_task_losses(dev):
    rng = np.random.default_rng(0)
    cfg = config(fce=True, read_steps=2)
    params = model_params(dev, rng, cfg)
    ep = episode(dev, rng, 3, 2, 2, n_tasks=3)
    per_task = [float(matching.loss(params, Episode(*(a[t] for a in ep)), cfg)) for t in range(3)]
    assert float(matching.loss(params, ep, cfg)) == pytest.approx(np.mean(per_task), rel=1e-13)
    summed = matching.loss(params, ep, config(fce=True, read_steps=2, task_reduction="sum"))
    assert float(summed) == pytest.approx(np.sum(per_task), rel=1e-13)


# ----- finite differences -----
@pytest.mark.equation("matching", "(G)", "(R)", "(F1)", "(F2)", "(A)", "(L)")
@given(seed=seeds, fce=st.booleans(), read_steps=st.integers(0, 2), share=st.booleans(),
       h0=st.sampled_from(matching.ATTENTION_H0), distance=st.sampled_from(protonet.DISTANCES),
       n_tasks=st.sampled_from([None, 2]), scale=st.sampled_from([1.0, 4.0]), learn=st.booleans())
def test_loss_gradient_matches_finite_differences(dev, seed, fce, read_steps, share, h0, distance, n_tasks,
                                                  scale, learn):
    rng = np.random.default_rng(seed)
    cfg = config(fce=fce, read_steps=read_steps, share_embedding=share, attention_h0=h0, distance=distance,
                 attention_scale=scale, learn_attention_scale=learn)
    params = model_params(dev, rng, cfg)
    ep = episode(dev, rng, 3, 2, 2, n_tasks=n_tasks)
    gradcheck.check_grad(lambda p: matching.loss(p, ep, cfg), params, rng=rng)


@given(seed=seeds, fce=st.booleans())
def test_loss_gradient_through_the_conv_embedding(dev, seed, fce):
    rng = np.random.default_rng(seed)
    cfg = config(embedding=protonet.conv4_embedding(hidden=2, image_size=16), embedding_dim=2, fce=fce,
                 read_steps=2)
    params = dev.tree(matching.init(rng, cfg))
    ys = np.repeat(np.arange(3), 2)
    ep = checks.episode(Episode(dev.asarray(rng.standard_normal((6, 1, 16, 16))), dev.asarray(ys),
                                dev.asarray(rng.standard_normal((3, 1, 16, 16))), dev.asarray(np.arange(3))),
                        n_way=3)
    f = lambda p: matching.loss(p, ep, cfg)
    assume(check_grad_away_from_kinks(f, params, rng, n_directions=2) > 0)


@given(seed=seeds, scale=st.sampled_from([0.5, 1.0, 10.0]), fce=st.booleans())
def test_a_learned_scale_starts_as_the_fixed_one_and_its_gradient_is_the_logit_sum(dev, seed, scale, fce):
    """At init exp(ρ) = s, so the loss equals the fixed-s loss; and since every logit is s·c,
    dJ/dρ = s · Σ_logits (dJ/dlogit) · c = s · dJ/ds, checked against the fixed-s model by
    central differences in s."""
    rng = np.random.default_rng(seed)
    learned = config(fce=fce, read_steps=2, attention_scale=scale, learn_attention_scale=True)
    params = model_params(dev, rng, learned)
    assert float(params[matching.LOG_SCALE]) == pytest.approx(np.log(scale), rel=1e-15, abs=1e-15)
    ep = episode(dev, rng, 3, 2, 2)
    loss_at = lambda s: float(matching.loss({k: v for k, v in params.items() if k != matching.LOG_SCALE}, ep,
                                            config(fce=fce, read_steps=2, attention_scale=s)))
    assert float(matching.loss(params, ep, learned)) == pytest.approx(loss_at(scale), rel=1e-13)
    grad = autograd.grad(lambda p: matching.loss(p, ep, learned))(params)
    h = 1e-5 * scale
    assert float(grad[matching.LOG_SCALE]) == pytest.approx(
        scale * (loss_at(scale + h) - loss_at(scale - h)) / (2 * h), rel=1e-6, abs=1e-9)


# ----- the entry points -----
def test_init_names_and_conventions():
    rng = np.random.default_rng(0)
    ones = Model(lambda r: {"w": np.ones((3, 4))}, None, None, "ones")
    assert set(matching.init(rng, matching.MatchingConfig(ones, 4))) == {"embed.w"}
    params = matching.init(rng, matching.MatchingConfig(ones, 4, fce=True, share_embedding=False))
    assert {"f.w", "g.w", "fce.fw.w_x", "fce.bw.w_h", "fce.att.b"} <= set(params)
    assert params["fce.att.w_h"].shape == (8, 16) and params["fce.fw.w_h"].shape == (4, 16)
    default = matching.MatchingConfig()
    conventions = default.conventions()
    assert conventions["distance"] == "cosine" and conventions["support_order"] == "as given"
    assert conventions["embedding"] == default.embedding.name == protonet.ProtoNetConfig().embedding.name
    assert conventions["embedding_dim"] == 64 and conventions["n_way"] == 5 and conventions["meta_lr"] == 1e-3
    assert set(matching.init(rng, default)) == {f"embed.{k}" for k in protonet.init(rng, protonet.ProtoNetConfig())}


def test_step_tracks_f_and_g_statistics_each_from_its_own_pass(dev):
    """Two networks (share_embedding False): state.bn holds "g.bn{i}.*" and "f.bn{i}.*", tracked
    from the support pass through g′ and the query pass through f′, as the embedding's own
    ``batch_norm.apply`` gives their moments; with bn_mode "running" predict reads them."""
    rng = np.random.default_rng(6)
    embedding = protonet.conv4_embedding(hidden=2, image_size=16, bn_momentum=0.25)
    cfg = config(embedding=embedding, embedding_dim=2, share_embedding=False, n_way=2)
    params = dev.tree(matching.init(rng, cfg))
    ep = Episode(dev.asarray(rng.random((4, 1, 16, 16))), dev.asarray(np.array([0, 1, 0, 1])),
                 dev.asarray(rng.random((2, 1, 16, 16))), dev.asarray(np.array([1, 0])))
    state = matching.init_state(params, cfg)
    assert set(state.bn) == {f"{net}.bn{i}.{s}" for net in "fg" for i in range(4) for s in ("mean", "var")}
    tracked = matching.step(params, state, ep, cfg).state.bn
    for net, x in (("g", ep.support_x), ("f", ep.query_x)):
        _, moments = embedding.batch_norm.apply({k[2:]: v for k, v in params.items() if k.startswith(net)},
                                                x, None)
        for name, value in moments.items():
            close(dev, tracked[f"{net}.{name}"], 0.75 * dev.to_host(state.bn[f"{net}.{name}"])
                  + 0.25 * dev.to_host(value), rtol=1e-13)
    running = dataclasses.replace(cfg, embedding=embedding._replace(
        batch_norm=embedding.batch_norm._replace(mode="running")))
    assert "momentum 0.25" in embedding.name
    log_p = matching.predict(params, ep, running, state=State(None, tracked))
    assert log_p.shape == (2, 2) and np.all(np.isfinite(dev.to_host(log_p)))


def test_step_is_one_adam_step_of_meta_lr_on_the_loss(dev):
    rng = np.random.default_rng(2)
    cfg = config(fce=True, read_steps=2, learn_attention_scale=True, meta_lr=0.02)
    params = model_params(dev, rng, cfg)
    ep = episode(dev, rng, 3, 2, 2, n_tasks=2)
    state = matching.init_state(params, cfg)
    assert state.optimizer.step == 0 and set(state.optimizer.m) == set(params) and state.bn == {}
    result = matching.step(params, state, ep, cfg)
    assert isinstance(result, Step) and dev.is_array(result.loss) and result.state.optimizer.step == 1
    # the step differentiates the unchecked loss, here the public one: the same operations, so
    # equal to rounding at most
    np.testing.assert_allclose(float(result.loss), float(matching.loss(params, ep, cfg)), rtol=1e-13)
    expected, _ = optimizers.adam_update(params, autograd.grad(matching.loss)(params, ep, cfg),
                                         state.optimizer, lr=0.02)
    for name in params:
        close(dev, result.params[name], dev.to_host(expected[name]), rtol=1e-13, atol=1e-15)
    assert float(matching.loss(result.params, ep, cfg)) < float(result.loss)


# ----- bad input, at the entry points -----
@pytest.fixture
def setup(dev):
    rng = np.random.default_rng(0)
    cfg = config(n_way=2, fce=True, read_steps=1, learn_attention_scale=True)
    return model_params(dev, rng, cfg), episode(dev, rng, 2, 2, 1), cfg


def with_array(dev, ep, field, change):
    return ep._replace(**{field: dev.asarray(change(dev.to_host(getattr(ep, field)).copy()))})


def test_nan_and_inf_in_data_are_refused_naming_the_array(dev, setup):
    params, ep, cfg = setup
    for field, value in (("support_x", np.nan), ("query_x", -np.inf)):
        bad = with_array(dev, ep, field, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 1, value, a))
        with pytest.raises(ValueError, match=f"{field} contains NaN or inf"):
            matching.loss(params, bad, cfg)


def test_nan_and_inf_in_params_are_refused_naming_the_leaf(dev, setup):
    params, ep, cfg = setup
    with pytest.raises(ValueError, match=r"params\['attention.log_scale'\] contains NaN or inf"):
        matching.predict(dict(params, **{matching.LOG_SCALE: dev.asarray(np.array(np.nan))}), ep, cfg)
    with pytest.raises(ValueError, match=r"params\['fce.att.b'\] contains NaN or inf"):
        bad_bias = dev.asarray(np.full(dev.to_host(params["fce.att.b"]).shape, np.inf))
        matching.step(dict(params, **{"fce.att.b": bad_bias}), matching.init_state(params, cfg), ep, cfg)


def test_labels_outside_0_to_n_way_minus_1_are_refused(dev, setup):
    params, ep, cfg = setup
    with pytest.raises(ValueError, match=r"query_y: labels must be in 0\.\.1 \(n_way=2\); got values from 1 to 2"):
        matching.loss(params, with_array(dev, ep, "query_y", lambda y: y + 1), cfg)
    with pytest.raises(ValueError, match=r"support_y: labels must be in 0\.\.1"):
        matching.predict(params, with_array(dev, ep, "support_y", lambda y: y - 1), cfg)


def test_non_integer_labels_are_refused(dev, setup):
    params, ep, cfg = setup
    with pytest.raises(TypeError, match="query_y: class labels must be integers; got float64"):
        matching.loss(params, with_array(dev, ep, "query_y", lambda y: y.astype(float)), cfg)


def test_empty_sets_no_tasks_and_an_empty_params_tree_are_refused(dev, setup):
    params, ep, cfg = setup
    for which in ("support", "query"):
        empty = ep._replace(**{f"{which}_x": dev.asarray(np.zeros((0, 3))),
                               f"{which}_y": dev.asarray(np.zeros(0, dtype=int))})
        with pytest.raises(ValueError, match=f"the {which} set is empty"):
            matching.loss(params, empty, cfg)
    no_tasks = Episode(*(dev.asarray(np.zeros((0,) + dev.to_host(a).shape, dev.to_host(a).dtype)) for a in ep))
    with pytest.raises(ValueError, match=r"holds no task \(T = 0\): support_x \(0, 4, 3\)"):
        matching.predict(params, no_tasks, cfg)
    with pytest.raises(ValueError, match="params is empty"):
        matching.init_state({}, config(embedding=NO_PARAMS))


def test_a_missing_or_extra_params_key_is_named(dev, setup):
    params, ep, cfg = setup
    without_scale = {k: v for k, v in params.items() if k != matching.LOG_SCALE}
    with pytest.raises(ValueError, match=r"missing \['attention.log_scale'\], unexpected \[\]"):
        matching.loss(without_scale, ep, cfg)
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \['attention.log_scale'\]"):
        matching.loss(params, ep, config(n_way=2, fce=True, read_steps=1))
    with pytest.raises(ValueError, match=r"params\['attention.log_scale'\] must have shape \(\); got \(1,\)"):
        matching.loss(dict(params, **{matching.LOG_SCALE: dev.asarray(np.zeros(1))}), ep, cfg)
    with pytest.raises(ValueError, match=r"state.optimizer.v do not match the model: missing "
                                         r"\['attention.log_scale'\]"):
        matching.step(params, State(optimizers.AdamState(0, params, without_scale), {}), ep, cfg)


def test_negative_learning_rates_and_out_of_range_settings_are_refused(dev, setup):
    params, ep, _ = setup
    with pytest.raises(ValueError, match=r"meta_lr must be a finite number >= 0; got -1\.0"):
        matching.MatchingConfig(meta_lr=-1)
    with pytest.raises(ValueError, match="read_steps must be an integer >= 0; got -1"):
        matching.MatchingConfig(read_steps=-1)
    for scale in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="attention_scale must be a finite number > 0"):
            matching.MatchingConfig(attention_scale=scale)
    with pytest.raises(ValueError, match="n_way must be an integer >= 2; got 1"):
        matching.MatchingConfig(n_way=1)
    with pytest.raises(ValueError, match=r"with fce, embedding_dim must be the embedding's output size d = 4; "
                                         r"got embedding_dim=5"):
        cfg = config(n_way=2, fce=True, embedding_dim=5)
        matching.loss(dev.tree(matching.init(np.random.default_rng(0), cfg)), ep, cfg)


def test_init_sizes_of_zero_negative_or_not_integers_are_refused():
    for value in (0, -3):
        with pytest.raises(ValueError, match=f"embedding_dim must be an integer >= 1; got {value}"):
            matching.MatchingConfig(embedding_dim=value)
    with pytest.raises(TypeError, match="embedding_dim must be an integer >= 1; got 4.0"):
        matching.MatchingConfig(embedding_dim=4.0)
    with pytest.raises(TypeError, match="read_steps must be an integer >= 0; got 1.5"):
        matching.MatchingConfig(read_steps=1.5)


def test_unknown_names_and_wrong_kinds_are_refused(setup):
    params, ep, cfg = setup
    with pytest.raises(ValueError, match="distance must be one of 'sqeuclidean', 'euclidean', 'cosine'; got 'dot'"):
        matching.MatchingConfig(distance="dot")
    with pytest.raises(ValueError, match="attention_h0 must be one of 'embedding', 'zeros'; got 'random'"):
        matching.MatchingConfig(attention_h0="random")
    with pytest.raises(ValueError, match="task_reduction must be one of 'mean', 'sum'; got 'max'"):
        matching.MatchingConfig(task_reduction="max")
    with pytest.raises(TypeError, match="fce must be True or False; got 1"):
        matching.MatchingConfig(fce=1)
    with pytest.raises(TypeError, match="learn_attention_scale must be True or False; got 'yes'"):
        matching.MatchingConfig(learn_attention_scale="yes")
    with pytest.raises(TypeError, match="attention_scale must be a finite number > 0; got 'big'"):
        matching.MatchingConfig(attention_scale="big")
    with pytest.raises(TypeError, match="embedding must be a Model; got function"):
        matching.MatchingConfig(embedding=smooth_embed)
    with pytest.raises(TypeError, match="config must be a MatchingConfig; got ProtoNetConfig"):
        matching.predict(params, ep, protonet.ProtoNetConfig())
    with pytest.raises(TypeError, match="rng must be a Generator; got RandomState"):
        matching.init(np.random.RandomState(0), cfg)
    with pytest.raises(TypeError, match=r"state must be a State; got dict"):
        matching.step(params, {}, ep, cfg)
