"""The one contract, held across all six algorithms at once (docs/architecture.md).

Each algorithm gets a tiny classification config and one episode.  Then, for every algorithm:
the public names exist with the documented shape; ``conventions()`` is JSON; ``step`` returns a
``Step`` whose loss is ``loss`` at the starting params; each entry point copies each label array
to the host once; and every kind of bad input, at every entry point that reads it, raises
ValueError or TypeError: never a number, never an IndexError, KeyError or numpy message.
"""

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import pytest

from refmeta import checks, contract, maml, matching, metanet, protonet, reptile, snail
from refmeta.nn import losses, models

N_WAY = 2


def mlp_classifier():
    """A 2-input, 2-class tanh MLP with the cross-entropy: MAML's and Reptile's model."""
    return contract.supervised(functools.partial(models.mlp_init, sizes=(2, 3, N_WAY)),
                               functools.partial(models.mlp_apply, activation="tanh"),
                               functools.partial(losses.cross_entropy, check=False),
                               "mlp 2-3-2 tanh, cross-entropy")


def tanh_embedding():
    return contract.Model(functools.partial(models.mlp_init, sizes=(2, 3)),
                          functools.partial(models.mlp_apply, activation="tanh"), None,
                          "tanh layer 2 -> 3")


def vectors(rng, lead, n):
    """x (*lead, n, 2) and class-major labels (*lead, n) with every class present."""
    y = np.broadcast_to(np.arange(n) % N_WAY, lead + (n,)).copy()
    return rng.standard_normal(lead + (n, 2)), y


def images(rng, lead, n, side):
    y = np.broadcast_to(np.arange(n) % N_WAY, lead + (n,)).copy()
    return rng.standard_normal(lead + (n, 1, side, side)), y


# name -> (module, config, episode maker (rng) -> host arrays, has Adam state)
ALGORITHMS = {
    "maml": (maml, maml.MAMLConfig(model=mlp_classifier(), n_way=N_WAY, inner_steps=2),
             lambda rng: (*vectors(rng, (2,), 4), *vectors(rng, (2,), 2))),
    "reptile": (reptile, reptile.ReptileConfig(model=mlp_classifier(), n_way=N_WAY, inner_steps=2,
                                               test_inner_steps=2, inner_optimizer="sgd"),
                lambda rng: (*vectors(rng, (2,), 4), *vectors(rng, (2,), 2))),
    "protonet": (protonet, protonet.ProtoNetConfig(tanh_embedding(), n_way=N_WAY),
                 lambda rng: (*vectors(rng, (), 4), *vectors(rng, (), 2))),
    "matching": (matching, matching.MatchingConfig(tanh_embedding(), 3, n_way=N_WAY, fce=True,
                                                   read_steps=1),
                 lambda rng: (*vectors(rng, (), 4), *vectors(rng, (), 2))),
    "snail": (snail, snail.SNAILConfig(n_way=N_WAY, k_shot=1, blocks=(("attention", 2, 2), ("tc", 2)),
                                       embedding_dim=3, embedding_filters=2, image_size=16),
              lambda rng: (*images(rng, (), 2, 16), *images(rng, (), 2, 16))),
    "metanet": (metanet, metanet.MetaNetConfig(n_way=N_WAY, hidden=2, n_blocks=3,
                                               representation_chunks=2),
                lambda rng: (*images(rng, (), 2, 8), *images(rng, (), 2, 8))),
}
NAMES = sorted(ALGORITHMS)


def setup(name, dev, host_change=None):
    """(module, config, params, episode) on ``dev``; ``host_change`` edits the host episode first."""
    module, config, make = ALGORITHMS[name]
    rng = np.random.default_rng(0)
    params = dev.tree(module.init(rng, config))
    host = contract.Episode(*make(rng))
    host = host if host_change is None else host_change(host)
    episode = host if not isinstance(host, contract.Episode) else \
        contract.Episode(*(dev.asarray(a) for a in host))
    return module, config, params, episode


@pytest.mark.parametrize("name", NAMES)
def test_every_algorithm_has_the_one_shape(name):
    module, config, _ = ALGORITHMS[name]
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
    assert isinstance(result, contract.Step)
    assert set(result.params) == set(params)
    if name == "reptile":                   # Reptile's step reports the support loss (its docstring)
        return
    # The same forward computation, once inside value_and_grad and once alone.
    np.testing.assert_allclose(float(result.loss), float(module.loss(params, episode, config)),
                               rtol=1e-13)


@pytest.mark.parametrize("name", NAMES)
def test_each_entry_point_copies_each_label_array_to_the_host_once(name, dev, monkeypatch):
    module, config, params, episode = setup(name, dev)
    state = module.init_state(params, config)
    calls = []
    original = checks.labels
    monkeypatch.setattr(checks, "labels", lambda *a, **k: calls.append(a[0]) or original(*a, **k))
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
    if name != "reptile":                  # Reptile's state is None; everyone else's is not
        with pytest.raises((ValueError, TypeError)):
            module.step(params, None, episode, config)


@pytest.mark.parametrize("field, value", [("meta_lr", -1e-3), ("meta_lr", float("nan")),
                                          ("n_way", 1), ("n_way", 2.0), ("n_way", True)])
@pytest.mark.parametrize("name", NAMES)
def test_configs_refuse_out_of_range_fields(name, field, value):
    module, config, _ = ALGORITHMS[name]
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
