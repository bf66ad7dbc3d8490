"""verify in the order of computation, and the stage-level causes it names.

Every cause is shown on a real computation that makes the mistake, never on a perturbed
array: refmeta's own code run with the mistake (another distance, SNAIL's dilations starting
at 1, a second-order run on a first-order case, batched Reptile on the serial case), or the
independent torch.func implementation of demos/check_with_torch.py on the refmeta.cases.torch
fixture of the case with the mistake in what it reads (batch norm's ε, 'SAME' padding, a
batch-norm scale left at its random initialisation, batch norm adapted in the inner loop; CI
installs PyTorch, elsewhere these are skipped without it).  Each cause is also
shown to stay silent on plain wrong answers: noise in every output, a wrong inner or meta
learning rate, float32 arithmetic.  higher's own mistakes (copy_initial_weights=True, its
inner SGD over every parameter, no first-order switch) are in tests/test_third_party.py.
"""

import dataclasses
import json
import pathlib

import numpy as np
import pytest
from autograd import value_and_grad

from helpers import import_or_skip, torch_outputs
from refmeta import cases, protonet, snail
from refmeta.cases import verify
from refmeta.cases.order import unplaced
from refmeta.data import tasks
from refmeta.nn import losses, optimizers

STAGE_KINDS = {"forward", "backward", "fixed_moved", "no_gradient", "reptile_batched"}


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cases")
    cases.export(str(directory))
    return directory


def load(case_dir, case_id):
    """(json path, document, {"inputs/…", "outputs/…": array}, {output name: reference})."""
    path = str(case_dir / f"{case_id}.json")
    document, arrays = verify.load_case(path)
    reference = {k[len("outputs/"):]: v for k, v in arrays.items() if k.startswith("outputs/")}
    return path, document, arrays, reference


def inputs_of(arrays, prefix="inputs/"):
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def stage_notes(report):
    return [note for note in report.notes if note.kind in STAGE_KINDS]


def cause_lines(report):
    return [line for line in report.text().splitlines() if line.startswith("likely cause")]


def verdict(report):
    return report.text().splitlines()[-1]


def documented(report, kind):
    """The line ``report`` prints for its cause ``kind``, checked to be quoted whole in
    docs/verify.md ("The stage-level causes, and the line each prints")."""
    (note,) = [note for note in report.notes if note.kind == kind]
    (line,) = [line for line in cause_lines(report) if line.endswith(note.message)]
    docs = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "verify.md").read_text()
    assert f"\n  {line}\n" in docs, line
    return line


# ----- the order of computation -----
def test_the_table_follows_the_order_of_computation(case_dir):
    before = {  # (earlier, later): each pair where the JSON lists the later one first
        "snail-3way1shot": [("blocks/block4", "logits"), ("attention/block0", "blocks/block0"),
                            ("blocks/block0", "blocks/block1"), ("blocks/block1", "attention/block2"),
                            ("sequences", "attention/block0")],
        "metanet-3way1shot-first-order": [("attention", "read/out.w"),
                                          ("meta_info/task/fc1.w", "task_fast_weights/fc1.w"),
                                          ("query_representations", "attention"), ("loss", "gradient/base.out.w")],
        "matching-conv4-3way2shot-fce": [("fce/support", "attention"), ("fce/query", "attention")],
        "maml-sinusoid-k3-second-order": [("support_loss", "adapted_step1/dense0.b"),
                                          ("adapted_step3/dense2.w", "query_loss"),
                                          ("meta_loss", "meta_gradient/dense0.b")],
        "reptile-sinusoid-serial": [("inner_loss", "task_start/dense0.b"),
                                    ("task_start/dense2.w", "adapted_step1/dense0.b"),
                                    ("adapted_step5/dense2.w", "updated/dense0.b")],
    }
    given = {}
    for case_id in cases.CASES:
        path, document, _, reference = load(case_dir, case_id)
        rows = [line.split()[0] for line in verify.check(path, reference).text().splitlines()[2:-1]]
        order = verify.computation_order(document)
        assert rows == order and sorted(order) == sorted(document["outputs"]), case_id
        assert unplaced(document) == [], case_id              # every output placed by a step
        for earlier, later in before.get(case_id, []):
            assert order.index(earlier) < order.index(later), (case_id, earlier, later)
        if "computation_order" in document:                   # read in place of the procedure
            procedure_only = verify.computation_order({k: v for k, v in document.items()
                                                       if k != "computation_order"})
            given[case_id] = [(a, b) for a, b in before[case_id]
                              if procedure_only.index(a) > procedure_only.index(b)]
    # the two cases whose procedures define an output away from where it is computed
    assert given == {"snail-3way1shot": [("attention/block0", "blocks/block0")],
                     "reptile-sinusoid-serial": [("task_start/dense2.w", "adapted_step1/dense0.b")]}
    json_order = list(load(case_dir, "snail-3way1shot")[1]["outputs"])
    assert json_order.index("logits") < json_order.index("blocks/block0")   # what is reordered


