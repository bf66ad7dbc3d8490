"""Every reference case is well posed: an implementation that differs from refmeta only by
rounding passes it.  Moving every float input by a relative 1e-13 keeps every output within a
hundredth of its tolerance (on numpy and on the strict device), the JSON records that spread,
no kink's input is zero up to rounding, and the checks fail on the MetaNet design that broke
them."""

import functools
import io
import json

import numpy as np
import pytest

from refmeta import cases
from refmeta.cases import meta_networks, parts, wellposed
from refmeta.nn import kinks, layers, models, pool

ALL = list(cases.CASES)


@functools.lru_cache(maxsize=None)
def _built(case_id):
    case = cases.build(case_id)
    document = json.loads(cases.encode(case_id, case)[0])
    return cases.recipe(case_id), case, parts.tolerances(case["outputs"]), document


@pytest.fixture
def built():
    """{case id: (recipe, built case, tolerances, JSON document)}: each case is built once per
    test run, whatever order the devices run the tests in."""
    return {case_id: _built(case_id) for case_id in ALL}


def _moved_outputs(recipe, seed, dev):
    values = {name: dev.asarray(value) for name, value in wellposed.perturbed(recipe.inputs, seed).items()}
    return recipe.outputs(values)


@pytest.mark.parametrize("case_id", ALL)
def test_inputs_moved_by_1e_13_move_every_output_by_under_a_hundredth_of_its_tolerance(case_id, dev, built):
    recipe, case, tolerances, document = built[case_id]
    worst = {}
    for seed in wellposed.SEEDS:
        changes = wellposed.changes(case["outputs"], _moved_outputs(recipe, seed, dev), tolerances)
        outside = {name: f"{fraction:.3g}× its tolerance" for name, (_, fraction) in changes.items()
                   if fraction > 1}
        assert not outside, f"seed {seed}: {outside}"                      # the property itself
        loose = {name: f"{fraction:.3g}" for name, (_, fraction) in changes.items()
                 if fraction > 1 / wellposed.SPREAD_FACTOR}
        assert not loose, f"seed {seed}: tolerances less than 100× the change: {loose}"
        for name, (largest, fraction) in changes.items():
            before = worst.get(name, (0.0, 0.0))
            worst[name] = (max(before[0], largest), max(before[1], fraction))
    if dev.name == "numpy":                 # the JSON records exactly this run's spreads
        recorded = {name: entry["perturbation_spread"] for name, entry in document["outputs"].items()}
        assert recorded == {name: {"max_abs": wellposed.round_up(largest),
                                   "fraction_of_allowed": wellposed.round_up(fraction)}
                            for name, (largest, fraction) in worst.items()}


@pytest.mark.parametrize("case_id", ALL)
def test_the_json_records_every_outputs_spread_and_each_tolerance_is_100_times_it(case_id, built):
    _, _, _, document = built[case_id]
    ratios = {}
    for name, entry in document["outputs"].items():
        spread = entry["perturbation_spread"]
        assert spread["max_abs"] >= 0 and spread["fraction_of_allowed"] >= 0
        assert spread["fraction_of_allowed"] * wellposed.SPREAD_FACTOR <= 1, (name, spread)
        ratios[name] = 1 / spread["fraction_of_allowed"] if spread["fraction_of_allowed"] else np.inf
    record = document["well_posed"]
    assert record["relative_move"] == wellposed.RELATIVE_MOVE and record["seeds"] == list(wellposed.SEEDS)
    assert record["smallest_tolerance_over_spread"] <= min(ratios.values()) * 1.01
    assert record["smallest_tolerance_over_spread"] >= wellposed.SPREAD_FACTOR


