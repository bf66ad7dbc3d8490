"""A third-party meta-learning library, used as its users use it, reproduces refmeta's MAML cases.

The library is ``higher`` (0.2.1, pure Python on top of PyTorch): ``higher.innerloop_ctx`` turns
a ``torch.nn.Module`` and a ``torch.optim.SGD`` into a differentiable inner loop, and its own
``DifferentiableSGD`` takes every inner step; the meta-gradient is ``backward()`` through that
loop and the meta-step is ``torch.optim.Adam``.  Nothing of refmeta computes an output here: the
network is built from the case JSON's ``model.layers`` as ``torch.nn`` modules, its weights are
loaded from the case's inputs, and refmeta only exports the case and verifies the result.

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

import os

import numpy as np
import pytest

try:
    import higher
    import torch
except ImportError as error:
    _why = (f"torch and higher are needed to check higher against the cases ({error}); "
            "pip install torch==2.13.0 higher==0.2.1")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise ImportError(f"CI installs them (.ci/run), so this is a failure: {_why}") from error
    pytest.skip(_why, allow_module_level=True)

from refmeta import cases  # noqa: E402
from refmeta.cases import verify  # noqa: E402

SECOND_ORDER = ["maml-sinusoid-k1-second-order", "maml-sinusoid-k3-second-order",
                "maml-conv4-bn-5way1shot-second-order"]
FIRST_ORDER = ["maml-sinusoid-k1-first-order", "maml-sinusoid-k3-first-order",
               "maml-conv4-bn-5way1shot-first-order"]
# Two ways a higher user gets first-order MAML (higher has no switch for it).
FIRST_ORDER_WAYS = ["final_fast_weights", "grad_callback"]
# Measured with torch 2.13.0 CPU: at most 2e-5 of the allowed error on any element whose value
# is signal.  The ceiling is far above that and far below 1, so the margin stays visible.
MARGIN = 1e-3


# ----- the user's side: torch.nn modules built from the case's model description -----
class SpatialMean(torch.nn.Module):
    """(n, C, H, W) -> (n, C): the "mean" layer."""

    def forward(self, x):
        return x.mean(dim=(-2, -1))


def build_model(model):
    """(torch.nn.Sequential in float64, {torch parameter name: (case name, transposed)}).

    Layouts: ``nn.Linear.weight`` is (out, in), the case's dense weight (in, out), so it is
    transposed on the way in and out; conv weights are OIHW on both sides.  A batch-norm layer
    with offset only (``scale: null``, as in MAML's authors' code) is ``nn.BatchNorm2d`` whose
    weight stays a constant 1 (``requires_grad=False``).  That constant has to be a tensor:
    torch 2.13's second-order gradient through ``F.batch_norm(..., weight=None, bias=...)``
    raises "Expected a proper Tensor but got None", a PyTorch bug.
    ``track_running_stats=False``: batch statistics in every pass, per call (per task here).
    """
    modules, names = [], {}
    for layer in model["layers"]:
        index, kind = str(len(modules)), layer["type"]
        if kind == "dense":
            assert layer["weight_layout"].startswith("(in, out)"), layer["weight_layout"]
            modules.append(torch.nn.Linear(layer["in_features"], layer["out_features"]))
            names[index + ".weight"] = (layer["weight"], True)
            names[index + ".bias"] = (layer["bias"], False)
        elif kind == "conv2d":
            assert layer["weight_layout"].startswith("OIHW"), layer["weight_layout"]
            pad = layer["padding"]
            assert len(set(pad.values())) == 1, f"nn.Conv2d pads every side alike; got {pad}"
            modules.append(torch.nn.Conv2d(layer["in_channels"], layer["out_channels"],
                                           layer["kernel_size"], stride=layer["stride"],
                                           padding=pad["top"], bias=bool(layer.get("bias"))))
            names[index + ".weight"] = (layer["weight"], False)
            if layer.get("bias"):
                names[index + ".bias"] = (layer["bias"], False)
        elif kind == "batch_norm":
            assert layer["mode"] == "transductive", layer["mode"]
            bn = torch.nn.BatchNorm2d(layer["num_features"], eps=layer["eps"], affine=True,
                                      track_running_stats=False)
            for attr, role in (("weight", "scale"), ("bias", "offset")):
                if layer.get(role):
                    names[f"{index}.{attr}"] = (layer[role], False)
                else:
                    getattr(bn, attr).requires_grad_(False)     # stays 1 (scale) or 0 (offset)
            modules.append(bn)
        elif kind == "relu":
            modules.append(torch.nn.ReLU())
        elif kind == "mean":
            modules.append(SpatialMean())
        elif kind == "flatten":
            modules.append(torch.nn.Flatten())
        else:
            raise ValueError(f"no torch.nn module for layer type {kind!r}")
    return torch.nn.Sequential(*modules).double(), names


def loss_function(document):
    """loss(prediction, y, reduction) for one task, as the case's ``loss`` and conventions say."""
    kind = document["loss"]["type"]

    def loss(prediction, y, reduction):
        if kind == "mse":
            per_example = ((prediction - y) ** 2).mean(dim=-1)
        else:
            per_example = torch.nn.functional.cross_entropy(prediction, y.long(), reduction="none")
        if reduction == "sum":
            return per_example.sum()
        # n_way_times_mean: MAML's authors' inner loss, N × the mean cross-entropy
        scale = prediction.shape[-1] if reduction == "n_way_times_mean" else 1
        return scale * per_example.mean()
    return loss