def test_a_case_may_give_its_order_outright():
    built = {"algorithm": "toy", "description": "", "seed": 0, "model": {}, "loss": {},
             "conventions": {}, "hyperparameters": {}, "procedure": ["a = 1", "b = a", "c = b"],
             "inputs": {"x": cases.Array(np.zeros(1), "x")},
             "outputs": {name: cases.Array(np.ones(2), name) for name in ("c", "b", "a", "z")}}
    document = json.loads(cases.encode("toy", built)[0])
    assert verify.computation_order(document) == ["a", "b", "c", "z"]      # z: never named, last
    document["computation_order"] = ["c", "b", "a"]
    assert verify.computation_order(document) == ["c", "b", "a", "z"]
    built["computation_order"] = ["c", "b", "a"]                 # a builder's, written by encode
    document = json.loads(cases.encode("toy", built)[0])
    assert document["computation_order"] == ["c", "b", "a"] and unplaced(document) == ["z"]
    assert verify.computation_order(document) == ["c", "b", "a", "z"]


# ----- the forward pass: refmeta's own code with another network or loss -----
def protonet_outputs(document, arrays, distance):
    """Every output of the ProtoNet case, by refmeta's protonet module with ``distance``."""
    params, data = inputs_of(arrays, "inputs/params/"), inputs_of(arrays)
    episode = tasks.Episode(data["support_x"], data["support_y"].astype(int), data["query_x"],
                            data["query_y"].astype(int))
    n_way, hidden = document["hyperparameters"]["n_way"], params["conv0.w"].shape[0]
    config = protonet.ProtoNetConfig(protonet.conv4_embedding(hidden, image_size=data["support_x"].shape[-1]),
                                     n_way=n_way, distance=distance)
    z_support, z_query = protonet.embed_episode(params, episode, config.embedding.apply)
    prototypes = protonet.prototypes(z_support, episode.support_y, n_way)
    loss, gradient = value_and_grad(protonet.loss)(params, episode, config)
    updated = optimizers.sgd_update(params, gradient, document["hyperparameters"]["lr"])
    return {"embeddings/support": z_support, "embeddings/query": z_query, "prototypes": prototypes,
            "distances": protonet.pairwise_distance(z_query, prototypes, distance),
            "log_probabilities": protonet.log_probabilities(z_support, episode.support_y, z_query,
                                                            n_way, distance),
            "loss": np.asarray(loss), **{f"gradient/{k}": v for k, v in gradient.items()},
            **{f"updated/{k}": v for k, v in updated.items()}}


def snail_outputs(document, arrays, **changes):
    """Every output of the SNAIL case, by refmeta's snail module with the case's architecture
    (model.architecture) changed by ``changes``."""
    fields = {field.name for field in dataclasses.fields(snail.SNAILConfig)}
    architecture = {k: v for k, v in document["model"]["architecture"].items() if k in fields}
    architecture["blocks"] = tuple(tuple(block) for block in architecture["blocks"])
    config = snail.SNAILConfig(**dict(architecture, **changes))
    params, data = inputs_of(arrays, "inputs/params/"), inputs_of(arrays)
    episode = tasks.Episode(data["support_x"], data["support_y"].astype(int), data["query_x"],
                            data["query_y"].astype(int))
    n_support = len(episode.support_y)
    z = snail.embed(params, np.concatenate([episode.support_x, episode.query_x]), config)
    sequences = snail.make_sequences(z[:n_support], episode.support_y, z[n_support:], config)
    logits, found = snail.apply(params, sequences, config, return_intermediates=True)
    loss, gradient = value_and_grad(snail.loss)(params, episode, config)
    outputs = {"embeddings/support": z[:n_support], "embeddings/query": z[n_support:],
               "sequences": sequences, "logits": logits,
               "log_probabilities": losses.log_softmax(logits[:, -1]), "loss": np.asarray(loss),
               **{f"gradient/{k}": v for k, v in gradient.items()},
               **{f"updated/{k}": v for k, v in optimizers.sgd_update(
                   params, gradient, document["hyperparameters"]["lr"]).items()}}
    for name, value in found.items():
        group = "attention" if name.endswith(".probs") else "blocks"
        outputs[f"{group}/{name.split('.')[0]}"] = value
    return outputs


