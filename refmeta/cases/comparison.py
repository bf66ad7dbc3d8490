"""The tolerance rule, and how each of a case's outputs compared with theirs.

Each output is compared element by element, as ``numpy.isclose`` does:

    pass  ⇔  |theirs − reference| ≤ atol + rtol · |reference|   for every element

with the output's own rtol and atol from the case's JSON.  NaN fails unless the reference has
NaN at the same place; ±inf passes only against the same infinity.  Per output,

    max abs err = max |theirs − reference|
    max rel err = max |theirs − reference| / |reference|   (0/0 counts 0, x/0 counts inf)

and the worst element is the one furthest beyond its allowed error (a NaN first).

``compare_outputs`` gives an ``OutputResult`` per output of the case: "pass" or "fail" when
compared; "missing", "wrong dtype" (not real floating point) or "wrong shape" when it cannot
be; "not compared" for an absent output under ``--partial``.  The diagnoses
(``refmeta.cases.diagnose``) add their ``Diagnosis`` entries to these results, and the report
(``refmeta.cases.report``) prints them.
"""

import dataclasses
import math
from typing import NamedTuple

import numpy as np


def compare(reference, theirs, rtol, atol):
    """(max abs err, max rel err, passed, worst) of two same-shape arrays (module docstring).

    worst: (index, theirs, reference, allowed error, NaN count) at the worst element, or None
    when every element passes.
    """
    reference, theirs = np.asarray(reference, np.float64), np.asarray(theirs, np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        same = ((np.isnan(reference) & np.isnan(theirs))
                | (np.isinf(reference) & (theirs == reference)))
        error = np.where(same, 0.0, np.abs(theirs - reference))         # NaN where one side is NaN
        allowed = np.where(np.isinf(reference), -1.0, atol + rtol * np.abs(reference))
        passed = same | (error <= allowed)
        relative = np.where(error == 0, 0.0, error / np.abs(reference))
    if error.size == 0:
        return 0.0, 0.0, True, None
    nan = np.isnan(error)
    max_abs = math.nan if nan.any() else float(error.max())
    max_rel = math.nan if nan.any() else float(relative.max())
    worst = None
    if not passed.all():
        with np.errstate(invalid="ignore"):
            badness = np.where(nan, np.inf, np.where(passed, -np.inf, error - allowed))
        index = np.unravel_index(int(np.argmax(badness)), error.shape)
        worst = (tuple(int(i) for i in index), float(theirs[index]), float(reference[index]),
                 float(allowed[index]), int(nan.sum()))
    return max_abs, max_rel, bool(passed.all()), worst


def passes(reference, theirs, rtol, atol):
    """True when every element of ``theirs`` is within the tolerance of ``reference``."""
    return compare(reference, theirs, rtol, atol)[2]


@dataclasses.dataclass
class OutputResult:
    """One output of the case and how theirs compared.

    status: "pass", "fail", "missing", "wrong dtype", "wrong shape", or "not compared" (absent
    under --partial).  The errors and ``worst`` (see ``compare``) exist for compared outputs;
    ``tasks`` (pass/fail per task) for compared outputs with a task axis.
    """
    name: str
    shape: tuple
    rtol: float
    atol: float
    status: str
    problem: str = None
    theirs_shape: tuple = None
    theirs_dtype: str = None
    max_abs_err: float = None
    max_rel_err: float = None
    worst: tuple = None
    tasks: list = None
    diagnoses: list = dataclasses.field(default_factory=list)

    @property
    def compared(self):
        return self.status in ("pass", "fail")


class Diagnosis(NamedTuple):
    """A likely cause: ``kind`` (factor, permuted, reshaped, tasks, float32, dtype; the stage
    kinds of ``refmeta.cases.stages``), the sentence printed, and JSON-able details."""
    kind: str
    message: str
    details: dict


def compare_outputs(document, case_arrays, theirs, partial=False):
    """([OutputResult per case output, in the JSON's order], [extra array names]);
    ``refmeta.cases.verify.build_report`` puts them in the order of computation."""
    results = []
    for name, entry in document["outputs"].items():
        result = OutputResult(name, tuple(entry["shape"]), entry["rtol"], entry["atol"], "missing")
        if name in theirs:
            _compare_present(result, theirs[name], case_arrays)
        elif partial:
            result.status = "not compared"
        else:
            result.problem = f"missing output {name!r}, shape {result.shape}"
        results.append(result)
    return results, [name for name in sorted(theirs) if name not in document["outputs"]]


def _compare_present(result, array, case_arrays):
    """Fill ``result`` for their ``array``: wrong dtype, wrong shape, or compared."""
    name, shape = result.name, result.shape
    result.theirs_shape, result.theirs_dtype = tuple(array.shape), str(array.dtype)
    if array.dtype.kind != "f":
        result.status = "wrong dtype"
        result.problem = (f"output {name!r} must hold real floating-point numbers; got dtype "
                          f"{array.dtype}")
    elif array.shape != shape:
        result.status = "wrong shape"
        result.problem = f"output {name!r} has shape {array.shape}; expected {shape}"
    else:
        result.max_abs_err, result.max_rel_err, passed, result.worst = compare(
            case_arrays["outputs/" + name], array, result.rtol, result.atol)
        result.status = "pass" if passed else "fail"


def table_rows(results):
    """The table's row per compared output: (name, shape, rtol, atol, max abs err, max rel err,
    passed, worst)."""
    return [(r.name, r.shape, r.rtol, r.atol, r.max_abs_err, r.max_rel_err, r.status == "pass",
             r.worst) for r in results if r.compared]


def structural_problems(results, extra):
    """One message per missing, extra, misshapen or non-float array, in that order."""
    return ([r.problem for r in results if r.status == "missing"]
            + [f"extra array {name!r}: the case has no such output" for name in extra]
            + [r.problem for r in results if r.status in ("wrong dtype", "wrong shape")])
