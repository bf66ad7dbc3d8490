"""The order in which a case computes its outputs, and the stage each belongs to.

``computation_order(document)`` sorts the case's outputs by where its ``procedure`` defines
them: the first step whose text defines the output (``name = …``, ``name[t, j] = …``), else
the first step that mentions it.  A name in the text may be a template: ``{j}`` or
``{j+1}`` stands for a number and ``<name>`` (any ``<…>``) for a parameter name, so
``adapted_step{j+1}/<name>`` covers ``adapted_step1/dense0.w``.  Outputs of one step are
ordered by the numbers their templates stand for (block 0 before block 1, step 1 before
step 2), then by where the text names them; an output the procedure never names goes last.
A case may give the order outright: an optional list ``computation_order`` of such templates,
read in place of the procedure, one entry per step.

``checkpoints(document, order)`` refines that order for the stage diagnoses
(``refmeta.cases.stages``): a ``(T, inner_steps)`` loss is computed a column at a time, column
j just after the parameters of inner step j, so each column is a checkpoint of its own there.
The *forward* checkpoints are those before the first output that comes from a gradient (a
group ``gradient``, ``meta_gradient``, ``updated``, ``adapted_step<j>`` or ``task_start``, or a
meaning with ∂ or ∇): the network and loss at the case's parameters, before any step.  Where
tasks start from different points (``task_start`` outputs: serial Reptile) only task 0's
first loss is taken at the parameters.
"""

import re
from typing import NamedTuple

_NUMBER = r"\{[^{}\s]*\}"
_PARAMETER = r"<[^<>\s]*>"
GRADIENT_GROUPS = ("gradient", "meta_gradient")
STEP_GROUP = re.compile(r"adapted_step(\d+)$")


def computation_order(document):
    """The case's output names in the order of computation (module docstring)."""
    names = list(document["outputs"])
    steps = _steps(document)
    keys = {name: _key(name, steps, index, len(steps)) for index, name in enumerate(names)}
    return sorted(names, key=keys.__getitem__)


def unplaced(document):
    """The outputs that no step of the procedure (or of ``computation_order``) names: they go
    last, in the JSON's order."""
    steps = _steps(document)
    return [name for index, name in enumerate(document["outputs"])
            if _key(name, steps, index, len(steps))[0] == len(steps)]


def _steps(document):
    """The texts the order is read from: ``computation_order`` if the case gives a list of
    strings, else ``procedure`` (non-strings left out)."""
    given = document.get("computation_order")
    if isinstance(given, list) and given and all(isinstance(step, str) for step in given):
        return given
    procedure = document.get("procedure")
    return [step for step in procedure if isinstance(step, str)] if isinstance(procedure, list) else []


def _key(name, steps, index, n_steps):
    """(step, numbers its templates stand for, position in the step, JSON index)."""
    pattern = _name_pattern(name)
    definition = re.compile(pattern.pattern + r"(?:\[[^\]]*\])?\s*=(?!=)")
    for search in (definition, pattern):
        for s, text in enumerate(steps):
            found = search.search(text)
            if found:
                numbers = tuple(int(number) for group, number in _numbered(name, found) if group)
                return s, numbers, found.start(), index
    return n_steps, (), 0, index


def _name_pattern(name):
    """A regex for ``name`` written out or as a template: each digit run may be ``{…}``, each
    segment after the first may be ``<…>``; not part of a longer name."""
    parts, k = [], 0
    for i, segment in enumerate(name.split("/")):
        literal = ""
        for piece in re.split(r"(\d+)", segment):
            if piece.isdigit():
                literal += f"(?:(?P<n{k}>{_NUMBER})|{piece})"
                k += 1
            else:
                literal += re.escape(piece)
        parts.append(literal if i == 0 else f"(?:{_PARAMETER}|{literal})")
    return re.compile(r"(?<![\w./])" + "/".join(parts) + r"(?![\w/]|\.\w)")


def _numbered(name, found):
    """[(matched as a template?, the number in ``name``)] per digit run of ``name``, in order
    (the runs inside a segment that a ``<…>`` matched count as written out)."""
    numbers = re.findall(r"\d+", name)
    return [(found.groupdict().get(f"n{k}") is not None, number) for k, number in enumerate(numbers)]


class Checkpoint(NamedTuple):
    """One place in the computation: output ``name``, the part ``index`` of it (None: all),
    ``label`` as printed, and whether it is computed before any gradient (``forward``)."""
    name: str
    index: object
    label: str
    forward: bool


def checkpoints(document, order):
    """[Checkpoint] in the order of computation (module docstring)."""
    outputs = document["outputs"]
    steps = {}
    for name in order:
        found = STEP_GROUP.match(name.split("/", 1)[0])
        if found and "/" in name:
            steps[int(found.group(1))] = name                # the last output of step j
    serial = any(name.startswith("task_start/") for name in order)
    per_column, placed = {}, []
    for name in order:
        shape, meaning = outputs[name]["shape"], str(outputs[name].get("meaning", ""))
        if meaning.startswith("(T, inner_steps)") and len(shape) == 2 and shape[1] >= 2:
            per_column[name] = shape[1]
    forward = True
    for name in order:
        if _from_a_gradient(name, outputs[name]):
            forward = False
        if name not in per_column:
            placed.append(Checkpoint(name, None, name, forward))
        else:
            first = (0, 0) if serial else (slice(None), 0)
            placed.append(Checkpoint(name, first, f"{name} (column 0: before the first inner "
                                     "step)", forward))
            if serial:                 # the other tasks start where the previous ones left
                placed.append(Checkpoint(name, (slice(1, None), 0), f"{name} (column 0, tasks "
                                         "1 on: before their first inner step)", False))
            placed += [Checkpoint(name, (slice(None), j), f"{name} (column {j})", False)
                       for j in range(1, per_column[name]) if j not in steps]
        for column_name, n_columns in per_column.items():
            for j in range(1, n_columns):
                if steps.get(j) == name:
                    placed.append(Checkpoint(column_name, (slice(None), j),
                                             f"{column_name} (column {j}: after inner step {j})",
                                             False))
    return placed


def _from_a_gradient(name, entry):
    """True for an output computed through a gradient or a step (module docstring)."""
    group = name.split("/", 1)[0]
    meaning = str(entry.get("meaning", ""))
    return (group in GRADIENT_GROUPS + ("updated", "task_start") or bool(STEP_GROUP.match(group))
            or "∂" in meaning or "∇" in meaning)