def test_refmetas_own_computations_reproduce_the_cases_they_are_changed_from(case_dir):
    """The two helpers above are the cases' computations: unchanged, every output passes."""
    for case_id, compute, change in (("protonet-conv4-3way2shot", protonet_outputs, "sqeuclidean"),
                                     ("snail-3way1shot", snail_outputs, None)):
        path, document, arrays, _ = load(case_dir, case_id)
        theirs = compute(document, arrays, change) if change else compute(document, arrays)
        assert verify.check(path, theirs).passed, case_id


def test_another_distance_is_the_forward_pass_differing_at_the_distances(case_dir):
    path, document, arrays, _ = load(case_dir, "protonet-conv4-3way2shot")
    report = verify.check(path, protonet_outputs(document, arrays, "euclidean"))
    (note,) = stage_notes(report)
    assert note.kind == "forward" and note.details["first"] == "distances"
    assert note.message.startswith("the forward pass differs before any step: distances is the "
                                   "first output to fail, computed from the case's parameters and "
                                   "inputs alone")
    assert "the network or the loss differs from the case's" in note.message
    for culprit in ("padding", "'SAME'", "batch norm's ε, scale or mode", "the activation",
                    "the reduction over examples"):
        assert culprit in note.message
    passing = {r.name for r in report.outputs if r.status == "pass"}
    assert {"embeddings/support", "embeddings/query", "prototypes"} <= passing
    assert "the first to fail in the order of computation: distances;" in verdict(report)
    (line,) = cause_lines(report)                 # said once, for every output it covers
    assert line.startswith("likely cause (all ") and set(note.details["outputs"]) == {
        r.name for r in report.outputs if r.status == "fail"}


def test_snail_dilations_from_1_fail_first_at_the_first_tc_block(case_dir):
    """The TC block's dilations 2, 4 (Mishra et al.) started at 1 instead: the first attention
    block, before it, still passes; the table's first failure is block1, not the logits."""
    path, document, arrays, _ = load(case_dir, "snail-3way1shot")
    report = verify.check(path, snail_outputs(document, arrays, dilation_start=0))
    status = {r.name: r.status for r in report.outputs}
    assert [status[n] for n in ("sequences", "attention/block0", "blocks/block0", "blocks/block1")] \
        == ["pass", "pass", "pass", "fail"]
    (note,) = stage_notes(report)
    assert note.kind == "forward" and note.details["first"] == "blocks/block1"
    assert "the first to fail in the order of computation: blocks/block1;" in verdict(report)


# ----- backward, batched Reptile: another case's computation on the same inputs -----
def same_inputs(case_dir, case_id, other_id):
    """(path, document, reference outputs, the other case's outputs) for two cases built from
    the same inputs: the other case's outputs are a real run of the other convention."""
    path, document, arrays, _ = load(case_dir, case_id)
    _, _, other_arrays, other = load(case_dir, other_id)
    for name in inputs_of(arrays):
        np.testing.assert_array_equal(arrays["inputs/" + name], other_arrays["inputs/" + name])
    return path, document, arrays, other


@pytest.mark.parametrize("case_id, other_id, first_order", [
    ("maml-sinusoid-k3-first-order", "maml-sinusoid-k3-second-order", True),
    ("maml-sinusoid-k1-second-order", "maml-sinusoid-k1-first-order", False),
    ("metanet-3way1shot-first-order", "metanet-3way1shot-second-order", True),
])
def test_the_other_order_is_the_backward_pass_differing(case_dir, case_id, other_id, first_order):
    path, document, _, theirs = same_inputs(case_dir, case_id, other_id)
    report = verify.check(path, theirs)
    (note,) = stage_notes(report)
    assert note.kind == "backward" and note.details["first_order"] is first_order
    assert note.details["first"].startswith(("meta_gradient/", "gradient/"))
    assert note.message.startswith(f"the backward pass differs: every output before "
                                   f"{note.details['first']} passes (the forward pass and every "
                                   "step) and only gradients and updates fail")
    said = ("this case is first order, conventions.first_order true" if first_order else
            "this case is second order, conventions.first_order false")
    assert said in note.message and "or a parameter treated as a constant" in note.message
    failing = {r.name for r in report.outputs if r.status == "fail"}
    assert failing and all(n.startswith(("meta_gradient/", "gradient/", "updated/")) for n in failing)
    assert set(note.details["outputs"]) == failing - report_noise(document)
    if case_id == "maml-sinusoid-k3-first-order":             # the line higher's run prints too
        documented(report, "backward")


