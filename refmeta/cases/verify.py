"""``refmeta verify CASE.json THEIRS.npz``: check another implementation against a reference case.

CASE.json and its NPZ (the same name with ``.npz``, in the same folder) are read and checked
whole; THEIRS.npz holds one array per output name (``numpy.savez(path, **{name: array})``).
Each output passes when every element does, as ``numpy.isclose`` decides:

    |theirs − reference| ≤ atol + rtol · |reference|

with the output's own rtol and atol from the JSON.  The outputs are reported in the order of
computation (``refmeta.cases.order``), and the verdict names the first to fail.  A failure is
diagnosed: a constant factor, permuted axes, a reshape, some tasks wrong, float32 arithmetic,
each a claim checked against the same tolerance; and the first wrong stage (the forward pass,
the backward pass, a parameter held fixed that moved, nothing reaching the parameters, batched
Reptile on a serial case), each said once with the outputs it covers.  ``refmeta verify``
prints the table and the likely causes and exits with 0 (every output passes), 1
(verification failed: an output out of tolerance, or THEIRS.npz has missing, extra, misshapen
or non-float arrays) or 2 (nothing could be compared: an unreadable or malformed case, a
missing NPZ, THEIRS.npz not an NPZ; or the --json report could not be written); 141 from the
command line when the reader of its output goes away (``| head``, ``refmeta.cli``).

``--partial`` (``partial=True``) compares only the outputs present: missing ones are listed as
not compared, not failed; extra, misshapen and non-float arrays still fail, and so does an
outputs file holding none of the case's outputs.  ``--json FILE`` also writes the report as
JSON, atomically (``Report.to_json``, through ``refmeta.disk``).  FILE is checked before
anything is compared, and must be a new file or an earlier report (a JSON whose "format" is
``REPORT_FORMAT``): never CASE.json, its NPZ or THEIRS.npz (under any name), nor another
file, a folder, a device such as /dev/null, a FIFO or a symbolic link.

The Python API, for a test suite: ``check(case_path, arrays, partial=False)`` returns the
``Report``; ``assert_matches(case_path, arrays, partial=False)`` returns it when everything
passes and raises ``AssertionError`` carrying the same text as the command line otherwise.
``arrays`` is a mapping of output name to array (anything ``numpy.asarray`` takes) or the
path of an NPZ.  docs/verify.md shows both.

This module joins the pieces, each in a module of its own that never imports this one:

    refmeta.cases.files        reading the case and THEIRS.npz, trusting nothing unchecked
    refmeta.cases.comparison   the tolerance rule, and an OutputResult per output
    refmeta.cases.order        the order of computation, from the case's procedure
    refmeta.cases.diagnose     the likely causes (with case_facts, mistakes, stages and
                               update_rule)
    refmeta.cases.report       the Report: the table, the text, the JSON

Their public names are importable from here too.
"""

import collections.abc
import json
import os
import sys
import tempfile

import numpy as np

from refmeta import checks, disk
from refmeta.cases.case_facts import LAYER_AXES, CaseFacts
from refmeta.cases.comparison import (Diagnosis, OutputResult, compare, compare_outputs,
                                      structural_problems, table_rows)
from refmeta.cases.diagnose import FLOAT32_SCALE, FLOAT32_WINDOW, diagnose
from refmeta.cases.files import (MAX_JSON_DEPTH, NPY_MAGIC, REQUIRED, ZIP_MAGIC, VerifyError,
                                 load_case, load_outputs, outputs_size_bound)
from refmeta.cases.mistakes import EXPLAINED
from refmeta.cases.order import computation_order
from refmeta.cases.stages import first_failing
from refmeta.cases.report import (EXIT_ERROR, EXIT_FAIL, EXIT_PASS, REPORT_FORMAT, Report,
                                  error_json, format_table)

__all__ = [  # most of them defined in the modules above and re-exported here
    "EXIT_ERROR", "EXIT_FAIL", "EXIT_PASS", "EXPLAINED", "FLOAT32_SCALE", "FLOAT32_WINDOW",
    "LAYER_AXES", "MAX_JSON_DEPTH", "NPY_MAGIC", "REPORT_FORMAT", "REQUIRED", "ZIP_MAGIC",
    "Diagnosis", "OutputResult", "Report", "VerifyError", "assert_matches", "build_report",
    "check", "compare", "compare_outputs", "computation_order", "diagnose", "format_table",
    "load_case",
    "load_outputs", "main", "verify"]


def build_report(document, case_arrays, theirs, partial=False, case_path=None,
                 theirs_label="the arrays given"):
    """The Report of ``theirs`` ({output name: array}) against a loaded case."""
    results, extra = compare_outputs(document, case_arrays, theirs, partial)
    position = {name: i for i, name in enumerate(computation_order(document))}
    results.sort(key=lambda r: position[r.name])               # the order of computation
    notes = diagnose(document, case_arrays, theirs, results)
    first = first_failing(document, case_arrays, theirs, results, CaseFacts(document))
    case = {key: document[key] for key in ("id", "algorithm", "format", "refmeta_version")}
    return Report(dict(case, path=case_path), theirs_label, partial, results, extra, notes, first)


def verify(document, case_arrays, theirs):
    """(rows, problems): a row per comparable output, a message per structural problem."""
    results, extra = compare_outputs(document, case_arrays, theirs)
    return table_rows(results), structural_problems(results, extra)


