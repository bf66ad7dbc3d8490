"""Likely causes of a failure: the usual porting mistakes, each a claim checked against the
case's own tolerance, never a guess.

``diagnose`` fills each failing ``OutputResult``'s ``diagnoses`` (and every compared output's
``tasks``) and returns the notes across outputs; ``refmeta.cases.report`` prints them.  The
kinds of cause:

    factor, permuted, reshaped   one output, the mistake undone: ``refmeta.cases.mistakes``.
    tasks      an output with a leading task axis ("(T, ...)" in its meaning, or the shape of
               a parameter with T in front) is compared task by task; when some tasks pass,
               the failing ones are named, and across outputs the pattern (only the first
               task right: state carried from task to task).
    float32    every failing output's largest error is at most 1e5 times its allowed error
               and 1e-5 of its group's largest |value|, one is over 30 times its allowed
               error, and no task passes in every failing output with a task axis (float32
               rounding reaches every task).  The tolerances are about 1e5 times
               float64's rounding error (1e-10 of an output group's magnitude,
               docs/reference-cases.md) and float32 rounds 2^29 ≈ 5e8 times coarser: about
               1e-8..1e-5 relative, 1e2..1e5 times the allowed error.
    dtype      theirs holds arrays narrower than float64 and something fails.
    stages     where theirs first departs in the order of computation: the forward pass, the
               backward pass, a parameter held fixed that moved, nothing reaching the
               parameters, batched Reptile on a serial case (``refmeta.cases.stages``).  None
               when float32 explains the failures; batched Reptile replaces the task note
               (every task started at the parameters: nothing was carried over).

An output the case marks "structurally_zero" (0 in exact arithmetic, rounding noise in
practice), and the ``updated/<p>`` computed from such a gradient, get no factor or permutation
and do not count against float32.  What is read from the case's JSON (its sizes, task axes,
layer layouts, rounding-noise outputs) is ``refmeta.cases.case_facts``'s.
"""

import numpy as np

from refmeta.cases.case_facts import CaseFacts
from refmeta.cases.comparison import Diagnosis, passes
from refmeta.cases.mistakes import likely_cause
from refmeta.cases.order import checkpoints
from refmeta.cases.stages import stage_notes

FLOAT32_WINDOW = (30.0, 1e5)  # largest error / allowed error of float32 arithmetic (see above)
FLOAT32_SCALE = 1e-5          # and / the output group's largest |value|


def diagnose(document, case_arrays, theirs, results):
    """Fill each result's ``diagnoses`` and ``tasks``; returns the notes across outputs.

    Args:
        document, case_arrays: the case, as ``refmeta.cases.files.load_case`` returns it.
        theirs: {output name: array}.
        results: the ``OutputResult`` list of ``refmeta.cases.comparison.compare_outputs``, in
            the order of computation (``refmeta.cases.order.computation_order``).
    Returns:
        [Diagnosis]: the stage-level causes (``refmeta.cases.stages``), a "tasks" or "float32"
        note, and a "dtype" note, where they apply.
    """
    facts = CaseFacts(document)
    for r in results:
        if r.status in ("fail", "wrong shape") and r.name not in facts.noise:
            cause = likely_cause(r, case_arrays["outputs/" + r.name],
                                 np.asarray(theirs[r.name], np.float64), facts)
            r.diagnoses = [cause] if cause else []
    for r in results:
        if r.compared and facts.has_task_axis(r.name, r.shape):
            _compare_by_task(r, case_arrays["outputs/" + r.name], theirs[r.name])
    # the same tasks passing everywhere rules float32 out: its rounding reaches every task
    note = (_task_note(results, facts.n_tasks)
            or _float32_note(case_arrays, theirs, results, facts.noise))
    stages = []
    if note is None or note.kind != "float32":      # float32 explains every failure at once
        stages = stage_notes(document, case_arrays, theirs, results, facts,
                             checkpoints(document, [r.name for r in results]))
    if any(found.kind == "reptile_batched" for found in stages):
        note = None              # every task started at params: nothing was carried over
    return [found for found in (*stages, note, _dtype_note(results)) if found]


# ----- task by task -----
def _compare_by_task(result, reference, theirs):
    """Fill ``result.tasks`` (pass/fail per task); a failing output with no other cause that
    passes in some tasks gets the breakdown as its diagnosis."""
    result.tasks = [passes(reference[t], theirs[t], result.rtol, result.atol)
                    for t in range(result.shape[0])]
    if result.status == "fail" and not result.diagnoses and any(result.tasks):
        result.diagnoses = [Diagnosis("tasks", _task_message(result.tasks), {
            "failing": [t for t, ok in enumerate(result.tasks) if not ok],
            "passing": [t for t, ok in enumerate(result.tasks) if ok]})]