@pytest.mark.parametrize("case_id", ALL)
def test_every_kink_a_case_passes_keeps_its_margin_and_the_json_says_so(case_id, built):
    _, case, _, document = built[case_id]
    record = document["well_posed"]["kinks"]
    expected = {"relu"} if case_id.startswith("maml") else set()
    if case_id.startswith(("protonet", "matching", "snail", "metanet")):
        expected = {"relu", "max_pool"} | ({"floor"} if case_id.startswith("matching") else set()) | \
                   ({"switch"} if case_id.startswith("metanet") else set())
    assert set(record["by_kind"]) == expected
    for kind, entry in record["by_kind"].items():
        assert entry["calls"] > 0 and entry["smallest_margin"] >= wellposed.MIN_KINK_MARGIN, kind
    if expected:
        assert record["smallest_margin"] == min(e["smallest_margin"] for e in record["by_kind"].values())
    else:
        assert record["smallest_margin"] is None


@pytest.mark.parametrize("case_id", ["matching-conv4-3way2shot", "metanet-4way1shot-chunks2-first-order"])
def test_the_kinks_are_watched_on_any_device_with_the_same_margins(case_id, dev, built):
    recipe, _, _, document = built[case_id]
    with kinks.recording() as found:
        recipe.outputs({name: dev.asarray(array.value) for name, array in recipe.inputs.items()})
    assert wellposed.kink_summary(found) == document["well_posed"]["kinks"]


def _relu_with_derivative_one_at_zero(x):
    kinks.relu(x)
    return x * (x >= 0)


def _ties_to_the_second(first, second):
    """pool.second_wins, but a tie goes to the second of a pair: the last maximum of a window."""
    return second >= first


def _swap_the_kink_conventions(monkeypatch):
    """relu′(0) = 1 instead of 0 (in layers and in the models built from its names), max-pool
    ties to the last maximum instead of the first."""
    for module in (layers, models):
        monkeypatch.setattr(module, "relu", _relu_with_derivative_one_at_zero)
    monkeypatch.setattr(pool, "second_wins", _ties_to_the_second)


@pytest.mark.parametrize("case_id", [c for c in ALL if not c.startswith("reptile")])
def test_the_exact_zeros_the_margins_leave_out_decide_nothing(case_id, built, monkeypatch):
    """A ReLU input that is exactly 0 and a max-pool window of zeros are left out of the margins:
    with relu′(0) = 1 instead of 0 and ties sent to the last maximum, every output is the same."""
    recipe, case, tolerances, _ = built[case_id]
    _swap_the_kink_conventions(monkeypatch)
    changes = wellposed.changes(case["outputs"], recipe.outputs({k: a.value for k, a in recipe.inputs.items()}),
                                tolerances)
    assert max(fraction for _, fraction in changes.values()) <= 1 / wellposed.SPREAD_FACTOR


def test_the_two_conventions_swapped_above_do_change_a_computation_on_a_kink(monkeypatch):
    """The swaps of the test above are real: on inputs at the kink they change the gradient, of
    the layers and of the conv4 net the cases use."""
    from autograd import grad
    import autograd.numpy as anp
    x = np.zeros((1, 1, 2, 2))
    relu_sum = lambda z: anp.sum(layers.relu(z))
    pool_grad = lambda: grad(lambda z: anp.sum(layers.max_pool_2x2(z)))(x)
    embed = lambda p: anp.sum(models.conv4_apply(p, np.ones((2, 1, 16, 16)), "maxpool"))
    params = models.conv4_init(np.random.default_rng(0), 1, None, 2, "maxpool", "both", 16)
    params["bn3.offset"], params["bn3.scale"] = np.zeros(2), np.zeros(2)   # last ReLU inputs all 0
    assert grad(relu_sum)(x).sum() == 0 and pool_grad()[0, 0, 0, 0] == 1
    before = grad(embed)(params)["bn3.offset"]
    _swap_the_kink_conventions(monkeypatch)
    assert grad(relu_sum)(x).sum() == 4 and pool_grad()[0, 0, 1, 1] == 1
    np.testing.assert_array_equal(before, 0)
    np.testing.assert_array_equal(grad(embed)(params)["bn3.offset"], 2)      # 2 images, 1×1 each


