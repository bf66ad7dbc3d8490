"""A third-party meta-learning library, used as its users use it, reproduces refmeta's MAML cases.

The library is ``higher`` (0.2.1, pure Python on top of PyTorch): ``higher.innerloop_ctx`` turns
a ``torch.nn.Module`` and a ``torch.optim.SGD`` into a differentiable inner loop, and its own
``DifferentiableSGD`` takes every inner step; the meta-gradient is ``backward()`` through that
loop and the meta-step is ``torch.optim.Adam``.  Nothing of refmeta computes an output here: the
network is the case's ``nn.Module`` from ``refmeta.cases.torch`` (built from the case JSON's
``model.layers``, its weights loaded from the case's inputs), and refmeta only exports the
case, converts the outputs back to the case's layout and verifies them.

higher's own MAML example differs from the cases in these conventions, set here from the
case's ``conventions`` as a user would (docs/conformance.md lists them for every library):

- it calls ``qry_loss.backward()`` once per task, so the meta-gradient is the SUM over tasks;
  the cases take the mean (``task_reduction``), so each task's query loss is divided by T;
- it has no first-order switch.  ``track_higher_grads=False`` cuts the fast weights off from
  θ altogether, so first-order MAML is either "the gradient at the final fast weights, added
  to θ's gradient" or ``diffopt.step(loss, grad_callback=<detach every gradient>)``; both are
  checked;
- its inner SGD takes every parameter; the cases hold batch norm's offsets fixed in the inner
  loop (``adapt_bn`` false), so they are left out of the inner optimizer;
- its inner loss is the mean cross-entropy; the conv cases' is N × the mean
  (``inner_reduction``).

CI installs torch and higher (.ci/run); there a missing library fails this file.  Elsewhere it
is skipped with the reason shown by ``pytest -ra``.
"""

import pathlib

import numpy as np
import pytest

from helpers import import_or_skip
from refmeta import cases
from refmeta.cases import verify

torch = import_or_skip("torch", "pip install torch==2.13.0 higher==0.2.1")
higher = import_or_skip("higher", "pip install torch==2.13.0 higher==0.2.1")
torch.set_default_dtype(torch.float64)
from refmeta.cases import torch as fixtures  # noqa: E402

SECOND_ORDER = ["maml-sinusoid-k1-second-order", "maml-sinusoid-k3-second-order",
                "maml-conv4-bn-5way1shot-second-order"]
FIRST_ORDER = ["maml-sinusoid-k1-first-order", "maml-sinusoid-k3-first-order",
               "maml-conv4-bn-5way1shot-first-order"]
# Two ways a higher user gets first-order MAML (higher has no switch for it).
FIRST_ORDER_WAYS = ["final_fast_weights", "grad_callback"]
# Measured with torch 2.13.0 CPU: at most 2e-5 of the allowed error on any element whose value
# is signal.  The ceiling is far above that and far below 1, so the margin stays visible.
MARGIN = 1e-3