def maml_with_higher(document, arrays, *, first_order_way="final_fast_weights",
                     sum_over_tasks=False, copy_initial_weights=False, adapt_every_parameter=False,
                     ignore_first_order=False):
    """Every output of a MAML case, computed by higher's inner loop and torch's optimizers.

    The keyword arguments are the conventions (and one pitfall) a user meets; their defaults
    reproduce the case:
      sum_over_tasks: higher's example as written (one ``backward()`` per task, no 1/T).
      copy_initial_weights: higher's default True starts the fast weights from a copy of θ, so
        no meta-gradient reaches θ; MAML needs False (as higher's example passes).
      adapt_every_parameter: put the batch-norm offsets in the inner optimizer too.
      ignore_first_order: run the second-order loop whatever the case says.
    """
    conventions, hp = document["conventions"], document["hyperparameters"]
    model, names = build_model(document["model"])
    with torch.no_grad():
        for torch_name, p in model.named_parameters():
            if torch_name in names:
                case_name, transposed = names[torch_name]
                value = torch.from_numpy(arrays["inputs/params/" + case_name])
                p.copy_(value.T if transposed else value)
    data = {name: torch.from_numpy(arrays["inputs/" + name])
            for name in ("support_x", "support_y", "query_x", "query_y")}
    loss = loss_function(document)
    first_order = conventions["first_order"] and not ignore_first_order

    # θ: the parameters the case names; the frozen batch-norm scale is not one of them.
    theta = [(n, p) for n, p in model.named_parameters() if n in names]
    # adapt_bn false: the bn* parameters are meta-learned but not in the inner optimizer.
    inner = [p for n, p in theta if adapt_every_parameter or conventions["adapt_bn"]
             or not names[n][0].startswith("bn")]
    inner_opt = torch.optim.SGD(inner, lr=conventions["inner_lr"])
    meta_opt = torch.optim.Adam([p for _, p in theta], lr=hp["meta_lr"],
                                betas=(hp["adam_b1"], hp["adam_b2"]), eps=hp["adam_eps"])

    n_tasks = data["support_x"].shape[0]
    per_task = 1.0 if sum_over_tasks or conventions["task_reduction"] == "sum" else 1.0 / n_tasks
    track = not (first_order and first_order_way == "final_fast_weights")
    detach = ((lambda grads: [None if g is None else g.detach() for g in grads])
              if first_order and first_order_way == "grad_callback" else None)
    support_losses, query_losses, trajectories = [], [], []
    meta_opt.zero_grad()
    for t in range(n_tasks):
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=copy_initial_weights,
                                  track_higher_grads=track) as (fnet, diffopt):
            losses, steps = [], []
            for _ in range(conventions["inner_steps"]):
                support_loss = loss(fnet(data["support_x"][t]), data["support_y"][t],
                                    conventions["inner_reduction"])
                diffopt.step(support_loss, grad_callback=detach)
                losses.append(support_loss.detach())
                steps.append([p.detach().clone() for p in fnet.parameters()])
            query_loss = loss(fnet(data["query_x"][t]), data["query_y"][t],
                              conventions["query_reduction"])
            if track:
                (per_task * query_loss).backward()
            else:
                # The fast weights are leaves cut off from θ: their gradient is the
                # first-order meta-gradient, added to θ's gradient by hand.
                pairs = [(p, fast) for p, fast in zip(model.parameters(), fnet.parameters())
                         if p.requires_grad]
                grads = torch.autograd.grad(per_task * query_loss, [fast for _, fast in pairs])
                for (p, _), g in zip(pairs, grads):
                    p.grad = g if p.grad is None else p.grad + g
        support_losses.append(torch.stack(losses))
        query_losses.append(query_loss.detach())
        trajectories.append(steps)

    meta_gradient = {n: (torch.zeros_like(p) if p.grad is None else p.grad.clone())
                     for n, p in theta}
    meta_opt.step()
    query = torch.stack(query_losses)
    outputs = {"support_loss": torch.stack(support_losses), "query_loss": query,
               "meta_loss": query.mean() if conventions["task_reduction"] == "mean" else query.sum()}
    torch_names = [n for n, _ in model.named_parameters()]
    for j in range(conventions["inner_steps"]):
        for k, torch_name in enumerate(torch_names):
            if torch_name in names:
                outputs[f"adapted_step{j + 1}/{torch_name}"] = torch.stack(
                    [trajectories[t][j][k] for t in range(n_tasks)])
    outputs.update({f"meta_gradient/{n}": g for n, g in meta_gradient.items()})
    outputs.update({f"updated/{n}": p.detach() for n, p in theta})
    return to_case_layout(outputs, names)


