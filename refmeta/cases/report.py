"""The report of one verification: the text ``refmeta verify`` prints, and its JSON.

``Report`` holds the case, what was compared, the ``OutputResult`` per output in the order of
computation (with their diagnoses), the notes across outputs and the first output to fail.
``text()`` is the command line's output: a header, the per-output table (``format_table``: max
abs err, max rel err, rtol, atol, pass/FAIL), each failure's worst element, each likely cause
once with the outputs it covers (``short_list``), and a verdict naming the first output to
fail.  ``to_json()`` is the
``--json`` report (``REPORT_FORMAT``; docs/verify.md lists its keys): per output its status,
shape, tolerance, errors, worst element, per-task results and likely causes; infinite and NaN
numbers are written as the strings "inf", "-inf", "nan".

Exit status (``status``): ``EXIT_PASS`` every output passes; ``EXIT_FAIL`` an output out of
tolerance, or a missing, extra, misshapen or non-float array; ``EXIT_ERROR`` nothing could be
compared (``error_json`` is that report).
"""

import dataclasses
import math

from refmeta.cases.comparison import structural_problems, table_rows

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
REPORT_FORMAT = "refmeta.verify/1"


@dataclasses.dataclass
class Report:
    """Everything one verification found; ``text()`` is what ``refmeta verify`` prints."""
    case: dict                 # id, algorithm, format, refmeta_version, path
    theirs: str                # what was compared: a path, or "the arrays given"
    partial: bool
    outputs: list              # OutputResult per case output, in the order of computation
    extra: list                # array names in theirs that the case does not have
    notes: list                # Diagnosis across outputs
    first_failing: str = None  # the first output (or part) to fail, in the order of computation

    @property
    def problems(self):
        """One message per structural problem (missing, extra, misshapen, non-float)."""
        problems = structural_problems(self.outputs, self.extra)
        if self.partial and all(r.status == "not compared" for r in self.outputs):
            problems.insert(0, f"none of the case's {len(self.outputs)} outputs is in "
                               f"{self.theirs}; --partial compares the outputs present")
        return problems

    @property
    def not_compared(self):
        """The names of the outputs left out under --partial."""
        return [r.name for r in self.outputs if r.status == "not compared"]

    @property
    def status(self):
        """EXIT_FAIL when anything failed or a problem was found, else EXIT_PASS."""
        failed = self.problems or any(r.status == "fail" for r in self.outputs)
        return EXIT_FAIL if failed else EXIT_PASS

    @property
    def passed(self):
        """True when every output compared passes and nothing is wrong with theirs."""
        return self.status == EXIT_PASS

    def text(self, problems_inline=False):
        """The header, the table with each failure's worst element and likely causes, and the
        verdict; the problems too if ``problems_inline`` (the command line prints them on
        stderr)."""
        lines = [f"case {self.case['id']} ({self.case['algorithm']}, {self.case['format']}, "
                 f"refmeta {self.case['refmeta_version']}) against {self.theirs}"]
        lines += self._findings()
        if problems_inline:
            lines += [f"problem: {problem}" for problem in self.problems]
        skipped = self.not_compared
        if skipped:
            lines.append(f"not compared (--partial): {', '.join(skipped)}")
        lines.append(self._verdict(problems_inline))
        return "\n".join(lines)

    def _findings(self):
        """The table, each failure's worst element, then each cause once with the outputs it
        covers: the causes found per output, then the notes across outputs."""
        lines = []
        rows = table_rows(self.outputs)
        if rows:
            lines.append(format_table(rows))
        for r in self.outputs:
            if r.status == "wrong shape" and r.diagnoses:
                lines.append(f"  {r.name}: shape {r.theirs_shape}; the case's is {r.shape}")
        names = [r.name for r in self.outputs]
        grouped = {}
        for r in self.outputs:
            for d in r.diagnoses:
                if d.kind != "float32":            # said once, below, across outputs
                    grouped.setdefault((d.kind, d.message), []).append(r.name)
        for (kind, message), covered in grouped.items():
            what = "by task" if kind == "tasks" else "likely cause"
            lines.append(f"{what} ({short_list(covered, names)}): {message}")
        failing = [r.name for r in self.outputs if r.status == "fail"]
        for note in self.notes:
            what = "note" if note.kind == "dtype" else "likely cause"
            covered = note.details.get("outputs") if note.kind != "dtype" else None
            covered = covered and [n for n in names if n in set(covered)]   # in order
            if covered and len(covered) > 1 and set(covered) == set(failing):
                what += f" (all {len(covered)} failing outputs)"
            elif covered:
                what += f" ({short_list(covered, names)})"
            lines.append(f"{what}: {note.message}")
        return lines

    def _verdict(self, problems_inline):
        """The last line: FAILED with the first output to fail in the order of computation and
        what failed, or how many outputs pass."""
        rows, problems, skipped = table_rows(self.outputs), self.problems, self.not_compared
        failed = [row[0] for row in rows if not row[6]]
        n_outputs = len(self.outputs) - len(skipped)
        what = f"outputs present in {self.theirs}" if self.partial else "outputs"
        if problems or failed:
            where = "listed above" if problems_inline else "listed on stderr"
            first = self.first_failing or (failed[0] if failed else None)
            return (f"FAILED: {len(rows) - len(failed)} of {n_outputs} {what} pass"
                    + (f"; the first to fail in the order of computation: {first}; out of "
                       f"tolerance: {short_list(failed, [r.name for r in self.outputs])}"
                       if failed else "")
                    + (f"; {len(problems)} problem(s) with {self.theirs}, {where}"
                       if problems else ""))
        if self.partial:
            return (f"all {n_outputs} compared outputs pass (--partial; {len(skipped)} of "
                    f"{len(self.outputs)} not compared)")
        return f"all {n_outputs} outputs pass"

    def to_json(self):
        """The report as JSON-able data (the format of ``--json``; see docs/verify.md)."""
        return {"format": REPORT_FORMAT, "case": self.case, "theirs": self.theirs,
                "partial": self.partial, "status": self.status, "passed": self.passed,
                "error": None, "first_failing": self.first_failing,
                "outputs": {r.name: _result_json(r) for r in self.outputs},
                "extra": list(self.extra), "problems": self.problems,
                "not_compared": self.not_compared,
                "notes": [_diagnosis_json(d) for d in self.notes]}