# ----- the user's side: higher on the case's nn.Module -----
def maml_with_higher(path, *, first_order_way="final_fast_weights", sum_over_tasks=False,
                     copy_initial_weights=False, adapt_every_parameter=False,
                     ignore_first_order=False):
    """Every output of a MAML case, computed by higher's inner loop and torch's optimizers, in
    the case's layout.

    The keyword arguments are the conventions (and one pitfall) a user meets; their defaults
    reproduce the case:
      sum_over_tasks: higher's example as written (one ``backward()`` per task, no 1/T).
      copy_initial_weights: higher's default True starts the fast weights from a copy of θ, so
        no meta-gradient reaches θ; MAML needs False (as higher's example passes).
      adapt_every_parameter: put the batch-norm offsets in the inner optimizer too.
      ignore_first_order: run the second-order loop whatever the case says.
    """
    fixture = fixtures.load(path)
    conventions, hp, data = fixture.conventions, fixture.hyperparameters, fixture.inputs
    model, loss = fixture.model, fixture.loss
    first_order = conventions["first_order"] and not ignore_first_order

    # adapt_bn false: the bn* parameters are meta-learned but not in the inner optimizer.
    theta = fixture.named(None, model.parameters())
    inner = [p for name, p in theta.items() if adapt_every_parameter or conventions["adapt_bn"]
             or not name.startswith("bn")]
    inner_opt = torch.optim.SGD(inner, lr=conventions["inner_lr"])
    meta_opt = torch.optim.Adam(model.parameters(), lr=hp["meta_lr"],
                                betas=(hp["adam_b1"], hp["adam_b2"]), eps=hp["adam_eps"])

    n_tasks = data["support_x"].shape[0]
    per_task = 1.0 if sum_over_tasks or conventions["task_reduction"] == "sum" else 1.0 / n_tasks
    track = not (first_order and first_order_way == "final_fast_weights")
    detach = ((lambda grads: [None if g is None else g.detach() for g in grads])
              if first_order and first_order_way == "grad_callback" else None)
    support_losses, query_losses, adapted = [], [], {}
    meta_opt.zero_grad()
    for t in range(n_tasks):
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=copy_initial_weights,
                                  track_higher_grads=track) as (fnet, diffopt):
            losses = []
            for j in range(conventions["inner_steps"]):
                support_loss = loss(fnet(data["support_x"][t]), data["support_y"][t],
                                    conventions["inner_reduction"])
                diffopt.step(support_loss, grad_callback=detach)
                losses.append(support_loss.detach())
                for name, p in fixture.named(f"adapted_step{j + 1}", fnet.parameters()).items():
                    adapted.setdefault(name, []).append(p.detach().clone())
            query_loss = loss(fnet(data["query_x"][t]), data["query_y"][t],
                              conventions["query_reduction"])
            if track:
                (per_task * query_loss).backward()
            else:
                # The fast weights are leaves cut off from θ: their gradient is the
                # first-order meta-gradient, added to θ's gradient by hand.
                grads = torch.autograd.grad(per_task * query_loss, list(fnet.parameters()))
                for p, g in zip(model.parameters(), grads):
                    p.grad = g if p.grad is None else p.grad + g
        support_losses.append(torch.stack(losses))
        query_losses.append(query_loss.detach())

    outputs = fixture.named("meta_gradient", [torch.zeros_like(p) if p.grad is None else p.grad.clone()
                                              for p in model.parameters()])
    meta_opt.step()
    query = torch.stack(query_losses)
    outputs.update({"support_loss": torch.stack(support_losses), "query_loss": query,
                    "meta_loss": query.mean() if conventions["task_reduction"] == "mean" else query.sum()})
    outputs.update({name: torch.stack(values) for name, values in adapted.items()})
    outputs.update(fixture.named("updated", model.parameters()))
    return fixtures.to_case_layout(fixture, outputs)


# ----- checking with refmeta -----
def fraction_of_tolerance(document, arrays, theirs):
    """{output: max over elements of |theirs − reference| / (atol + rtol·|reference|)}."""
    used = {}
    for name, entry in document["outputs"].items():
        reference = arrays["outputs/" + name]
        error = np.abs(theirs[name] - reference)
        used[name] = float(np.max(error / (entry["atol"] + entry["rtol"] * np.abs(reference)),
                                  initial=0.0))
    return used


def worst_signal_fraction(document, arrays, theirs):
    """(output, fraction) with the largest fraction of its tolerance, leaving out the Adam
    update of a parameter whose meta-gradient the case marks as zero in exact arithmetic (a conv
    bias before batch norm): that update is rounding noise × meta_lr / eps, it must pass, but
    its margin measures the noise, not the library."""
    noise = {"updated/" + name.split("/", 1)[1] for name, entry in document["outputs"].items()
             if name.startswith("meta_gradient/") and entry.get("structurally_zero")}
    used = fraction_of_tolerance(document, arrays, theirs)
    return max(((n, f) for n, f in used.items() if n not in noise), key=lambda item: item[1])


def failing_outputs(document, arrays, theirs):
    """Names of the outputs refmeta's verify finds out of tolerance (no structural problem)."""
    rows, problems = verify.verify(document, arrays, theirs)
    assert not problems, problems
    assert {row[0] for row in rows} == set(document["outputs"])
    return [row[0] for row in rows if not row[6]]


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cases")
    cases.export(str(folder), SECOND_ORDER + FIRST_ORDER)
    return folder


def load(case_dir, case_id):
    return verify.load_case(str(case_dir / f"{case_id}.json"))


