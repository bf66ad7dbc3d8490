"""A user's model that breaks its contract, or makes a NaN, is named; never a NaN returned.

refmeta cannot check a model in advance.  What a model returns is held to the contract where
it returns it (real floats; one loss per task; one vector per example; an init that returns a
dict), and each entry point reads once whether its results are finite.  When they are not,
it recomputes and names the first NaN or inf: a support loss, a gradient or an inner update
at inner step j, the embeddings; ``step`` takes no step.  The NaNs here are made by real
mistakes: the log of a prediction that an inner step drives negative, the gradient of a norm
at zero, the Euclidean distance where a query equals its class's only support example, an
embedding that takes the log of pixels.
"""

import dataclasses
import re

import autograd.numpy as anp
import numpy as np
import pytest

from refmeta import checks, contract, maml, matching, protonet, reptile
from refmeta.checks import results as result_checks
from refmeta.nn import losses, models


# ----- the models -----
def log_space_regression(init_w=4.0):
    """y ≈ w·x fitted in log space, log(w·x) − log(y): NaN once a step drives w below 0."""
    def loss(params, x, y, reduction):
        residual = anp.log(scaled(params, x)) - anp.log(y)                  # (T, n, 1)
        return losses.reduce(anp.sum(residual ** 2, axis=-1), reduction)
    return contract.Model(lambda rng: {"w": np.full((1,), init_w)}, scaled, loss, "log-space w·x")


def scaled(params, x):
    """w·x for w (..., 1) and x (..., n, 1)."""
    return x * params["w"][..., None, :]


def norm_penalty():
    """mse + ‖w‖ written as sqrt(Σ w²): its gradient at w = 0 is 0/0."""
    def loss(params, x, y, reduction):
        mse = losses.mse(scaled(params, x), y, reduction, check=False)
        return mse + anp.sqrt(anp.sum(params["w"] ** 2, axis=-1))
    return contract.Model(lambda rng: {"w": np.zeros((1,))}, scaled, loss, "w·x with a norm penalty")


def positive_episode(n_tasks=2, n=3):
    rng = np.random.default_rng(0)
    return contract.Episode(*(rng.uniform(1.0, 2.0, size=(n_tasks, n, 1)) for _ in range(4)))


def wrapped(transform, name):
    """The tiny MLP regression model with its loss passed through ``transform``."""
    base = maml.SINUSOID_MLP
    return contract.Model(base.init, base.apply,
                          lambda p, x, y, r: transform(base.loss(p, x, y, r)), name)


def configs(model, **fields):
    """MAML, batched Reptile and serial Reptile on ``model``."""
    return {"maml": (maml, maml.MAMLConfig(model=model, **fields)),
            "reptile batched": (reptile, reptile.ReptileConfig(model=model, inner_optimizer="sgd",
                                                               **fields)),
            "reptile serial": (reptile, reptile.ReptileConfig(model=model, inner_optimizer="sgd",
                                                              variant="serial", **fields))}


def entry_points(module, params, episode, config):
    state = module.init_state(params, config)
    calls = {"loss": lambda: module.loss(params, episode, config),
             "step": lambda: module.step(params, state, episode, config),
             "adapt": lambda: module.adapt(params, episode, config),
             "predict": lambda: module.predict(params, episode, config)}
    if module is maml:
        calls["meta_gradient"] = lambda: maml.meta_gradient(params, episode, config)
    return calls


# ----- the contract -----
BAD_LOSSES = {
    "(T, 3)": (lambda l: anp.stack([l, l, l], axis=-1), ValueError,
               r"must return one loss per task, shape \(2,\); got \(2, 3\)"),
    "a scalar": (lambda l: anp.sum(l), ValueError, r"must return one loss per task, shape \(2,\); got \(\)"),
    "complex": (lambda l: l + 0j, TypeError, "must return real floating-point losses, one per task; "
                                             "got dtype complex128"),
    "integer": (lambda l: np.ones(2, dtype=int), TypeError, "must return real floating-point losses, "
                                                             "one per task; got dtype int64"),
}


