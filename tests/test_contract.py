"""The one contract, held across all six algorithms at once (docs/architecture.md).

Every algorithm gets a tiny config for the same images and the same episode: a meta-batch of
two 2-way 1-shot tasks of 16×16 images (and the first task alone).  Then, for every algorithm:
the public names exist with the documented shape; ``conventions()`` is JSON; ``step`` returns a
``Step`` whose loss is ``loss`` at the starting params and whose State carries every piece of
the state (the optimizer's, the running batch-norm statistics) to the next step; each entry
point copies each label array to the host once; and every kind of bad input, at every entry
point that reads it, raises ValueError or TypeError: never a number, never an IndexError,
KeyError or numpy message.
"""

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import pytest

from refmeta import contract, maml, matching, metanet, protonet, reptile, snail
from refmeta.checks import episodes as episode_checks
from refmeta.nn import losses, models

N_WAY, SIDE = 2, 16


def conv4_classifier(batch_norm=False):
    """conv4 max-pool, 2 filters, a 2-class head and the cross-entropy: MAML's and Reptile's
    model; with ``batch_norm`` its running statistics are kept (a ``contract.BatchNorm``)."""
    init = functools.partial(models.conv4_init, in_channels=1, n_out=N_WAY, hidden=2,
                             variant="maxpool", image_size=SIDE)
    apply = functools.partial(models.conv4_apply, variant="maxpool")

    def apply_bn(params, x, running):
        if running is not None:
            return models.conv4_apply(params, x, "maxpool", "running", running), {}
        return models.conv4_apply(params, x, "maxpool", return_bn_moments=True)
    kept = contract.BatchNorm(lambda: models.conv4_bn_state(2), apply_bn) if batch_norm else None
    return contract.supervised(init, apply, functools.partial(losses.cross_entropy, check=False),
                               "conv4 max-pool 2 filters, 2-way, cross-entropy", kept)


def images(rng, lead, n):
    """x (*lead, n, 1, 16, 16) and class-major labels (*lead, n) with every class present."""
    y = np.broadcast_to(np.arange(n) % N_WAY, lead + (n,)).copy()
    return rng.standard_normal(lead + (n, 1, SIDE, SIDE)), y


def the_episode(rng):
    """The one episode every algorithm takes: two tasks, 2-way 1-shot, two queries each."""
    return contract.Episode(*images(rng, (2,), 2), *images(rng, (2,), 2))


EMBEDDING = protonet.conv4_embedding(hidden=2, image_size=SIDE)
# name -> (module, config)
ALGORITHMS = {
    "maml": (maml, maml.MAMLConfig(model=conv4_classifier(batch_norm=True), n_way=N_WAY,
                                   inner_steps=1, test_inner_steps=1)),
    "reptile": (reptile, reptile.ReptileConfig(model=conv4_classifier(), n_way=N_WAY, inner_steps=2,
                                               test_inner_steps=2, inner_optimizer="sgd")),
    "protonet": (protonet, protonet.ProtoNetConfig(EMBEDDING, n_way=N_WAY)),
    "matching": (matching, matching.MatchingConfig(EMBEDDING, 2, n_way=N_WAY, fce=True, read_steps=1)),
    "snail": (snail, snail.SNAILConfig(n_way=N_WAY, k_shot=1, blocks=(("attention", 2, 2), ("tc", 2)),
                                       embedding_dim=3, embedding_filters=2, image_size=SIDE)),
    "metanet": (metanet, metanet.MetaNetConfig(n_way=N_WAY, hidden=2, n_blocks=4,
                                               representation_chunks=2)),
}
NAMES = sorted(ALGORITHMS)
KEEPS_BN = {"maml", "protonet", "matching", "snail"}        # their networks' running statistics


def setup(name, dev, host_change=None):
    """(module, config, params, episode) on ``dev``; ``host_change`` edits the host episode first."""
    module, config = ALGORITHMS[name]
    rng = np.random.default_rng(0)
    params = dev.tree(module.init(rng, config))
    host = the_episode(rng)
    host = host if host_change is None else host_change(host)
    episode = host if not isinstance(host, contract.Episode) else \
        contract.Episode(*(dev.asarray(a) for a in host))
    return module, config, params, episode