def _task_message(task_passes):
    """"tasks 2, 4 fail; tasks 0, 1, 3 pass" from pass/fail per task."""
    failing = [t for t, ok in enumerate(task_passes) if not ok]
    passing = [t for t, ok in enumerate(task_passes) if ok]
    return (f"{_task_list(failing)} fail{'s' if len(failing) == 1 else ''}; "
            f"{_task_list(passing)} pass{'es' if len(passing) == 1 else ''}")


def _task_list(tasks):
    """"task 3" or "tasks 1, 2"."""
    return f"task{'s' if len(tasks) > 1 else ''} {', '.join(map(str, tasks))}"


def _task_note(results, n_tasks):
    """Diagnosis "tasks" when the same tasks pass in every failing output with a task axis."""
    failing = [r for r in results if r.status == "fail" and r.tasks is not None]
    if not failing:
        return None
    bad = sorted({t for r in failing for t, ok in enumerate(r.tasks) if not ok})
    if len(bad) == n_tasks:
        return None
    good = [t for t in range(n_tasks) if t not in bad]
    message = (f"in the {len(failing)} failing output(s) with a task axis only {_task_list(bad)} "
               f"fail{'s' if len(bad) == 1 else ''}; {_task_list(good)} "
               f"pass{'es' if len(good) == 1 else ''} in all of them: ")
    if bad == list(range(1, n_tasks)):
        message += ("only the first task is right, so something carries over from one task to "
                    "the next: an optimizer's moments or step count, batch-norm statistics, or "
                    "parameters not reset to the meta-parameters before each task")
    else:
        message += ("look at what differs for those tasks: their slice of the inputs, or state "
                    "carried from task to task (optimizer moments, batch-norm statistics)")
    return Diagnosis("tasks", message, {"failing": bad, "passing": good})


# ----- across outputs: float32, a narrow dtype -----
def _float32_note(case_arrays, theirs, results, noise):
    """Diagnosis "float32" when every failing output (rounding noise, ``noise``, aside) is off
    by at most FLOAT32_WINDOW[1] times its allowed error and FLOAT32_SCALE of its group's
    largest |value|, and one by over FLOAT32_WINDOW[0] times; each failing output gets it
    too, in place of a per-task breakdown."""
    failing = [r for r in results if r.status == "fail" and r.name not in noise]
    if not failing or any(d.kind != "tasks" for r in failing for d in r.diagnoses):
        return None
    scales = _group_scales(case_arrays, results)
    over, relative = {}, {}
    for r in failing:
        reference = case_arrays["outputs/" + r.name]
        with np.errstate(all="ignore"):
            error = np.abs(np.asarray(theirs[r.name], np.float64) - reference)
            ratio = np.where(error == 0, 0.0, error / (r.atol + r.rtol * np.abs(reference)))
            relative[r.name] = r.max_abs_err / scales[r.name.split("/")[0]]
        over[r.name] = float(np.max(ratio))
        if not (over[r.name] <= FLOAT32_WINDOW[1] and relative[r.name] <= FLOAT32_SCALE):
            return None                     # NaN and inf fail too
    if max(over.values()) < FLOAT32_WINDOW[0]:
        return None
    for r in failing:
        r.diagnoses = [Diagnosis("float32", f"at most {over[r.name]:.2g} × its allowed error: "
                                 "float32 precision", {"error_over_allowed": over[r.name]})]
    return Diagnosis(
        "float32", f"every failing output is off by at most {max(over.values()):.2g} × its "
        f"allowed error (up to {max(relative.values()):.1g} of its group's largest |value|): "
        "float32 precision, and the cases are float64. Compute in float64: torch: "
        "torch.set_default_dtype(torch.float64) before building the model, or .double() on the "
        "model and every tensor; JAX: jax.config.update(\"jax_enable_x64\", True) at start-up",
        {"outputs": sorted(over), "largest_error_over_allowed": max(over.values()),
         "largest_error_over_scale": max(relative.values())})


def _group_scales(case_arrays, results):
    """{group: the largest finite |value| of its outputs}; a group is the name before "/"."""
    scales = {}
    for r in results:
        reference = np.abs(case_arrays["outputs/" + r.name])
        largest = float(np.max(reference[np.isfinite(reference)], initial=0.0))
        scales[r.name.split("/")[0]] = max(scales.get(r.name.split("/")[0], 0.0), largest)
    return scales


def _dtype_note(results):
    """Diagnosis "dtype" when something fails and theirs holds arrays narrower than float64."""
    low = [r for r in results if r.compared and np.dtype(r.theirs_dtype).itemsize < 8]
    if not (low and any(r.status == "fail" for r in results)):
        return None
    listed = ", ".join(r.name for r in low[:3]) + (f", … ({len(low)} in all)"
                                                   if len(low) > 3 else "")
    dtypes = " and ".join(sorted({r.theirs_dtype for r in low}))
    return Diagnosis("dtype", f"theirs holds {dtypes} arrays ({listed}); the cases are float64",
                     {"outputs": [r.name for r in low]})