# ----- the Python API -----
def check(case_path, arrays, partial=False):
    """The Report of ``arrays`` against the case ``case_path`` (CASE.json); never raises for a
    mismatch.

    Args:
        case_path: a case's JSON, its NPZ beside it.
        arrays: {output name: array-like} (NumPy, or anything numpy.asarray takes: a CPU torch
            tensor without grad, a JAX array), or the path of an NPZ.
        partial: compare only the outputs present (see the module docstring).
    Raises VerifyError (a ValueError) for a case or NPZ that cannot be read, TypeError for
    a ``case_path`` that is not a path, ``arrays`` that are not a mapping of names to arrays,
    or a ``partial`` that is not True or False.
    """
    if not isinstance(case_path, (str, os.PathLike)):
        raise TypeError("case_path must be the path of a case's JSON (a str or os.PathLike); "
                        f"got {type(case_path).__name__}")
    case_path = os.fspath(case_path)
    partial = checks.boolean("partial", partial)
    document, case_arrays = load_case(case_path)
    if isinstance(arrays, (str, os.PathLike)):
        label = os.fspath(arrays)
        theirs = load_outputs(label, outputs_size_bound(document))
    else:
        label, theirs = "the arrays given", _as_arrays(arrays)
    return build_report(document, case_arrays, theirs, partial, case_path, label)


def assert_matches(case_path, arrays, partial=False):
    """``check``, raising AssertionError with the report's text unless everything passes;
    returns the Report when it does."""
    report = check(case_path, arrays, partial)
    if not report.passed:
        raise AssertionError(report.text(problems_inline=True))
    return report


def _as_arrays(arrays):
    """{output name: NumPy array} of the mapping given to ``check``, or TypeError."""
    if not isinstance(arrays, collections.abc.Mapping):
        raise TypeError("arrays must be a mapping {output name: array} or the path of an NPZ; "
                        f"got {type(arrays).__name__}")
    converted = {}
    for name, value in arrays.items():
        if not isinstance(name, str):
            raise TypeError(f"arrays: output names must be str; got {name!r}")
        try:
            converted[name] = np.asarray(value)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"arrays[{name!r}] cannot be made a NumPy array ({error}); from torch "
                            "pass tensor.detach().cpu().numpy()") from None
    return converted


# ----- the command line -----
def main(case_path, theirs_path, out=None, err=None, partial=False, json_path=None):
    """Verify and print the table; returns the exit status (0 pass, 1 fail, 2 error).
    ``json_path``: also write the report there as JSON, atomically."""
    out, err = out or sys.stdout, err or sys.stderr
    partial = checks.boolean("partial", partial)
    if json_path is not None:
        problem = _report_path_problem(json_path, case_path, theirs_path)
        if problem:
            print(f"refmeta verify: --json {json_path}: {problem}", file=err)
            return EXIT_ERROR
    try:
        document, case_arrays = load_case(case_path)
        theirs = load_outputs(theirs_path, outputs_size_bound(document))
    except VerifyError as error:
        print(f"refmeta verify: {error}", file=err)
        return _write_report(json_path, error_json(case_path, theirs_path, partial, str(error)),
                             EXIT_ERROR, err, case_path, theirs_path)
    report = build_report(document, case_arrays, theirs, partial, case_path, theirs_path)
    # the JSON first: a reader of stdout that goes away (`| head`) cannot stop it being written
    status = _write_report(json_path, report.to_json(), report.status, err, case_path, theirs_path)
    print(report.text(), file=out)
    for problem in report.problems:
        print(f"refmeta verify: {problem}", file=err)
    return status


def _inputs(case_path, theirs_path):
    """(label, path) of the files verify reads, which the report must never replace."""
    return (("CASE.json", case_path), ("the case's NPZ", os.path.splitext(case_path)[0] + ".npz"),
            ("THEIRS.npz", theirs_path))


def _report_path_problem(path, case_path, theirs_path):
    """Why the report cannot be written at ``path`` (checked before comparing), or None: the
    module docstring's rule, and a folder where a file can be created."""
    problem = disk.write_problem(path, _inputs(case_path, theirs_path))
    if problem:
        return problem
    if os.path.lexists(path) and not _is_report(path):
        return (f"exists and is not a refmeta verify report (\"format\": \"{REPORT_FORMAT}\"); "
                "name a new file, or remove it first")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        return f"cannot write in {folder} ({error.strerror or error})"
    return None


def _is_report(path, max_bytes=1 << 26):
    """Whether ``path`` holds an earlier report (read only if it is at most ``max_bytes``)."""
    try:
        with disk.open_regular(path) as f:
            document = json.loads(disk.read_at_most(f, max_bytes, path))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(document, dict) and document.get("format") == REPORT_FORMAT


def _write_report(path, data, status, err, case_path, theirs_path):
    """Write ``data`` as JSON to ``path`` atomically (if a path is given); returns ``status``,
    or EXIT_ERROR when the file cannot be written."""
    if path is None:
        return status
    text = json.dumps(data, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    try:
        disk.replace_atomically(path, lambda f: f.write(text), "w",
                                inputs=_inputs(case_path, theirs_path))
    except (OSError, disk.PathError) as error:
        print(f"refmeta verify: cannot write the report {path}: "
              f"{getattr(error, 'strerror', None) or error}", file=err)
        return EXIT_ERROR
    return status