def error_json(case_path, theirs_path, partial, message):
    """The JSON report when nothing could be compared (exit status 2, ``error`` set)."""
    return {"format": REPORT_FORMAT, "case": {"path": case_path}, "theirs": theirs_path,
            "partial": partial, "status": EXIT_ERROR, "passed": False, "error": message,
            "first_failing": None,
            "outputs": {}, "extra": [], "problems": [], "not_compared": [], "notes": []}


def format_table(rows):
    """The per-output table: max abs err, max rel err, tolerance, pass/fail; under it each
    failure's worst element.

    Args:
        rows: (name, shape, rtol, atol, max abs err, max rel err, passed, worst) per output,
            as ``refmeta.cases.comparison.table_rows`` gives them.
    """
    header = ("output", "shape", "max abs err", "max rel err", "rtol", "atol", "result")
    lines = [(name, str(shape), f"{abs_err:.3g}", f"{rel_err:.3g}", f"{rtol:g}", f"{atol:g}",
              "pass" if passed else "FAIL") for name, shape, rtol, atol, abs_err, rel_err, passed, _
             in rows]
    widths = [max(len(line[i]) for line in [header] + lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
            for line in [header] + lines]
    text += [_worst_line(name, worst) for name, _, _, _, _, _, passed, worst in rows if not passed]
    return "\n".join(text)


def short_list(names, every):
    """``names`` joined by commas, each group written once: ``group/*`` where ``names`` holds
    every output of ``every`` named ``group/…``, ``group/{a, b}`` where it holds some."""
    groups = {}
    for name in every:
        if "/" in name:
            groups.setdefault(name.rsplit("/", 1)[0], []).append(name)
    chosen, written, said = set(names), [], set()
    for name in names:
        group = name.rsplit("/", 1)[0] if "/" in name else None
        if group not in groups or len(groups[group]) == 1:
            written.append(name)
        elif group not in said:
            said.add(group)
            members = [n.rsplit("/", 1)[1] for n in names if n.rsplit("/", 1)[0] == group]
            if set(groups[group]) <= chosen:
                written.append(group + "/*")
            elif len(members) == 1:
                written.append(name)
            else:
                written.append(f"{group}/{{{', '.join(members)}}}")
    return ", ".join(written)


def _worst_line(name, worst):
    """The line under the table naming a failing output's worst element."""
    index, value, reference, allowed, n_nan = worst
    return (f"  {name}: worst at {list(index)}: theirs {value!r}, reference {reference!r}, "
            f"allowed error {allowed:.3g}"
            + (f"; NaN at {n_nan} place(s) where the reference has a number" if n_nan else ""))


def _number(x):
    """A float for JSON: finite as is, else "inf", "-inf" or "nan"."""
    if x is None or math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _result_json(r):
    """One entry of the JSON report's ``outputs``."""
    worst = None
    if r.worst is not None:
        index, value, reference, allowed, n_nan = r.worst
        worst = {"index": list(index), "theirs": _number(value), "reference": _number(reference),
                 "allowed_error": _number(allowed), "nan_count": n_nan}
    return {"status": r.status, "passed": (r.status == "pass") if r.compared else None,
            "shape": list(r.shape), "rtol": r.rtol, "atol": r.atol,
            "theirs_shape": None if r.theirs_shape is None else list(r.theirs_shape),
            "theirs_dtype": r.theirs_dtype, "max_abs_err": _number(r.max_abs_err),
            "max_rel_err": _number(r.max_rel_err), "worst": worst, "tasks": r.tasks,
            "problem": r.problem, "diagnoses": [_diagnosis_json(d) for d in r.diagnoses]}


def _diagnosis_json(d):
    """A Diagnosis as JSON: kind, message and its details, non-finite numbers as strings."""
    details = {k: _number(v) if isinstance(v, float) else v for k, v in d.details.items()}
    return {"kind": d.kind, "message": d.message, **details}