@pytest.mark.parametrize("algorithm", ["maml", "reptile batched", "reptile serial"])
@pytest.mark.parametrize("bad", sorted(BAD_LOSSES))
def test_a_loss_of_the_wrong_kind_or_shape_is_named_by_the_contract(algorithm, bad):
    transform, error, message = BAD_LOSSES[bad]
    module, config = configs(wrapped(transform, bad), inner_steps=1, test_inner_steps=1)[algorithm]
    params = module.init(np.random.default_rng(0), config)
    for call in entry_points(module, params, positive_episode(), config).values():
        with pytest.raises(error, match=r"config\.model\.loss\(params, x, y, reduction\) " + message):
            call()


def returns_a_list(rng):
    return [rng.standard_normal(3)]


@pytest.mark.parametrize("module, config", [
    (maml, maml.MAMLConfig(model=contract.Model(returns_a_list, models.mlp_apply,
                                                maml.SINUSOID_MLP.loss, "list"))),
    (reptile, reptile.ReptileConfig(model=contract.Model(returns_a_list, models.mlp_apply,
                                                         maml.SINUSOID_MLP.loss, "list"))),
    (protonet, protonet.ProtoNetConfig(contract.Model(returns_a_list, models.mlp_apply, None, "list"))),
    (matching, matching.MatchingConfig(contract.Model(returns_a_list, models.mlp_apply, None, "list"))),
])
def test_an_init_that_returns_a_list_is_named(module, config):
    with pytest.raises(TypeError, match=r"init\(rng\) must return the params, a dict of "
                                        r"floating-point arrays; got list"):
        module.init(np.random.default_rng(0), config)
    if module in (maml, reptile):                       # init_state checks params against init's
        with pytest.raises(TypeError, match="must return the params, a dict"):
            module.init_state({"w": np.zeros(3)}, config)


def flat_embedding():
    """x (..., n, 2) -> (..., n): a vector per episode instead of one per example."""
    return contract.Model(lambda rng: {"w": rng.standard_normal(2)},
                          lambda p, x: anp.sum(x * p["w"], axis=-1), None, "one number per example")


@pytest.mark.parametrize("module, config", [
    (protonet, protonet.ProtoNetConfig(flat_embedding(), n_way=2)),
    (matching, matching.MatchingConfig(flat_embedding(), 1, n_way=2)),
])
def test_an_embedding_of_shape_n_is_named(module, config):
    rng = np.random.default_rng(0)
    episode = contract.Episode(rng.standard_normal((4, 2)), np.array([0, 1, 0, 1]),
                               rng.standard_normal((2, 2)), np.array([0, 1]))
    params = module.init(rng, config)
    state = module.init_state(params, config)
    for call in (lambda: module.loss(params, episode, config),
                 lambda: module.predict(params, episode, config),
                 lambda: module.step(params, state, episode, config)):
        with pytest.raises(ValueError, match=r"config\.embedding\.apply\(params, x\) must return one "
                                             r"vector per example, shape \(6, d\) with d >= 1; got \(6,\)"):
            call()


# ----- NaN and inf -----
@pytest.mark.parametrize("algorithm", ["maml", "reptile batched", "reptile serial"])
def test_a_nan_made_at_the_second_inner_step_is_named_with_its_step(algorithm, dev):
    # w = 4 is 4 times too large: ∇ ≈ 2 log(4) / 4 ≈ 0.7, so one step of lr 10 takes w below 0
    # and the log of the prediction is NaN at inner step 2.
    module, config = configs(log_space_regression(), inner_lr=10.0, inner_steps=3,
                             test_inner_steps=3)[algorithm]
    params = dev.tree(module.init(np.random.default_rng(0), config))
    episode = contract.Episode(*(dev.asarray(a) for a in positive_episode()))
    for name, call in entry_points(module, params, episode, config).items():
        if algorithm == "maml":
            where = "config.model.loss on the support sets at inner step 2 holds nan at [0]"
        elif algorithm == "reptile serial" and name == "step":     # task by task, as it computed
            where = "config.model.loss on the support set of task 0 at inner step 2 is nan"
        else:
            where = "config.model.loss on the support sets, Σ_i, at inner step 2 is nan"
        not_taken = ("" if name != "step" else
                     " (Adam step 1, not taken)" if algorithm == "maml" else " (not taken)")
        prefix = f"{'maml' if algorithm == 'maml' else 'reptile'}.{name}{not_taken}: "
        with np.errstate(invalid="ignore"), pytest.raises(ValueError, match=re.escape(prefix + where) + "$"):
            call()