def report_noise(document):
    zero = {n for n, e in document["outputs"].items() if e.get("structurally_zero")}
    return zero | {"updated/" + n.split("/", 1)[1] for n in zero}


def test_batched_reptile_on_the_serial_case_is_named_not_carried_state(case_dir):
    """refmeta's batched Reptile on the same tasks: every task starts at params, and that is
    what theirs' task_start says; the old note blamed state carried between tasks."""
    path, document, arrays, batched = same_inputs(case_dir, "reptile-sinusoid-serial",
                                                  "reptile-sinusoid-batched")
    n_tasks = document["hyperparameters"]["n_tasks"]
    theirs = dict(batched, **{f"task_start/{p}": np.stack([v] * n_tasks)
                              for p, v in inputs_of(arrays, "inputs/params/").items()})
    report = verify.check(path, theirs)
    (note,) = [n for n in report.notes if n.kind != "dtype"]
    assert note.kind == "reptile_batched"
    assert note.message.startswith("a batched run on a serial case: theirs task_start/* equal "
                                   "params/* for every task")
    assert "conventions.reptile_mode 'serial'" in note.message
    assert "carries over from one task to the next" not in report.text()
    assert set(note.details["outputs"]) == {r.name for r in report.outputs if r.status == "fail"}
    documented(report, "reptile_batched")


# ----- silent on plain wrong answers -----
@pytest.mark.parametrize("case_id", ["maml-conv4-bn-5way1shot-second-order", "reptile-sinusoid-serial",
                                     "protonet-conv4-3way2shot", "snail-3way1shot",
                                     "metanet-3way1shot-second-order"])
def test_noise_in_every_output_gets_no_stage_cause(case_dir, case_id):
    path, _, _, reference = load(case_dir, case_id)
    rng = np.random.default_rng(1)
    for level in (1e-6, 1e-2):
        theirs = {n: r * (1 + level * rng.standard_normal(r.shape)) for n, r in reference.items()}
        report = verify.check(path, theirs)
        assert not report.passed and stage_notes(report) == []
        assert verdict(report).startswith("FAILED") and "the first to fail" in verdict(report)


def test_a_right_gradient_with_a_wrong_update_gets_no_stage_cause(case_dir):
    """A plain wrong answer from refmeta's own code: the SNAIL case's gradient, then a step of
    another size.  Only updated/* fail, and nothing is claimed about them."""
    path, document, arrays, reference = load(case_dir, "snail-3way1shot")
    params = inputs_of(arrays, "inputs/params/")
    theirs = dict(reference, **{f"updated/{p}": v - 0.02 * reference[f"gradient/{p}"]
                                for p, v in params.items()})
    report = verify.check(path, theirs)
    assert {r.name for r in report.outputs if r.status == "fail"} <= {f"updated/{p}" for p in params}
    assert stage_notes(report) == [] and not report.passed


# ----- PyTorch: the independent implementation with the mistake in the case it reads -----
@pytest.fixture(scope="module")
def torch_run(case_dir):
    import_or_skip("torch", "pip install torch==2.13.0")
    from refmeta.demos import check_with_torch as demo

    def run(case_id, change=None, float32=False):
        """The report of demos/check_with_torch.py's torch.func implementation on ``case_id``,
        run on the refmeta.cases.torch fixture of the case as ``change`` leaves it: the network,
        conventions or step sizes their code reads (helpers.torch_outputs)."""
        path = case_dir / f"{case_id}.json"
        compute = lambda torch, fixture: demo.ALGORITHMS[fixture.case["algorithm"]](torch, fixture)
        return verify.check(str(path), torch_outputs(path, compute, change, float32))
    return run


def layers_of(kind, **fields):
    def change(case):
        for layer in case["model"]["layers"]:
            if layer["type"] == kind:
                layer.update(fields)
    return change


