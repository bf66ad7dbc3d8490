"""Stage-level causes: where theirs first departs from the case, and what that shows.

The outputs are walked in the order of computation (``refmeta.cases.order``); each cause is
said once, with the outputs it covers, and only when the arrays show it:

    no_gradient       theirs' gradient outputs are all 0 where the case's are not (and, where
                      theirs gives no gradient or a zero one, theirs' ``updated/<p>`` all equal
                      ``params/<p>``): nothing reached the parameters.
    reptile_batched   a case with ``task_start`` outputs (serial Reptile) where theirs'
                      ``task_start/<p>[t]`` equal ``params/<p>`` for every task t: every task
                      started from the initial parameters, as batched Reptile does.
    fixed_moved       the case's ``adapted_step<j>/<p>`` equal ``params/<p>`` at every step (a
                      parameter held fixed, e.g. ``adapt_bn`` false), theirs' do not, and
                      every forward checkpoint passes.
    forward           the first failing checkpoint is a forward one (before any step), it has
                      no cause of its own, it fails in every task, and theirs hang together.
    backward          every checkpoint before the first failing gradient output passes, that
                      output has no cause of its own, and theirs hang together.

"Theirs hang together" (``refmeta.cases.update_rule.hang_together``): their ``updated/<p>`` is
the case's update rule applied to *their own* gradient (MAML: Adam's first step; one plain
gradient step of ``lr``; Reptile: the step toward their last adapted parameters), within the
output's tolerance.  Arrays whose errors are independent of each other (noise, arrays saved
from different runs) do not, and get no forward or backward claim: only the first failing
output is named (the verdict's "the first to fail in the order of computation").
"""

import numpy as np

from refmeta.cases.case_facts import conventions
from refmeta.cases.comparison import Diagnosis, passes
from refmeta.cases.order import GRADIENT_GROUPS, STEP_GROUP, checkpoints
from refmeta.cases.update_rule import hang_together

FORWARD_CULPRITS = (
    "what usually does: the padding (haiku's and TensorFlow's 'SAME' pads (0, 1) at stride 2; "
    "each conv2d entry of model.layers gives the case's), batch norm's ε, scale or mode "
    "(nn.BatchNorm2d's and haiku's defaults are ε 1e-5 with a scale; learn2learn's "
    "OmniglotCNN draws its scale from U(0, 1)), the activation, the reduction over examples")
NOTHING_CULPRITS = (
    "something cut the parameters off from the loss: higher's innerloop_ctx with "
    "copy_initial_weights=True, its default (MAML needs False); a .detach(), torch.no_grad() "
    "or jax.lax.stop_gradient between the parameters and the inner loop; an optimizer given "
    "copies of the parameters")
HOLD_FIXED = ("leave them out of the inner update: higher, an inner optimizer over the other "
              "parameters; learn2learn, maml_update with None for their gradients (MAML.adapt "
              "adapts every parameter); torchmeta, a step size of 0 for them")


def stage_notes(document, case_arrays, theirs, results, facts, checkpoints):
    """[Diagnosis] of the stage-level causes that the arrays show (module docstring).

    Args:
        document, case_arrays: the case; theirs: {output name: array}.
        results: the OutputResult per output, in the order of computation, with their own
            diagnoses already found; facts: the case's CaseFacts.
        checkpoints: ``refmeta.cases.order.checkpoints`` of the case.
    """
    walk = _Walk(case_arrays, theirs, results, facts, checkpoints)
    if not walk.failing:
        return []
    found = [_nothing_reached(walk), _batched_on_serial(document, walk),
             _fixed_moved(document, walk)]
    if not any(found):
        consistent = hang_together(document, case_arrays, theirs) is True
        found += [_forward(walk, consistent), _backward(document, walk, consistent)]
    return [note for note in found if note]


def first_failing(document, case_arrays, theirs, results, facts):
    """The label of the first checkpoint to fail in the order of computation (rounding-noise
    outputs aside), e.g. "support_loss (column 0: before the first inner step)", or None."""
    walk = _Walk(case_arrays, theirs, results, facts,
                 checkpoints(document, [r.name for r in results]))
    return walk.first.label if walk.first is not None else None