@pytest.mark.parametrize("algorithm, message", [
    ("maml", "the inner update θ − α∇L^S of 'w' at inner step 1 holds nan at [0, 0]"),
    ("reptile batched", "its gradient for 'w' at inner step 1 holds nan at [0, 0]"),
    ("reptile serial", "its gradient for 'w' at inner step 1 of task 0 holds nan at [0, 0]"),
], ids=["maml", "reptile batched", "reptile serial"])
def test_a_nan_gradient_under_a_finite_loss_names_the_parameter(algorithm, message, dev):
    module, config = configs(norm_penalty(), inner_steps=1)[algorithm]
    params = dev.tree(module.init(np.random.default_rng(0), config))
    episode = contract.Episode(*(dev.asarray(a) for a in positive_episode()))
    assert np.isfinite(float(reptile.loss(params, episode, reptile.ReptileConfig(
        model=norm_penalty(), inner_steps=0))))                             # the loss is finite
    state = module.init_state(params, config)
    with np.errstate(divide="ignore", invalid="ignore"), pytest.raises(ValueError,
                                                                       match=re.escape(message) + "$"):
        module.step(params, state, episode, config)


def test_protonet_names_an_embedding_that_makes_nan(dev):
    """An embedding that takes the log of its inputs, fed pixels centred on zero."""
    embedding = contract.Model(lambda rng: {"w": rng.standard_normal((2, 3))},
                               lambda p, x: anp.matmul(anp.log(x), p["w"]), None, "log then linear")
    config = protonet.ProtoNetConfig(embedding, n_way=2)
    rng = np.random.default_rng(0)
    episode = contract.Episode(dev.asarray(rng.standard_normal((4, 2))), dev.asarray(np.array([0, 1, 0, 1])),
                               dev.asarray(rng.standard_normal((2, 2))), dev.asarray(np.array([0, 1])))
    params = dev.tree(protonet.init(rng, config))
    state = protonet.init_state(params, config)
    for name, call in (("loss", lambda: protonet.loss(params, episode, config)),
                       ("predict", lambda: protonet.predict(params, episode, config)),
                       ("step (Adam step 1, not taken)",
                        lambda: protonet.step(params, state, episode, config))):
        with np.errstate(invalid="ignore"):
            with pytest.raises(ValueError, match=re.escape(f"protonet.{name}: config.embedding.apply "
                                                           "on the support set holds nan at [")):
                call()


def test_protonet_step_names_the_nan_gradient_of_the_euclidean_distance_at_zero(dev):
    """1-shot with the Euclidean distance: a query equal to its class's only support example has
    d = 0, where ‖z − c‖'s gradient is 0/0; the loss is finite, the step is not taken."""
    identity = contract.Model(lambda rng: {"scale": np.ones(1)}, lambda p, x: x * p["scale"], None,
                              "scaled identity")
    config = protonet.ProtoNetConfig(identity, n_way=2, distance="euclidean")
    support = np.array([[0.0, 1.0], [1.0, 0.0]])
    episode = contract.Episode(dev.asarray(support), dev.asarray(np.array([0, 1])),
                               dev.asarray(support[:1]), dev.asarray(np.array([0])))
    params = dev.tree(protonet.init(np.random.default_rng(0), config))
    assert np.isfinite(float(protonet.loss(params, episode, config)))
    with np.errstate(divide="ignore", invalid="ignore"), pytest.raises(
            ValueError, match=re.escape("protonet.step (Adam step 1, not taken): the gradient "
                                        "['scale'] holds nan at [0]")):
        protonet.step(params, protonet.init_state(params, config), episode, config)


@pytest.mark.parametrize("algorithm", ["maml", "reptile batched"])
def test_the_success_path_reads_finiteness_once_per_call(algorithm, monkeypatch):
    module, config = configs(maml.SINUSOID_MLP, inner_steps=2, test_inner_steps=2)[algorithm]
    params = module.init(np.random.default_rng(0), config)
    reads, original = [], result_checks.all_finite
    monkeypatch.setattr(result_checks, "all_finite", lambda *a: reads.append(1) or original(*a))
    monkeypatch.setattr(result_checks, "first_non_finite", lambda *a: pytest.fail("a failure path ran"))
    rng = np.random.default_rng(1)
    episode = contract.Episode(*(rng.standard_normal((2, 3, 1)) for _ in range(4)))
    for name, call in entry_points(module, params, episode, config).items():
        reads.clear()
        call()
        assert reads == [1], name