def test_the_torch_implementation_passes_the_cases_it_is_changed_from(torch_run):
    for case_id in ("maml-conv4-bn-5way1shot-first-order", "maml-sinusoid-k3-second-order",
                    "reptile-sinusoid-serial"):
        assert torch_run(case_id).passed, case_id


@pytest.mark.parametrize("change", [
    layers_of("batch_norm", eps=1e-5),                                     # torch's default ε
    layers_of("conv2d", padding={"top": 0, "bottom": 1, "left": 0, "right": 1}),   # 'SAME'
], ids=["batch-norm eps 1e-5", "SAME padding"])
def test_another_network_in_torch_is_the_forward_pass_differing(torch_run, change):
    report = torch_run("maml-conv4-bn-5way1shot-second-order", change)
    (note,) = stage_notes(report)
    assert note.kind == "forward" and note.details["first"] == "support_loss"
    assert note.message.startswith("the forward pass differs before any step: support_loss "
                                   "(column 0: before the first inner step) is the first output to fail")
    assert "the first to fail in the order of computation: support_loss (column 0" in verdict(report)
    documented(report, "forward")


def test_a_batch_norm_scale_left_at_its_initialisation_is_the_forward_pass_differing(torch_run):
    """learn2learn's OmniglotCNN draws its batch-norm scale from U(0, 1); the case has none."""
    rng = np.random.default_rng(0)

    def with_scale(case):
        for layer in case["model"]["layers"]:
            if layer["type"] == "batch_norm":
                layer["scale"] = layer["offset"].replace("offset", "scale")
                case["inputs"]["params/" + layer["scale"]] = cases.Array(rng.uniform(0.0, 1.0, 8),
                                                                         "a scale drawn U(0, 1)")
    report = torch_run("maml-conv4-bn-5way1shot-first-order", with_scale)
    (note,) = stage_notes(report)
    assert note.kind == "forward" and note.details["first"] == "support_loss"


def test_batch_norm_adapted_in_the_inner_loop_is_a_fixed_parameter_that_moved(torch_run):
    report = torch_run("maml-conv4-bn-5way1shot-first-order",
                       lambda case: case["conventions"].update(adapt_bn=True))
    (note,) = stage_notes(report)
    assert note.kind == "fixed_moved"
    assert note.details["parameters"] == ["bn0.offset", "bn1.offset", "bn2.offset", "bn3.offset"]
    assert note.message.startswith("a parameter the case holds fixed moved: bn0.offset, bn1.offset, "
                                   "bn2.offset, bn3.offset stay at params in every inner step of "
                                   "the case (conventions.adapt_bn false")
    # the first inner step's other parameters pass: the gradient at θ is the same either way
    status = {r.name: r.status for r in report.outputs}
    assert status["adapted_step1/conv0.w"] == "pass" and status["adapted_step1/bn0.offset"] == "fail"
    assert "the first to fail in the order of computation: adapted_step1/bn0.offset;" in verdict(report)
    assert set(note.details["outputs"]) == {r.name for r in report.outputs if r.status == "fail"}
    documented(report, "fixed_moved")


def test_a_second_order_torch_run_on_a_first_order_case_is_the_backward_pass(torch_run):
    report = torch_run("maml-conv4-bn-5way1shot-first-order",
                       lambda case: case["conventions"].update(first_order=False))
    (note,) = stage_notes(report)
    assert note.kind == "backward" and note.details["first_order"] is True


@pytest.mark.parametrize("case_id, change", [
    ("maml-sinusoid-k3-second-order", lambda d: d["conventions"].update(inner_lr=0.02)),
    ("maml-conv4-bn-5way1shot-first-order", lambda d: d["hyperparameters"].update(meta_lr=0.003)),
    ("reptile-sinusoid-batched", lambda d: d["hyperparameters"].update(meta_step_size=0.4)),
    ("reptile-sinusoid-serial", lambda d: d["hyperparameters"].update(inner_lr=0.02)),
], ids=["inner lr", "meta lr", "meta step size", "reptile inner lr"])
def test_a_wrong_step_size_in_torch_gets_no_stage_cause(torch_run, case_id, change):
    report = torch_run(case_id, change)
    assert not report.passed and stage_notes(report) == []


def test_float32_in_torch_is_float32_and_no_stage_cause(torch_run):
    report = torch_run("maml-conv4-bn-5way1shot-second-order", float32=True)
    assert not report.passed and stage_notes(report) == []
    assert [note.kind for note in report.notes] == ["float32"]