class _Walk:
    """The outputs in order, and which of them (and of the checkpoints) pass."""

    def __init__(self, case_arrays, theirs, results, facts, checkpoints):
        self.case_arrays, self.theirs, self.facts = case_arrays, theirs, facts
        self.results = {r.name: r for r in results}
        self.order = [r.name for r in results]
        signal = [r for r in results if r.compared and r.name not in facts.noise]
        self.failing = [r.name for r in signal if r.status == "fail"]
        self.checks = [(c, self.passes(c.name, c.index)) for c in checkpoints
                       if c.name in self.results and self.results[c.name].compared
                       and c.name not in facts.noise]
        self.first = next((c for c, ok in self.checks if not ok), None)

    def reference(self, name):
        return self.case_arrays["outputs/" + name]

    def passes(self, name, index=None, against=None):
        """Does theirs[name] (its part ``index``) pass against the reference, or ``against``?"""
        r = self.results[name]
        reference = self.reference(name) if against is None else against
        theirs = np.asarray(self.theirs[name], np.float64)
        if index is not None:
            reference, theirs = reference[index], theirs[index]
        return passes(reference, theirs, r.rtol, r.atol)

    def after(self, name):
        """The failing outputs from ``name`` on, in the order of computation."""
        later = self.order[self.order.index(name):]
        return [n for n in later if n in self.failing]

    def params(self, name):
        """The case's params/<p> of an output <group>/<p>, or None."""
        return self.case_arrays.get("inputs/params/" + name.split("/", 1)[1]) if "/" in name else None


def _nothing_reached(walk):
    """Diagnosis "no_gradient": an all-zero gradient, or updated parameters equal to params."""
    gradients = [n for n in walk.order if n.split("/", 1)[0] in GRADIENT_GROUPS
                 and walk.results[n].compared]
    updated = [n for n in walk.order if n.startswith("updated/") and walk.results[n].compared
               and walk.params(n) is not None and n not in walk.facts.noise]
    said = []
    at_zero = lambda n, array: passes(np.zeros_like(array), array, walk.results[n].rtol,
                                      walk.results[n].atol)
    if gradients and all(at_zero(n, np.asarray(walk.theirs[n], np.float64)) for n in gradients) \
            and not all(at_zero(n, walk.reference(n)) for n in gradients):
        said.append(f"theirs {_group_of(gradients)}/* are all 0")
    same = lambda n: walk.params(n).shape == walk.reference(n).shape
    # updated = params says nothing reached them only where the gradient does not pass: beside
    # a right gradient it is a step of size 0, not a missing gradient
    if (said or not gradients) and updated and not all(
            walk.results[n].status == "pass" for n in updated) and all(
            same(n) and walk.passes(n, against=walk.params(n)) for n in updated):
        said.append("theirs updated/* equal params/*")
    if not said:
        return None
    covered = [n for n in walk.failing if n in gradients or n.startswith("updated/")]
    return Diagnosis("no_gradient", f"nothing reached the parameters: {' and '.join(said)}, where "
                     f"the case's are not; {NOTHING_CULPRITS}", {"outputs": covered})


def _batched_on_serial(document, walk):
    """Diagnosis "reptile_batched": every task of a serial case started from params."""
    starts = [n for n in walk.order if n.startswith("task_start/") and walk.results[n].compared]
    if not starts or any(walk.params(n) is None or walk.params(n).shape != walk.reference(n).shape[1:]
                         for n in starts):
        return None
    at_params = lambda n, array: all(
        passes(walk.params(n), array[t], walk.results[n].rtol, walk.results[n].atol)
        for t in range(array.shape[0]))
    if not (all(at_params(n, np.asarray(walk.theirs[n], np.float64)) for n in starts)
            and not all(at_params(n, walk.reference(n)) for n in starts)):
        return None
    said = conventions(document)
    mode = said.get("reptile_mode", said.get("variant"))
    quoted = f" (conventions.reptile_mode {mode!r})" if isinstance(mode, str) else ""
    return Diagnosis(
        "reptile_batched", "a batched run on a serial case: theirs task_start/* equal params/* "
        "for every task, so every task started from the initial parameters, as batched Reptile "
        f"(Algorithm 2) does; this case is serial{quoted}, Algorithm 1: task t starts from φ_t, "
        "where the update after task t−1 left φ (task_start/<name>[t]). Nothing carries over "
        "that should not: update φ after each task and start the next task from it",
        {"outputs": walk.failing})