# ----- the MetaNet design that broke the property, and the margins that catch it -----
def _old_metanet(second_order):
    """The MetaNet cases as they were: seed 7, 4 filters, a zero gradient mapped to fast weight 0."""
    return meta_networks.metanet_case(second_order, seed=7, hidden=4,
                                      zero_gradient_fast_weight=(("conv", 0.0), ("dense", 0.0)))


@pytest.mark.parametrize("second_order", [False, True])
def test_the_old_metanet_design_fails_the_property(second_order):
    recipe = _old_metanet(second_order)
    reference = recipe.outputs({k: a.value for k, a in recipe.inputs.items()})
    changes = wellposed.changes(reference, recipe.outputs(wellposed.perturbed(recipe.inputs, 0)),
                                parts.tolerances(reference))
    outside = {name for name, (_, fraction) in changes.items() if fraction > 1}
    assert {"gradient/m.dense.l2.w", "gradient/d.conv.out.b"} <= outside and len(outside) > 10


def test_a_case_whose_relu_input_is_zero_up_to_rounding_is_refused(monkeypatch):
    monkeypatch.setitem(cases.CASES, "old-metanet", lambda: _old_metanet(False))
    with pytest.raises(cases.CaseError, match=r"old-metanet: a (relu|max_pool) input lies [0-9.e-]+ of its "
                                              r"array's scale from the kink; a case needs at least 1e-08"):
        cases.build("old-metanet")


def test_the_kink_watchers_measure_their_margins_and_record_nothing_outside_a_recording():
    scale = 4.0
    with kinks.recording() as found:
        layers.relu(np.array([scale, -1e-9, 0.0, 2.0]))                  # exact 0 left out
        layers.max_pool_2x2(np.array([[[[1.0, 3.0], [3.0 - 3e-7, 0.5]], [[0.0, 0.0], [0.0, 0.0]]]]))
        kinks.switch(np.array([0.5, np.exp(-7.0) * (1 + 1e-3)]), np.exp(-7.0))
        kinks.floor(np.array([2.0, 1e-24 * 1.5]), 1e-24)
    assert [kind for kind, _, _ in found] == ["relu", "max_pool", "switch", "floor"]
    margins = {kind: (margin, left_out) for kind, margin, left_out in found}
    np.testing.assert_allclose(margins["relu"][0], 1e-9 / scale, rtol=1e-12)
    np.testing.assert_allclose(margins["max_pool"][0], 3e-7 / 3.0, rtol=1e-9)
    np.testing.assert_allclose(margins["switch"][0], np.exp(-7.0) * 1e-3 / 0.5, rtol=1e-9)
    np.testing.assert_allclose(margins["floor"][0], 0.5e-24 / 2.0, rtol=1e-9)
    assert margins["relu"][1] == 1 and margins["max_pool"][1] == 1        # the zeros, counted
    with kinks.recording() as found:
        layers.max_pool_2x2(np.array([[[[2.0, 2.0], [0.0, 1.0]]]]))       # a tie: margin 0
    assert found == [("max_pool", 0.0, 0)]
    layers.relu(np.zeros(3))
    assert kinks._open == []


def test_the_well_posed_record_is_left_out_of_a_case_built_by_hand():
    built = {"algorithm": "toy", "description": "y", "seed": 0, "model": {}, "loss": {},
             "conventions": {}, "hyperparameters": {}, "procedure": [],
             "inputs": {"x": cases.Array(np.zeros(2), "x")},
             "outputs": {"y": cases.Array(np.ones(2), "y", rtol=1e-10, atol=1e-12)}}
    document = json.loads(cases.encode("toy", built)[0])
    assert "well_posed" not in document and "perturbation_spread" not in document["outputs"]["y"]
    with np.load(io.BytesIO(cases.encode("toy", built)[1])) as f:
        assert sorted(f.files) == ["inputs/x", "outputs/y"]