def test_an_adapted_model_stays_exactly_what_the_trajectory_ends_with(dev):
    """adapt keeps only the current params: the same numbers as the kept trajectory's last."""
    config = maml.MAMLConfig(inner_steps=1, test_inner_steps=4)
    params = dev.tree(maml.init(np.random.default_rng(0), config))
    rng = np.random.default_rng(1)
    episode = contract.Episode(*(dev.asarray(rng.standard_normal((2, 3, 1))) for _ in range(4)))
    adapted = maml.adapt(params, episode, config)
    trajectory = maml.adapt_trajectory({k: anp.broadcast_to(v, (2,) + v.shape) for k, v in params.items()},
                                       episode.support_x, episode.support_y, config, steps=4)
    for name in params:
        np.testing.assert_array_equal(dev.to_host(adapted[name]), dev.to_host(trajectory[-1][name]))
    r_config = reptile.ReptileConfig(model=maml.SINUSOID_MLP, test_inner_steps=4)
    r_adapted = reptile.adapt(params, episode, r_config)
    r_trajectory = reptile.adapt_trajectory({k: anp.broadcast_to(v, (2,) + v.shape) for k, v in params.items()},
                                            episode.support_x, episode.support_y, r_config, steps=4)
    assert len(r_trajectory) == 5
    for name in params:
        np.testing.assert_array_equal(dev.to_host(r_adapted[name]), dev.to_host(r_trajectory[-1][name]))


@pytest.mark.parametrize("name, message", [
    ("maml", "config.model.loss on the support sets at inner step 1 holds nan at [0]"),
    ("protonet", "config.embedding.apply on the support set holds nan at [0, 0, 0]"),
    ("matching", "g′, config.embedding.apply on the support set holds nan at [0, 0, 0]"),
    ("snail", "f(support_x), the support embeddings holds nan at [0, 0, 0]"),
    ("metanet", "in task 0, meta_info['task'] ['conv0.w'] holds nan at [0, 0, 0, 0, 0]"),
])
def test_a_diverging_run_stops_at_the_step_that_makes_nan(name, message, dev):
    """meta_lr 1e300: Adam's first step moves every param by ~1e300, and the second step's
    support pass (the conv nets' first NaN) or loss overflows.  That step is refused, named, and
    not taken."""
    from test_contract import setup
    module, config, params, episode = setup(name, dev)
    config = dataclasses.replace(config, meta_lr=1e300)
    params, state, _ = module.step(params, module.init_state(params, config), episode, config)
    with np.errstate(all="ignore"), pytest.raises(
            ValueError, match=re.escape(f"{name}.step (Adam step 2, not taken): {message}") + "$"):
        module.step(params, state, episode, config)


@pytest.mark.parametrize("name", ["maml", "protonet", "matching", "snail", "metanet"])
def test_loss_and_predict_name_the_first_nan_of_a_diverged_run(name, dev):
    """The params a meta_lr of 1e300 leaves after one step: ``loss`` and ``predict`` read their
    results once, as ``step`` does, and name the first NaN instead of returning it."""
    from test_contract import setup
    module, config, params, episode = setup(name, dev)
    config = dataclasses.replace(config, meta_lr=1e300)
    params, state, _ = module.step(params, module.init_state(params, config), episode, config)
    for entry in ("loss", "predict"):
        with np.errstate(all="ignore"), pytest.raises(checks.NotFinite, match=re.escape(f"{name}.{entry}: ")):
            getattr(module, entry)(params, episode, config, state=state)


@pytest.mark.parametrize("name", ["maml", "reptile", "protonet", "matching", "snail", "metanet"])
def test_loss_and_predict_read_their_results_once(name, dev, monkeypatch):
    """The success path of every algorithm's ``loss`` and ``predict``: one finiteness read."""
    from test_contract import setup
    module, config, params, episode = setup(name, dev)
    state = module.init_state(params, config)
    reads, original = [], result_checks.all_finite
    monkeypatch.setattr(result_checks, "all_finite", lambda *a: reads.append(1) or original(*a))
    monkeypatch.setattr(result_checks, "first_non_finite", lambda *a: pytest.fail("a failure path ran"))
    for entry in ("loss", "predict"):
        reads.clear()
        getattr(module, entry)(params, episode, config, state=state)
        assert reads == [1], entry