def _fixed_moved(document, walk):
    """Diagnosis "fixed_moved": a parameter the case holds at params in every inner step."""
    if any(not ok for c, ok in walk.checks if c.forward):
        return None
    steps = {}
    for n in walk.order:
        found = STEP_GROUP.match(n.split("/", 1)[0])
        if found and "/" in n and walk.params(n) is not None:
            steps.setdefault(n.split("/", 1)[1], []).append(n)
    moved = {}
    for p, names in steps.items():
        params = walk.params(names[0])
        fixed = all(np.array_equal(walk.reference(n), np.broadcast_to(params, walk.reference(n).shape))
                    for n in names)
        failing = [n for n in names if n in walk.failing]
        if fixed and failing:
            moved[p] = failing
    if not moved:
        return None
    why = ("conventions.adapt_bn false: batch norm is not adapted in the inner loop"
           if conventions(document).get("adapt_bn") is False and all(p.startswith("bn") for p in moved)
           else "the case's adapted_step outputs equal params for them")
    first = min((n for names in moved.values() for n in names), key=walk.order.index)
    # the first checkpoint to fail is a moved parameter: every failure comes after it
    covered = walk.failing if walk.first.name in sum(moved.values(), []) else walk.after(first)
    names = ", ".join(moved)
    return Diagnosis(
        "fixed_moved", f"a parameter the case holds fixed moved: {names} stay at params in every "
        f"inner step of the case ({why}), but theirs adapted_step…/{_one_of(moved)} differ from "
        f"params: theirs adapted them (the losses before the first inner step pass, and "
        f"{first} is the first output to fail); {HOLD_FIXED}",
        {"parameters": list(moved), "outputs": covered})


def _forward(walk, consistent):
    """Diagnosis "forward": the first failing checkpoint is before any step."""
    first = walk.first
    if not (consistent and first is not None and first.forward) or _own_cause(walk, first.name):
        return None
    reference = walk.reference(first.name)
    theirs = np.asarray(walk.theirs[first.name], np.float64)
    if first.index is not None:
        reference, theirs = reference[first.index], theirs[first.index]
    r = walk.results[first.name]
    if walk.facts.has_task_axis(first.name, r.shape) and first.index != (0, 0) and any(
            passes(reference[t], theirs[t], r.rtol, r.atol) for t in range(reference.shape[0])):
        return None                   # a different network fails every task, not some
    later = walk.after(first.name)
    total = sum(walk.results[n].compared for n in walk.order[walk.order.index(first.name):])
    return Diagnosis(
        "forward", f"the forward pass differs before any step: {first.label} is the first output "
        f"to fail, computed from the case's parameters and inputs alone ({len(later)} of the "
        f"{total} outputs compared from it on fail): the network or the loss differs from the case's; "
        f"{FORWARD_CULPRITS}", {"first": first.name, "outputs": later})


def _backward(document, walk, consistent):
    """Diagnosis "backward": everything before the first failing gradient passes."""
    first = walk.first
    if not (consistent and first is not None and first.name.split("/", 1)[0] in GRADIENT_GROUPS):
        return None
    if _own_cause(walk, first.name):
        return None
    covered = walk.after(first.name)
    zero = [n for n in covered if n.split("/", 1)[0] in GRADIENT_GROUPS
            and not np.any(walk.theirs[n]) and np.any(walk.reference(n))]
    inner = ("the meta-information gradients" if document.get("algorithm") == "Meta Networks"
             else "the inner-loop gradients")
    order = conventions(document).get("first_order")
    if order is True:
        which = (f"first vs second order (this case is first order, conventions.first_order true: "
                 f"{inner} are constants, so a run that differentiates through them differs "
                 "exactly here; higher and jax-meta have no first-order switch), or ")
    elif order is False:
        which = (f"first vs second order (this case is second order, conventions.first_order "
                 f"false: the gradient flows through {inner}, so a run that holds them constant, "
                 "first order or a .detach() on them, differs exactly here), or ")
    else:
        which = ""
    constants = (f": theirs {', '.join(zero)} {'is' if len(zero) == 1 else 'are'} 0" if zero else "")
    return Diagnosis(
        "backward", f"the backward pass differs: every output before {first.name} passes (the "
        "forward pass and every step) and only gradients and updates fail: the loss is right, its "
        f"derivative is not. What usually differs: {which}a parameter treated as a constant "
        f"(detached, or left out of the parameters differentiated){constants}",
        {"first": first.name, "outputs": covered,
         "first_order": order if isinstance(order, bool) else None})


def _own_cause(walk, name):
    """True when output ``name`` has a cause of its own (a factor, a permutation, a reshape)."""
    return any(d.kind != "tasks" for d in walk.results[name].diagnoses)


def _group_of(names):
    return names[0].split("/", 1)[0]


def _one_of(moved):
    return next(iter(moved)) if len(moved) == 1 else "<name>"
