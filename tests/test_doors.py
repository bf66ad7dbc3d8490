"""The doors: configs store plain Python values, unknown choices are refused everywhere, and the
public helpers (trees, Omniglot, Lake's runs, gradient checks) check their arguments, so that
a bad one raises ValueError or TypeError saying what was expected, never an IndexError,
AttributeError or a scipy, Pillow or autograd message, and never a number."""

import dataclasses
import functools
import json

import numpy as np
import pytest

from refmeta import checks, contract, gradcheck, maml, matching, metanet, protonet, reptile, snail
from refmeta.data import lake_runs, omniglot
from refmeta.nn import losses, metanet_parts, models, trees

from helpers import omniglot_folder


# ----- configs -----
def tiny_mlp_model():
    return contract.supervised(functools.partial(models.mlp_init, sizes=(1, 3, 1)), models.mlp_apply,
                               functools.partial(losses.mse, check=False), "mlp 1-3-1")


NUMPY_FIELDS = {   # every config with numpy scalars in its integer, float and bool fields
    "maml": lambda: maml.MAMLConfig(n_way=np.int64(5), inner_lr=np.float32(0.01), inner_steps=np.int8(2),
                                    first_order=np.bool_(True), meta_lr=np.float32(1e-3)),
    "reptile": lambda: reptile.ReptileConfig(model=tiny_mlp_model(), inner_lr=np.float32(1e-3),
                                             inner_steps=np.int16(5), adam_b2=np.float32(0.999)),
    "protonet": lambda: protonet.ProtoNetConfig(n_way=np.int64(5), meta_lr=np.float32(1e-3),
                                                joint_embedding=np.bool_(False)),
    "matching": lambda: matching.MatchingConfig(n_way=np.int64(5), attention_scale=np.float32(2.0),
                                                read_steps=np.uint8(3)),
    "snail": lambda: snail.SNAILConfig(n_way=np.int8(64), k_shot=np.int8(2), meta_lr=np.float32(1e-3),
                                       train_shots=None, blocks=((np.str_("tc"), np.int32(4)),)),
    "metanet": lambda: metanet.MetaNetConfig(n_way=np.int64(5), grad_clip_norm=np.float32(10.0),
                                             fast_conv_blocks=np.int32(1)),
}


@pytest.mark.parametrize("name", sorted(NUMPY_FIELDS))
def test_configs_store_numpy_scalars_as_python_values(name):
    config = NUMPY_FIELDS[name]()
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        assert not isinstance(value, np.generic), (field.name, type(value))
    json.dumps(config.conventions())                 # the docs promise JSON


def test_an_int8_n_way_computes_in_python_ints():
    config = snail.SNAILConfig(n_way=np.int8(64), k_shot=2)
    assert config.sequence_length == 129 and type(config.sequence_length) is int
    assert config.blocks == snail.SNAILConfig().blocks


def test_float32_rates_are_float64_from_then_on():
    """Reptile's inner Adam with β's given as np.float32: the same numbers as with the Python floats
    of the same values (1 − β in float32 would differ by ~1e-8)."""
    rng = np.random.default_rng(0)
    episode = contract.Episode(*(rng.standard_normal((2, 3, 1)) for _ in range(4)))
    given = {"adam_b1": np.float32(0.3), "adam_b2": np.float32(0.999), "inner_lr": np.float32(0.1)}
    as_numpy = reptile.ReptileConfig(model=tiny_mlp_model(), inner_steps=3, **given)
    as_python = reptile.ReptileConfig(model=tiny_mlp_model(), inner_steps=3,
                                      **{k: float(v) for k, v in given.items()})
    assert as_numpy.adam_b2 == float(np.float32(0.999)) and type(as_numpy.adam_b2) is float
    params, empty = reptile.init(rng, as_numpy), contract.State(None, {})
    for name, value in reptile.step(params, empty, episode, as_numpy).params.items():
        np.testing.assert_array_equal(value, reptile.step(params, empty, episode, as_python).params[name])


@pytest.mark.parametrize("make, message", [
    (lambda: maml.MAMLConfig(inner_lr=10 ** 400), "inner_lr must be a finite number >= 0; got an "
                                                  "integer of about 401 digits"),
    (lambda: reptile.ReptileConfig(model=tiny_mlp_model(), meta_step_size=-10 ** 400),
     "meta_step_size must be a finite number >= 0; got an integer of about 401 digits"),
    (lambda: maml.MAMLConfig(inner_steps=10 ** 5000 * -1), "inner_steps must be an integer >= 0; "
                                                           "got an integer of about 5001 digits"),
])
def test_an_integer_beyond_float_range_is_a_clear_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ----- unknown choices -----
@pytest.mark.parametrize("call, name", [
    (lambda: protonet.pairwise_distance(np.ones((2, 3)), np.zeros((2, 3)), distance="l1"), "distance"),
    (lambda: matching.MatchingConfig(distance="l1"), "distance"),
    (lambda: metanet_parts.image_sides(3, "round"), "rounding"),
    (lambda: lake_runs.embedding_distance(lambda x: x, metric="bogus"), "metric"),
])
def test_unknown_choices_are_refused(call, name):
    with pytest.raises(ValueError, match=f"{name} must be one of .*; got '"):
        call()