def to_case_layout(outputs, names):
    """Torch names and layouts -> the case's (dense weights transposed back, task axis kept)."""
    result = {}
    for key, value in outputs.items():
        prefix, _, torch_name = key.rpartition("/")
        if not prefix:
            result[key] = value.numpy()
            continue
        case_name, transposed = names[torch_name]
        result[f"{prefix}/{case_name}"] = (value.transpose(-1, -2) if transposed else value).numpy()
    return result


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
    theirs = maml_with_higher(document, arrays)
    assert failing_outputs(document, arrays, theirs) == []
    name, fraction = worst_signal_fraction(document, arrays, theirs)
    assert fraction < MARGIN, (name, fraction)


@pytest.mark.parametrize("way", FIRST_ORDER_WAYS)
@pytest.mark.parametrize("case_id", FIRST_ORDER)
def test_higher_reproduces_the_first_order_cases_either_way(case_dir, case_id, way):
    document, arrays = load(case_dir, case_id)
    theirs = maml_with_higher(document, arrays, first_order_way=way)
    assert failing_outputs(document, arrays, theirs) == []
    name, fraction = worst_signal_fraction(document, arrays, theirs)
    assert fraction < MARGIN, (name, fraction)


def test_higher_example_sums_over_tasks_T_times_the_cases_mean(case_dir):
    """higher's example as written: verify fails the meta-gradient, which is exactly T times
    the case's (two runs of higher compared: one backward per task with and without 1/T)."""
    document, arrays = load(case_dir, "maml-sinusoid-k3-second-order")
    summed = maml_with_higher(document, arrays, sum_over_tasks=True)
    mean = maml_with_higher(document, arrays)
    failed = failing_outputs(document, arrays, summed)
    assert {n for n in document["outputs"] if n.startswith("meta_gradient/")} <= set(failed)
    n_tasks = document["hyperparameters"]["n_tasks"]
    for name in document["outputs"]:
        if name.startswith("meta_gradient/"):
            # equal up to the rounding of a 5-term sum: a few ulps of the largest term
            expected = n_tasks * mean[name]
            np.testing.assert_allclose(summed[name], expected, rtol=1e-13,
                                       atol=1e-14 * np.max(np.abs(expected)))


@pytest.mark.parametrize("case_id, mistake, failing", [
    # higher's default copies θ before the inner loop: no meta-gradient reaches θ at all
    ("maml-sinusoid-k1-second-order", {"copy_initial_weights": True}, "meta_gradient/"),
    # no first-order switch: the plain loop on a first-order case is second order
    ("maml-sinusoid-k3-first-order", {"ignore_first_order": True}, "meta_gradient/"),
    # the case holds batch norm's offsets fixed in the inner loop
    ("maml-conv4-bn-5way1shot-first-order", {"adapt_every_parameter": True}, "adapted_step1/bn"),
])
def test_a_users_mistake_with_higher_is_caught(case_dir, case_id, mistake, failing):
    document, arrays = load(case_dir, case_id)
    failed = failing_outputs(document, arrays, maml_with_higher(document, arrays, **mistake))
    assert any(name.startswith(failing) for name in failed), failed
