"""A module's source cut for its page: its docstring (``docstring``), its sections, who computes what.

Only ``ast``, ``tokenize`` and text: nothing here imports or runs the module it reads.

Who computes an equation.  Among the functions that cite it, the doors are set aside; of the
others, the ones that reach no other citing function (the innermost) compute it, the first in
the source holding the equation's card and the rest showing the equation too.  Doors are used
only when no other function cites it.

A door checks what it is given: it hands one of its own arguments (or a field or item of one)
to ``checks``, the input checks, or it calls a private function of the module that is a door.
A private function called inside a check's arguments computes what is checked (the
recomputation that names the first NaN) and is a door too.  Two uses of ``checks`` make no
door: a check of what a call returned (a user's model held to its contract where the equations
call it) and a call of a public function that checks its own arguments (a door of its own,
called by name).
"""

import ast
import io
import re
import tokenize
from dataclasses import dataclass, field

from refmeta.read.docstring import citations, docstring_blocks

SEPARATOR = re.compile(r"^#\s*-{3,}\s*(?P<title>.*?)\s*-{3,}\s*$")  # "# ----- the front door -----"
DOOR_NAME = "checks"


@dataclass
class Section:
    """A row of the page: prose on the left, source lines on the right.  ``kind`` is "intro"
    (the module docstring beside the imports), "function", "class" or "code" (statements alone)."""
    kind: str
    name: str
    lines: list                       # source line numbers shown
    docstring: str = ""
    heading: str = ""
    cites: set = field(default_factory=set)
    refers: set = field(default_factory=set)   # names of this module's functions it uses
    checks_given: bool = False        # hands one of its arguments to ``checks``
    checked: set = field(default_factory=set)  # names it calls inside a ``checks`` call's arguments


@dataclass
class Module:
    path: str
    text: str
    title: str
    blocks: list
    equations: dict                   # label -> Equation (a shared line: several labels, one object)
    sections: list


def read(path):
    """Parse the module at ``path``: its docstring blocks, equations and sections."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    tree = ast.parse(text)
    docstring = ast.get_docstring(tree, clean=True) or ""
    title, blocks = docstring_blocks(docstring)
    equations = {}
    for block in blocks:
        if block.kind == "equation":
            for label in block.equation.labels:
                if label in equations:
                    raise ValueError(f"{path}: equation {label} is defined twice in the docstring")
                equations[label] = block.equation
    sections = _sections(tree, text.splitlines(), set(equations))
    module = Module(path, text, title, blocks, equations, sections)
    _assign(module, tree)
    return module


# ----- the code -----
def _sections(tree, source, defined):
    """The intro, then one section per top-level function or class (and one per method), and
    one per run of other statements; separator comments become headings."""
    body = tree.body[1:] if ast.get_docstring(tree) is not None else tree.body
    first_def = next((i for i, node in enumerate(body) if _is_def(node)), len(body))
    doc_end = tree.body[0].end_lineno if body is not tree.body else 0
    intro_end = body[first_def - 1].end_lineno if first_def else doc_end
    sections = [Section("intro", "", _shown(source, doc_end + 1, intro_end)[1])]
    previous_end, pending = intro_end, []
    for node in body[first_def:]:
        if _is_def(node):
            if pending:
                sections.append(_code_section(source, pending, previous_end))
                previous_end, pending = pending[-1].end_lineno, []
            sections.extend(_def_sections(node, source, previous_end, defined))
            previous_end = node.end_lineno
        else:
            pending.append(node)
    if pending:
        sections.append(_code_section(source, pending, previous_end))
    return sections


def _is_def(node):
    return isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))


def _shown(source, first, last, hidden=()):
    """(heading, line numbers) of source lines first..last (1-based): leading blank lines and
    ``hidden`` dropped, a separator comment taken out as the heading."""
    heading, shown = "", []
    for number in range(first, last + 1):
        line = source[number - 1]
        separator = SEPARATOR.match(line.strip())
        if separator:
            heading = separator.group("title")
        elif number not in hidden and (shown or line.strip()):
            shown.append(number)
    while shown and not source[shown[-1] - 1].strip():
        shown.pop()
    return heading, shown


def _code_section(source, nodes, previous_end):
    heading, shown = _shown(source, previous_end + 1, nodes[-1].end_lineno)
    return Section("code", "", shown, heading=heading)


def _def_sections(node, source, previous_end, defined, prefix=""):
    """The section of a function, or of a class header followed by one per method."""
    name = prefix + node.name
    docstring = ast.get_docstring(node, clean=True) or ""
    doc_lines = set()
    if docstring:
        doc_node = node.body[0]
        doc_lines = set(range(doc_node.lineno, doc_node.end_lineno + 1))
    if not isinstance(node, ast.ClassDef):
        heading, shown = _shown(source, previous_end + 1, node.end_lineno, doc_lines)
        comments = " ".join(_comments(source, node.lineno, node.end_lineno))
        return [Section("function", name, shown, docstring, heading,
                        citations(docstring + " " + comments, defined), _refers(node),
                        *_checks(node))]
    methods = [child for child in node.body if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))]
    header_end = methods[0].lineno - 1 - len(methods[0].decorator_list) if methods else node.end_lineno
    heading, shown = _shown(source, previous_end + 1, header_end, doc_lines)
    sections = [Section("class", name, shown, docstring, heading, citations(docstring, defined))]
    end = header_end
    for method in methods:
        start = min([method.lineno] + [d.lineno for d in method.decorator_list]) - 1
        sections.extend(_def_sections(method, source, max(end, start - _attached(source, start)),
                                      defined, name + "."))
        end = method.end_lineno
    return sections


def _attached(source, line):
    """How many comment lines sit directly above line number ``line + 1``."""
    count = 0
    while line - count >= 1 and source[line - count - 1].strip().startswith("#"):
        count += 1
    return count


def _comments(source, first, last):
    text = "\n".join(source[first - 1:last])
    try:
        return [tok.string for tok in tokenize.generate_tokens(io.StringIO(text).readline)
                if tok.type == tokenize.COMMENT]
    except (tokenize.TokenError, IndentationError):
        return []


def _refers(node):
    """Names a function uses that are not its own locals: Name loads and ``self.x`` attributes."""
    local = {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)} if hasattr(node, "args") else set()
    local |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    attributes = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
                  and isinstance(n.value, ast.Name) and n.value.id in ("self", "cls")}
    return (names - local) | attributes


def _checks(node):
    """(whether the function hands one of its own arguments, or a field or item of one, to a
    ``checks.<name>(...)`` call; the names it calls inside such a call's arguments)."""
    arguments = {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
    given, checked = False, set()
    for call in ast.walk(node):
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and isinstance(call.func.value, ast.Name) and call.func.value.id == DOOR_NAME):
            values = call.args + [keyword.value for keyword in call.keywords]
            given = given or any(_root(value) in arguments for value in values)
            checked |= {inner.func.id for value in values for inner in ast.walk(value)
                        if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name)}
    return given, checked


