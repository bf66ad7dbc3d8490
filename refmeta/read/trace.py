"""Where each equation is checked and exported: the test markers and the case registry.

Tests name the equations they check with a marker, one decorator line above the test::

    @pytest.mark.equation("maml", "(1)", "(3)")
    def test_meta_gradient_matches_finite_differences_mlp(...):

The marker is registered in setup.cfg, and pytest runs with ``--strict-markers``, so a
misspelt marker name fails.  ``markers`` reads them from the test files with ``ast`` (nothing
is imported), as decorators of test functions, of test methods, or of a ``Test`` class (all its
tests); any other use is a problem.  ``problems`` lists every marker that names a page or an
equation that does not exist, and every equation with no test.

"Exported in" comes from ``exports.EXPORTED`` and ``refmeta.cases.CASES`` (``exported``).
"""

import ast
import fnmatch
import os
import re
from dataclasses import dataclass

from refmeta.read.docstring import citations
from refmeta.read.exports import EXPORTED

MARKER = "equation"
PAPER = re.compile(r"(?:[A-Z][\w-]+ (?:et al\. |& [A-Z][\w-]+ )?\d{4},\s*)?"          # "Andrychowicz et al. 2016, "
                   r"(?:(?:Sections?|§|Eqs?\.|Equations?|Algorithm|Figure|Table)\s*\d+(?:\.\d+)*"
                   r"(?:\s*[–-]\s*\d+(?:\.\d+)*)?(?:,\s*line\s*\d+)?|Appendix\s*[A-Z](?:\.\d+)*)"
                   r"|(?<![\w.])[A-Z]\.\d+(?![\w.])")                                         # "A.2"


@dataclass(frozen=True)
class Marked:
    """One marker: the page and labels it names, the test it marks ("file::name"), its line."""
    page: str
    labels: tuple
    test: str
    line: int


def markers(folder):
    """(every marker in folder's test_*.py files, [problem]) in file and line order."""
    found, problems = [], []
    for name in sorted(os.listdir(folder)):
        if name.startswith("test_") and name.endswith(".py"):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                tree = ast.parse(f.read(), filename=name)
            _file_markers(tree, name, found, problems)
    return found, problems


def _file_markers(tree, filename, found, problems):
    placed = set()

    def visit(node, prefix, in_test_class):
        for child in node.body:
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                is_class = isinstance(child, ast.ClassDef)
                is_test = child.name.startswith("Test" if is_class else "test")
                for decorator in child.decorator_list:
                    if _is_marker(decorator):
                        placed.add(id(decorator))
                        if not is_test or (not is_class and prefix and not in_test_class):
                            problems.append(f"{filename}:{decorator.lineno}: the equation marker is on "
                                            f"{child.name}, which pytest does not collect as a test")
                            continue
                        for test in (_class_tests(child) if is_class else [child.name]):
                            found.append(Marked(*_arguments(decorator, filename, problems),
                                                f"{filename}::{prefix}{test}", decorator.lineno))
                if is_class:
                    visit(child, prefix + child.name + "::", is_test)

    visit(tree, "", False)
    functions = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        if _is_marker(node) and id(node) not in placed and id(node) not in functions:
            problems.append(f"{filename}:{node.lineno}: use the equation marker only as a decorator "
                            "of a test function or class, with the page and labels as strings")


def _is_marker(node):
    """``pytest.mark.equation``, called or not."""
    target = node.func if isinstance(node, ast.Call) else node
    return (isinstance(target, ast.Attribute) and target.attr == MARKER
            and isinstance(target.value, ast.Attribute) and target.value.attr == "mark"
            and isinstance(target.value.value, ast.Name) and target.value.value.id == "pytest")


def _class_tests(node):
    return [f"{node.name}::{child.name}" for child in node.body
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and child.name.startswith("test")]