@pytest.mark.equation("maml", "(1)", "(2)", "(3)")
@pytest.mark.parametrize("case_id", SECOND_ORDER)
def test_higher_reproduces_the_second_order_cases(case_dir, case_id):
    document, arrays = load(case_dir, case_id)
    theirs = maml_with_higher(case_dir / f"{case_id}.json")
    assert failing_outputs(document, arrays, theirs) == []
    name, fraction = worst_signal_fraction(document, arrays, theirs)
    assert fraction < MARGIN, (name, fraction)


@pytest.mark.parametrize("way", FIRST_ORDER_WAYS)
@pytest.mark.parametrize("case_id", FIRST_ORDER)
def test_higher_reproduces_the_first_order_cases_either_way(case_dir, case_id, way):
    document, arrays = load(case_dir, case_id)
    theirs = maml_with_higher(case_dir / f"{case_id}.json", first_order_way=way)
    assert failing_outputs(document, arrays, theirs) == []
    name, fraction = worst_signal_fraction(document, arrays, theirs)
    assert fraction < MARGIN, (name, fraction)


def test_higher_example_sums_over_tasks_T_times_the_cases_mean(case_dir):
    """higher's example as written: verify fails the meta-gradient, which is exactly T times
    the case's (two runs of higher compared: one backward per task with and without 1/T)."""
    document, arrays = load(case_dir, "maml-sinusoid-k3-second-order")
    path = case_dir / "maml-sinusoid-k3-second-order.json"
    summed, mean = maml_with_higher(path, sum_over_tasks=True), maml_with_higher(path)
    failed = failing_outputs(document, arrays, summed)
    assert {n for n in document["outputs"] if n.startswith("meta_gradient/")} <= set(failed)
    n_tasks = document["hyperparameters"]["n_tasks"]
    for name in document["outputs"]:
        if name.startswith("meta_gradient/"):
            # equal up to the rounding of a 5-term sum: a few ulps of the largest term
            expected = n_tasks * mean[name]
            np.testing.assert_allclose(summed[name], expected, rtol=1e-13,
                                       atol=1e-14 * np.max(np.abs(expected)))


@pytest.mark.parametrize("case_id, mistake, failing, cause", [
    # higher's default copies θ before the inner loop: no meta-gradient reaches θ at all
    ("maml-sinusoid-k1-second-order", {"copy_initial_weights": True}, "meta_gradient/",
     "nothing reached the parameters: theirs meta_gradient/* are all 0 and theirs updated/* "
     "equal params/*, where the case's are not; something cut the parameters off from the "
     "loss: higher's innerloop_ctx with copy_initial_weights=True"),
    # no first-order switch: the plain loop on a first-order case is second order
    ("maml-sinusoid-k3-first-order", {"ignore_first_order": True}, "meta_gradient/",
     "the backward pass differs: every output before meta_gradient/dense0.b passes"),
    # the case holds batch norm's offsets fixed in the inner loop
    ("maml-conv4-bn-5way1shot-first-order", {"adapt_every_parameter": True}, "adapted_step1/bn",
     "a parameter the case holds fixed moved: bn0.offset, bn1.offset, bn2.offset, bn3.offset "
     "stay at params in every inner step of the case (conventions.adapt_bn false"),
    # higher's example as written: one backward() per task, the sum over tasks
    ("maml-conv4-bn-5way1shot-second-order", {"sum_over_tasks": True}, "meta_gradient/",
     "theirs = 2.000 × reference: T = the number of tasks (2): sum vs mean over tasks"),
])
def test_a_users_mistake_with_higher_is_caught_and_its_cause_named(case_dir, case_id, mistake,
                                                                   failing, cause):
    """Each mistake made for real with higher: verify fails it and names the cause once."""
    document, arrays = load(case_dir, case_id)
    theirs = maml_with_higher(case_dir / f"{case_id}.json", **mistake)
    failed = failing_outputs(document, arrays, theirs)
    assert any(name.startswith(failing) for name in failed), failed
    text = verify.build_report(document, arrays, theirs).text()
    found = [line for line in text.splitlines() if line.startswith("likely cause") and cause in line]
    assert len(found) == 1, text
    if "sum_over_tasks" not in mistake:      # docs/verify.md quotes each stage-level line whole
        docs = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "verify.md").read_text()
        assert f"\n  {found[0]}\n" in docs, found[0]