def _root(value):
    """The name an argument expression reads from, through fields, items and ``*``; None for
    anything else (a call's result, a constant)."""
    while isinstance(value, (ast.Attribute, ast.Subscript, ast.Starred)):
        value = value.value
    return value.id if isinstance(value, ast.Name) else None


def _assign(module, tree):
    """Fill each equation's ``computed_by`` (see the module docstring)."""
    functions = [s for s in module.sections if s.kind == "function"]
    by_short = {}
    for section in functions:
        by_short.setdefault(section.name.split(".")[-1], []).append(section.name)
    calls = {s.name: {t for n in s.refers for t in by_short.get(n, ()) if t != s.name} for s in functions}
    reach = {name: _reachable(name, calls) for name in calls}
    doors = _doors(functions, calls, by_short)
    for label, equation in module.equations.items():
        if equation.computed_by:
            continue                                    # a shared line: done for its first label
        citing = [s.name for s in functions if any(l in s.cites for l in equation.labels)]
        pool = [name for name in citing if name not in doors] or citing
        inner = [name for name in pool if not (reach[name] & (set(pool) - {name}))]
        equation.computed_by = inner + [name for name in pool if name not in inner]


def _doors(functions, calls, by_short):
    """The names of the doors among ``functions`` (see the module docstring)."""
    private = {s.name for s in functions if s.name.split(".")[-1].startswith("_")}
    doors = {s.name for s in functions if s.checks_given}
    doors |= {t for s in functions for n in s.checked for t in by_short.get(n, ()) if t in private}
    while True:
        more = {name for name in calls if name not in doors and calls[name] & doors & private}
        if not more:
            return doors
        doors |= more


def _reachable(name, calls):
    seen, todo = set(), [name]
    while todo:
        for callee in calls.get(todo.pop(), ()):
            if callee not in seen:
                seen.add(callee)
                todo.append(callee)
    return seen


def _section(module, name):
    return next(s for s in module.sections if s.name == name)


def module_path(dotted):
    """The source file of a module given by its dotted name, found without importing it."""
    import importlib.util
    spec = importlib.util.find_spec(dotted)
    if spec is None or not spec.origin:
        raise ValueError(f"no source for module {dotted!r}")
    return spec.origin

