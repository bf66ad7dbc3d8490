"""A docstring cut into prose, displays and numbered equations; the labels a text cites.

Equations.  An equation of a module is a line of its docstring that ends with its label after
two or more spaces (or one, on an indented line), a label being a number or a capital letter
with an optional digit in parentheses: ``(1)``, ``(A)``, ``(F1)``; several labels may share a
line, ``(9), (10)``, and a note may follow the label after two spaces (``(1)  Eq. 1``).
Consecutive indented lines form one display; a display with labels is cut at its labelled
lines, each label taking the unlabelled lines above it, and the last one those below too.

Citations.  A label written elsewhere, in a function's docstring or in a comment of its body,
is a citation: ``One inner step (1)``, ``# (R)``, a range ``(1)–(3)``.  A label just after a
name or an abbreviation (``MAML (1)``, ``Eq. (3)``) or a possessive (``snail's (1)``) is another
paper's or module's equation, and one right after a letter, ``^`` or ``_`` is an index (θ^(1)):
neither is one of this module's.
"""

import re
from dataclasses import dataclass, field

LABEL = r"\((?:\d{1,2}|[A-Z]\d?)\)"
LABELS = re.compile(rf"{LABEL}(?:,\s*{LABEL})*")
ONE_LABEL = re.compile(LABEL)
CITATION = re.compile(rf"(?P<first>{LABEL})(?:\s*[–-]\s*(?P<last>\(\d{{1,2}}\)))?")
FOREIGN = re.compile(r"(?:\b(?:[A-Z][a-z]*\.|[A-Z]{2,}[a-z]*|[A-Z][a-z]+)|['’]s)\s*$")  # MAML (1), Eq. (3)


@dataclass
class Equation:
    """One equation: its labels, its display lines (label and note cut off), the note after the
    label, the prose just before it, and where it sits in the docstring (a block index)."""
    labels: tuple
    lines: list
    note: str = ""
    lead: str = ""
    block: int = 0
    computed_by: list = field(default_factory=list)   # qualified function names, card first

    @property
    def anchor(self):
        return anchor(self.labels[0])


@dataclass
class Block:
    """A piece of a docstring: "prose" (lines of text), "display" (indented lines without a
    label) or "equation" (``equation`` set)."""
    kind: str
    lines: list
    equation: Equation = None


def anchor(label):
    """"(F1)" -> "eq-F1": the id of an equation's card."""
    return "eq-" + label.strip("()")


def docstring_blocks(docstring, equations=True):
    """(title, [Block]): the first paragraph, then the rest cut into prose, displays and (with
    ``equations``) equations."""
    lines = docstring.splitlines()
    end = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
    title, blocks, i = " ".join(s.strip() for s in lines[:end]), [], end
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            blocks.append(Block("blank", []))
            i += 1
        elif _indent(line) >= 4:
            j = i
            while j < len(lines) and lines[j].strip() and _indent(lines[j]) >= 4:
                j += 1
            blocks.extend(_display(lines[i:j], display=True) if equations else [Block("display", lines[i:j])])
            i = j
        else:
            if equations and _definition(line, display=False):
                blocks.extend(_display([line], display=False))
            elif blocks and blocks[-1].kind == "prose":
                blocks[-1].lines.append(line)
            else:
                blocks.append(Block("prose", [line]))
            i += 1
    for index, block in enumerate(blocks):
        if block.kind == "equation":
            block.equation.block = index
            block.equation.lead = _lead(blocks, index)
    return title, blocks


def _indent(line):
    return len(line) - len(line.lstrip(" "))


def _definition(line, display):
    """The match of the labels that make ``line`` an equation, or None."""
    for match in LABELS.finditer(line):
        before, after = line[:match.start()], line[match.end():]
        gap = len(before) - len(before.rstrip(" "))
        if not before.strip() or gap < (1 if display else 2):
            continue
        if not after.strip() and (display or gap >= 2) or after.startswith("  "):
            return match
    return None


def _display(lines, display):
    """Blocks of a run of lines: one "display", or one "equation" per labelled line."""
    labelled = [i for i, line in enumerate(lines) if _definition(line, display)]
    if not labelled:
        return [Block("display", list(lines))]
    blocks, start = [], 0
    for k, i in enumerate(labelled):
        stop = len(lines) if k == len(labelled) - 1 else i + 1
        match = _definition(lines[i], display)
        shown = [*lines[start:i], lines[i][:match.start()].rstrip(), *lines[i + 1:stop]]
        labels = tuple(ONE_LABEL.findall(match.group()))
        equation = Equation(labels, _dedent(shown), note=lines[i][match.end():].strip())
        blocks.append(Block("equation", shown, equation))
        start = stop
    return blocks


def _dedent(lines):
    margin = min(_indent(line) for line in lines if line.strip())
    return [line[margin:] for line in lines]


def _lead(blocks, index):
    """The prose just before block ``index``, as one string: back over the equations of the
    same display and at most one blank line."""
    back, blanks = index - 1, 0
    while back >= 0 and (blocks[back].kind == "equation" or blocks[back].kind == "blank" and blanks == 0):
        blanks += blocks[back].kind == "blank"
        back -= 1
    return " ".join(line.strip() for line in blocks[back].lines) if back >= 0 and blocks[back].kind == "prose" else ""


def citations(text, defined):
    """The labels of ``defined`` that ``text`` cites (ranges expanded, foreign ones left out)."""
    found = set()
    for match in CITATION.finditer(text):
        before = text[max(0, match.start() - 24):match.start()]
        if FOREIGN.search(before) or before[-1:].isalnum() or before[-1:] in ("^", "_"):
            continue                                        # another paper's, or θ^(1)
        labels = [match.group("first")]
        if match.group("last") and match.group("first")[1:-1].isdigit():
            first, last = int(match.group("first")[1:-1]), int(match.group("last")[1:-1])
            labels = [f"({n})" for n in range(first, last + 1)]
        found.update(label for label in labels if label in defined)
    return found