@pytest.mark.parametrize("name", NAMES)
def test_every_algorithm_has_the_one_shape(name):
    module, config = ALGORITHMS[name]
    for function in ("init", "init_state", "loss", "step", "predict"):
        assert callable(getattr(module, function)), function
    assert (name in ("maml", "reptile")) == hasattr(module, "adapt")
    assert dataclasses.is_dataclass(config) and type(config).__dataclass_params__.frozen
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_way = 3
    assert config.conventions()["n_way"] == N_WAY
    json.dumps(config.conventions())
    assert any(f.name in ("meta_lr", "meta_step_size") for f in dataclasses.fields(config))


@pytest.mark.parametrize("name", NAMES)
def test_step_returns_a_step_whose_loss_is_loss_at_the_starting_params(name, dev):
    module, config, params, episode = setup(name, dev)
    result = module.step(params, module.init_state(params, config), episode, config)
    assert isinstance(result, contract.Step) and isinstance(result.state, contract.State)
    assert set(result.params) == set(params)
    if name == "reptile":                   # Reptile's step reports the support loss (its docstring)
        return
    # The same forward computation, once inside value_and_grad and once alone.
    np.testing.assert_allclose(float(result.loss), float(module.loss(params, episode, config)),
                               rtol=1e-13)


@pytest.mark.parametrize("name", NAMES)
def test_step_carries_every_piece_of_the_state(name, dev):
    """One State type everywhere: the optimizer's state (Adam's step, m, v; Reptile's None) and
    the running statistics of every kept batch norm ({} where none are kept).  A second step
    from the State the first returned differs from one taken from a fresh State, in the params
    (Adam reads its moments) and in the statistics (tracked from where the first step left them)."""
    module, config, params, episode = setup(name, dev)
    state = module.init_state(params, config)
    assert type(state) is contract.State
    assert (state.optimizer is None) == (name == "reptile")
    assert bool(state.bn) == (name in KEEPS_BN)
    first = module.step(params, state, episode, config)
    carried = module.step(first.params, first.state, episode, config)
    fresh = module.step(first.params, module.init_state(first.params, config), episode, config)
    host = lambda tree: {k: dev.to_host(v) for k, v in tree.items()}
    if name == "reptile":
        assert first.state == carried.state == contract.State(None, {})
        return
    assert (first.state.optimizer.step, carried.state.optimizer.step, fresh.state.optimizer.step) == (1, 2, 1)
    for moment in ("m", "v"):
        assert set(getattr(carried.state.optimizer, moment)) == set(params)
    assert any(not np.allclose(a, host(fresh.params)[k], rtol=1e-12, atol=0)
               for k, a in host(carried.params).items())
    assert set(first.state.bn) == set(carried.state.bn) == set(state.bn)
    for k, value in first.state.bn.items():
        assert dev.is_array(value)
        assert not np.allclose(dev.to_host(value), dev.to_host(state.bn[k]), rtol=1e-12, atol=0), k
        assert not np.allclose(dev.to_host(carried.state.bn[k]), dev.to_host(fresh.state.bn[k]),
                               rtol=1e-12, atol=0), k