# ----- the public helpers -----
@pytest.mark.parametrize("call, error, message", [
    (lambda: trees.sum_trees([]), ValueError, "sum of an empty list of trees"),
    (lambda: trees.sum_trees({"w": np.ones(2)}), TypeError, "trees must be a list or tuple; got dict"),
    (lambda: trees.take_task({"w": np.zeros((2, 3))}, 5), ValueError, r"t must be an integer in 0\.\.1; got 5"),
    (lambda: trees.take_task({"w": np.zeros((2, 3))}, -1), ValueError, r"t must be an integer in 0\.\.1; got -1"),
    (lambda: trees.take_task({"w": np.zeros((2, 3)), "b": np.zeros(3)}, 0), ValueError,
     "take_task needs leaves with one leading task axis"),
    (lambda: trees.scale([np.ones(2)], 2.0), TypeError, "the tree to scale must be a dict; got list"),
    (lambda: trees.scale({"w": np.ones(2)}, "2"), TypeError, "s must be a real number; got '2'"),
    (lambda: trees.interpolate({"w": np.ones(2)}, {"w": np.zeros(2)}, "0.5"), TypeError,
     "t must be a real number; got '0.5'"),
    (lambda: trees.interpolate({"w": np.ones(2)}, {"w": np.zeros(2)}, np.ones(2)), TypeError,
     "t must be a real number; got array"),
    (lambda: omniglot.sample_episode(None, np.zeros((5, 4, 8, 8)), 2, 1, 1), TypeError,
     "rng must be a Generator; got NoneType"),
    (lambda: omniglot.sample_episodes(None, np.zeros((5, 4, 8, 8)), 2, 2, 1, 1), TypeError,
     "rng must be a Generator; got NoneType"),
    (lambda: lake_runs.modified_hausdorff_distance(np.zeros((0, 2)), np.ones((3, 2))), ValueError,
     r"points_a must be a set of \(row, column\) points, shape \(n, 2\) with n >= 1; got \(0, 2\)"),
    (lambda: lake_runs.modified_hausdorff_distance(np.ones((3, 2)), np.ones(3)), ValueError,
     r"points_b must be a set of \(row, column\) points"),
    (lambda: lake_runs.embedding_distance(None), TypeError, "embed must be a function; got NoneType"),
    (lambda: gradcheck.check_grad(None, np.ones(3)), TypeError, "f must be a function; got NoneType"),
    (lambda: gradcheck.check_grad(lambda x: 2 * x, np.ones(3)), ValueError,
     r"f must return a real scalar \(a float\); got shape \(3,\)"),
    (lambda: gradcheck.check_grad(lambda x: np.sum(x) + 0j, np.ones(3)), TypeError,
     r"f must return a real scalar \(a float\); got dtype complex128"),
    (lambda: gradcheck.check_hvp(lambda x: 2 * x, np.ones(3)), ValueError, "f must return a real scalar"),
    (lambda: gradcheck.check_vjp("f", np.ones(3)), TypeError, "f must be a function; got str"),
    (lambda: gradcheck.numerical_grad(lambda x: x, np.ones(3)), ValueError, "f must return a real scalar"),
    (lambda: gradcheck.check_grad(np.sum, np.ones(3), grad_fn=3), TypeError,
     "grad_fn must be a function; got int"),
])
def test_public_helpers_check_their_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_omniglot_and_lake_runs_check_the_image_size():
    folder = omniglot_folder()
    with pytest.raises(TypeError, match="image_size must be an integer >= 1; got True"):
        omniglot.load_characters(folder / "images_background_small1.zip", image_size=True)
    with pytest.raises(ValueError, match="image_size must be an integer >= 1; got 0"):
        lake_runs.load_lake_runs(folder / "all_runs.zip", image_size=0)


def test_a_class_count_names_a_few_missing_classes_and_how_many():
    labels = np.zeros((1, 60), dtype=np.int64)
    with pytest.raises(ValueError, match=r"classes \[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, …\] \(49 classes\) "
                                         r"have none$"):
        checks.class_counts("support_y", labels, 50)
    with pytest.raises(ValueError, match=r"every class 0\.\.9999999 needs at least one example, "
                                         r"10000000 in all; a task has 3$"):
        checks.episode(contract.Episode(np.zeros((3, 1)), np.array([0, 1, 2]), np.zeros((1, 1)),
                                        np.array([0])), n_way=10 ** 7)


@pytest.mark.parametrize("labels, k_shot", [([[0, 1, 1, 2, 2, 0]], None), ([0, 1, 2, 2], None),
                                             ([[0, 0, 1, 1, 2, 2], [2, 2, 1, 1, 0, 0]], 2)])
def test_class_counts_accepts_what_it_should(labels, k_shot):
    checks.class_counts("support_y", np.array(labels), 3, k_shot)


def test_class_counts_counts_each_task_of_a_batch():
    with pytest.raises(ValueError, match=r"classes \[2\] have none"):
        checks.class_counts("support_y", np.array([[0, 1, 2, 2], [0, 1, 1, 0]]), 3)
    with pytest.raises(ValueError, match=r"got counts \[2, 1, 3\] \(first task\)"):
        checks.class_counts("support_y", np.array([[0, 0, 1, 2, 2, 2], [0, 0, 1, 1, 2, 2]]), 3, 2)