def _arguments(decorator, filename, problems):
    """(page, labels) of a marker call; a bad one is a problem and gives ("", ())."""
    args = decorator.args if isinstance(decorator, ast.Call) else []
    keywords = decorator.keywords if isinstance(decorator, ast.Call) else []
    values = [a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    if keywords or len(values) != len(args) or len(values) < 2:
        problems.append(f"{filename}:{decorator.lineno}: write the marker as "
                        f"@pytest.mark.{MARKER}(\"PAGE\", \"(LABEL)\", ...), literal strings only")
        return "", ()
    return values[0], tuple(values[1:])


def problems(folder, modules):
    """Every problem of the markers in ``folder`` against ``modules`` {page: Module}: a marker
    naming an unknown page or label, and an equation of a page that no test names."""
    found, errors = markers(folder)
    tested = set()
    for marked in found:
        if not marked.page:
            continue
        if marked.page not in modules:
            errors.append(f"{marked.test} (line {marked.line}): no page {marked.page!r}; pages: "
                          f"{', '.join(sorted(modules))}")
            continue
        for label in marked.labels:
            if label not in modules[marked.page].equations:
                errors.append(f"{marked.test} (line {marked.line}): page {marked.page!r} has no "
                              f"equation {label}; it has {', '.join(modules[marked.page].equations) or 'none'}")
            tested.add((marked.page, label))
    for page, module in sorted(modules.items()):
        for label in module.equations:
            if (page, label) not in tested:
                errors.append(f"{page} equation {label} has no test: mark the tests that check it "
                              f"with @pytest.mark.{MARKER}(\"{page}\", \"{label}\")")
    return errors


def tests_by_equation(found):
    """{(page, label): [test ids]} from ``markers``' list."""
    index = {}
    for marked in found:
        for label in marked.labels:
            index.setdefault((marked.page, label), []).append(marked.test)
    return index


# ----- exported in -----
def exported(page, built_cases):
    """{label: [(pattern, {case id: [output names]})] or a reason string}, or the page's reason.

    ``built_cases`` {case id: the builder's dict}; the patterns are ``exports.EXPORTED[page]``'s.
    """
    entry = EXPORTED.get(page, f"no entry for {page!r} in refmeta.read.exports.EXPORTED")
    if isinstance(entry, str):
        return entry
    algorithm, table = entry
    ours = {case_id: list(case["outputs"]) for case_id, case in built_cases.items()
            if case["algorithm"] == algorithm}
    result = {}
    for label, patterns in table.items():
        if isinstance(patterns, str):
            result[label] = patterns
            continue
        result[label] = [(pattern, _matches(pattern, ours)) for pattern in patterns]
    return result


def _matches(pattern, cases):
    case_glob, _, output_glob = pattern.rpartition(":")
    found = {}
    for case_id, names in cases.items():
        if case_glob and not fnmatch.fnmatchcase(case_id, case_glob):
            continue
        hits = [n for n in names if fnmatch.fnmatchcase(n, output_glob) or fnmatch.fnmatchcase(n, output_glob + "/*")]
        if hits:
            found[case_id] = hits
    return found


def export_problems(modules, built_cases):
    """Every mismatch between ``exports.EXPORTED``, the pages' equations and the cases."""
    errors = []
    for page, module in sorted(modules.items()):
        entry = EXPORTED.get(page)
        if entry is None:
            errors.append(f"{page}: no entry in refmeta.read.exports.EXPORTED")
            continue
        if isinstance(entry, str):
            continue
        algorithm, table = entry
        if not any(case["algorithm"] == algorithm for case in built_cases.values()):
            errors.append(f"{page}: no reference case records algorithm {algorithm!r}")
        for label in sorted(set(module.equations) ^ set(table)):
            where = "has no equation" if label in table else "does not list equation"
            errors.append(f"{page}: EXPORTED {where} {label}")
        for label, carried in exported(page, built_cases).items():
            for pattern, hits in ([] if isinstance(carried, str) else carried):
                if not hits:
                    errors.append(f"{page} {label}: pattern {pattern!r} matches no output of a "
                                  f"{algorithm} case")
        if page == _algorithm_page(algorithm, modules):
            errors.extend(_cited_outputs(page, module, table, built_cases, algorithm))
    return errors


def _algorithm_page(algorithm, modules):
    """The page whose module's equations a case's meanings cite: the first page of the algorithm."""
    return next((page for page, entry in EXPORTED.items()
                 if not isinstance(entry, str) and entry[0] == algorithm and page in modules), None)


def _cited_outputs(page, module, table, built_cases, algorithm):
    errors = []
    for case_id, case in built_cases.items():
        if case["algorithm"] != algorithm:
            continue
        for name, array in case["outputs"].items():
            for label in citations(array.meaning, module.equations):
                carried = table.get(label)
                hits = {} if isinstance(carried, str) or carried is None else \
                    {n for pattern in carried for names in _matches(pattern, {case_id: [name]}).values()
                     for n in names}
                if name not in hits:
                    errors.append(f"{case_id} output {name!r} cites {label}, but EXPORTED[{page!r}] "
                                  f"does not list it under {label}")
    return errors


# ----- paper -----
def paper(equation):
    """The sections and equations of the paper cited beside an equation (its note, its lead-in
    prose), or None when only the module's opening names the paper's sections."""
    refs = []
    for text in (equation.note, equation.lead, " ".join(equation.lines)):
        refs.extend(m.group().strip() for m in PAPER.finditer(text) if m.group().strip() not in refs)
    return ", ".join(dict.fromkeys(refs)) or None


def module_refs(module):
    """The sections the module's opening paragraph (or its "Paper:" line) cites."""
    texts = [module.title] + [" ".join(b.lines) for b in module.blocks[:3] if b.kind == "prose"]
    return ", ".join(dict.fromkeys(m.group().strip() for t in texts for m in PAPER.finditer(t)))