@pytest.mark.parametrize("name", NAMES)
def test_one_task_alone_is_a_meta_batch_of_one(name, dev):
    """The first task without the task axis: the loss and predictions of a meta-batch of one."""
    module, config, params, episode = setup(name, dev)
    one = contract.Episode(*(field[0] for field in episode))
    batch_of_one = contract.Episode(*(field[:1] for field in episode))
    np.testing.assert_allclose(float(module.loss(params, one, config)),
                               float(module.loss(params, batch_of_one, config)), rtol=1e-13)
    alone, of_one = (dev.to_host(module.predict(params, e, config)) for e in (one, batch_of_one))
    assert alone.shape == of_one.shape[1:]
    np.testing.assert_allclose(alone, of_one[0], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name", sorted(KEEPS_BN))
def test_predict_reads_the_running_statistics_where_the_config_says_so(name, dev):
    """With batch norm in mode "running", ``predict`` needs the State and normalises by state.bn:
    statistics that differ give different outputs; in "transductive" mode they are not read."""
    module, config, params, episode = setup(name, dev)
    running = running_config(name, config)
    state = module.step(params, module.init_state(params, config), episode, config).state
    with pytest.raises(ValueError, match="state is required: batch norm in mode 'running'"):
        module.predict(params, episode, running)
    tracked = dev.to_host(module.predict(params, episode, running, state=state))
    moved = state._replace(bn={k: v * 2.0 if k.endswith("var") else v + 0.5 for k, v in state.bn.items()})
    assert not np.allclose(tracked, dev.to_host(module.predict(params, episode, running, state=moved)))
    np.testing.assert_array_equal(dev.to_host(module.predict(params, episode, config, state=moved)),
                                  dev.to_host(module.predict(params, episode, config)))


def running_config(name, config):
    """``config`` with its batch norm in mode "running"."""
    if name == "snail":
        return dataclasses.replace(config, bn_mode="running")
    field = "model" if name == "maml" else "embedding"
    model = getattr(config, field)
    return dataclasses.replace(config, **{field: model._replace(
        batch_norm=model.batch_norm._replace(mode="running"))})


@pytest.mark.parametrize("name", NAMES)
def test_each_entry_point_copies_each_label_array_to_the_host_once(name, dev, monkeypatch):
    module, config, params, episode = setup(name, dev)
    state = module.init_state(params, config)
    calls = []
    original = episode_checks.labels
    monkeypatch.setattr(episode_checks, "labels", lambda *a, **k: calls.append(a[0]) or original(*a, **k))
    for call in (lambda: module.loss(params, episode, config),
                 lambda: module.predict(params, episode, config),
                 lambda: module.step(params, state, episode, config)):
        calls.clear()
        call()
        assert sorted(calls) == ["query_y", "support_y"], calls


# ----- bad input: each kind, at every entry point that reads it -----
def set_first(field, value):
    """The host episode with the first entry of ``field`` set to ``value``."""
    def change(episode):
        array = np.array(getattr(episode, field))
        array.reshape(-1)[0] = value
        return episode._replace(**{field: array})
    return change


def without_queries(episode):
    n_label_axes = episode.query_y.ndim
    empty = (slice(None),) * (n_label_axes - 1) + (slice(0, 0),)
    return episode._replace(query_x=episode.query_x[empty], query_y=episode.query_y[empty])


BAD_EPISODES = {
    "NaN in support_x": (set_first("support_x", np.nan), "support_x contains NaN or inf"),
    "inf in query_x": (set_first("query_x", np.inf), "query_x contains NaN or inf"),
    "a support label = n_way": (set_first("support_y", N_WAY), r"labels must be in 0\.\.1"),
    "a negative query label": (set_first("query_y", -1), r"labels must be in 0\.\.1"),
    "float labels": (lambda ep: ep._replace(query_y=ep.query_y * 1.0), "class labels must be integers"),
    "an empty query set": (without_queries, "the query set is empty"),
    "not an Episode": (lambda ep: {"support_x": ep.support_x}, "expected an Episode"),
}


@pytest.mark.parametrize("bad", sorted(BAD_EPISODES))
@pytest.mark.parametrize("name", NAMES)
def test_a_bad_episode_is_refused_by_every_entry_point(name, bad, dev):
    make, message = BAD_EPISODES[bad]
    module, config, params, broken = setup(name, dev, make)
    state = module.init_state(params, config)
    entries = [lambda: module.loss(params, broken, config), lambda: module.predict(params, broken, config),
               lambda: module.step(params, state, broken, config)]
    if hasattr(module, "adapt"):
        entries.append(lambda: module.adapt(params, broken, config))
    for entry in entries:
        with pytest.raises((ValueError, TypeError), match=message):
            entry()


def drop_a_key(params):
    return {k: v for k, v in list(params.items())[1:]}


BAD_PARAMS = {
    "an empty params tree": (lambda p: {}, "params is empty"),
    "a missing key": (lambda p: drop_a_key(p), r"missing \['"),
    "an extra key": (lambda p: {**p, "stray.w": next(iter(p.values()))}, r"unexpected \['stray.w'\]"),
    "a leaf of the wrong shape": (lambda p: {**p, sorted(p)[0]: p[sorted(p)[0]][..., None]}, "must have shape"),
    "NaN in a leaf": (lambda p: {**p, sorted(p)[-1]: p[sorted(p)[-1]] * np.nan}, "contains NaN or inf"),
    "not a dict": (lambda p: list(p.values()), "must be a dict"),
}


@pytest.mark.parametrize("bad", sorted(BAD_PARAMS))
@pytest.mark.parametrize("name", NAMES)
def test_bad_params_are_refused_by_every_entry_point(name, bad, dev):
    module, config, params, episode = setup(name, dev)
    state = module.init_state(params, config)
    make, message = BAD_PARAMS[bad]
    broken = make(params)
    for entry in (lambda: module.loss(broken, episode, config),
                  lambda: module.predict(broken, episode, config),
                  lambda: module.step(broken, state, episode, config),
                  lambda: module.init_state(broken, config)):
        with pytest.raises((ValueError, TypeError), match=message):
            entry()


@pytest.mark.parametrize("name", NAMES)
def test_a_wrong_config_rng_or_state_is_refused(name, dev):
    module, config, params, episode = setup(name, dev)
    other = ALGORITHMS["protonet" if name != "protonet" else "maml"][1]
    with pytest.raises(TypeError, match="config must be a"):
        module.loss(params, episode, other)
    with pytest.raises(TypeError, match="rng must be a Generator"):
        module.init(np.random.RandomState(0), config)
    with pytest.raises(TypeError, match="config must be a"):
        module.init(np.random.default_rng(0), other)
    with pytest.raises((ValueError, TypeError)):
        module.step(params, "not a state", episode, config)
    with pytest.raises(TypeError, match="state must be a State; got NoneType"):
        module.step(params, None, episode, config)
    with pytest.raises((ValueError, TypeError), match="state.optimizer"):
        module.step(params, module.init_state(params, config)._replace(optimizer="Adam?"), episode, config)


@pytest.mark.parametrize("field, value", [("meta_lr", -1e-3), ("meta_lr", float("nan")),
                                          ("n_way", 1), ("n_way", 2.0), ("n_way", True)])
@pytest.mark.parametrize("name", NAMES)
def test_configs_refuse_out_of_range_fields(name, field, value):
    module, config = ALGORITHMS[name]
    if field == "meta_lr" and name == "reptile":
        field = "meta_step_size"
    with pytest.raises((ValueError, TypeError), match=field):
        dataclasses.replace(config, **{field: value})


def test_the_readme_example_of_the_one_shape_runs():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["log_p"].shape == (5, 5) and np.isfinite(float(namespace["loss"]))


@pytest.mark.parametrize("name", NAMES)
def test_a_float32_step_stays_float32(name, dev):
    """The Omniglot demos train in float32: a step from float32 params and images returns float32
    params, statistics, optimizer moments and loss, on every device (a float64 constant anywhere
    in a layer, a loss or a VJP would promote them, and the demos would run in float64)."""
    module, config, params, episode = setup(name, dev)
    in32 = lambda a: dev.asarray(dev.to_host(a).astype(np.float32))
    params = {k: in32(v) for k, v in params.items()}
    episode = contract.Episode(in32(episode.support_x), episode.support_y, in32(episode.query_x),
                               episode.query_y)
    state = module.init_state(params, config)
    for _ in range(2):                                       # the second step reads the first's State
        params, state, loss = module.step(params, state, episode, config)
    arrays = {"loss": loss, **params, **{f"state.bn {k}": v for k, v in state.bn.items()}}
    if state.optimizer is not None:
        arrays.update({f"Adam {m} {k}": v for m in ("m", "v")
                       for k, v in getattr(state.optimizer, m).items()})
    for what, array in arrays.items():
        assert dev.is_array(array) and array.dtype == np.float32, (what, type(array), array.dtype)
