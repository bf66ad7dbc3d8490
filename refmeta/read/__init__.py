"""``refmeta read``: one page per module, its paper's prose beside its code (docs/reading.md).

    refmeta read                 list the pages
    refmeta read NAME [--out DIR] [--tests DIR] [--open]
                                 write DIR/NAME.html (default DIR: ./refmeta-read) and print its path

A page sets the module docstring beside the imports, then every function and class beside its
docstring, with each equation the docstring numbers beside the function that computes it
(``source``) and, under the equation, the tests that check it, the reference-case outputs that
carry it and the paper's section (``trace``).  The HTML needs Pygments and Markdown, the
``docs`` extra; listing the pages needs neither.  The tests are read from the test suite
beside a source checkout (or ``--tests DIR``); an installed copy without one says so.
"""

import html
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import refmeta
from refmeta.read import source, trace

PAGES = {
    "maml": "refmeta.maml",
    "reptile": "refmeta.reptile",
    "protonet": "refmeta.protonet",
    "matching": "refmeta.matching",
    "snail": "refmeta.snail",
    "metanet": "refmeta.metanet",
    "snail_blocks": "refmeta.nn.snail_blocks",
    "metanet_parts": "refmeta.nn.metanet_parts",
    "fused_mlp": "refmeta.fast.fused_mlp",
    "gradcheck": "refmeta.gradcheck",
}
DEFAULT_FOLDER = "refmeta-read"


class ReadError(ValueError):
    """A page that cannot be made or written; the message says what and where."""


def modules():
    """{page: source.Module} of every page, parsed from its source file."""
    return {name: source.read(source.module_path(dotted)) for name, dotted in PAGES.items()}


def tests_folder():
    """refmeta's test suite beside this source checkout (tests/ next to refmeta/), or None."""
    folder = Path(__file__).resolve().parents[2] / "tests"
    return folder if (folder / "conftest.py").is_file() and (folder / "test_read.py").is_file() else None


def describe():
    """One line per page: its name and the first line of its module's docstring."""
    width = max(len(name) for name in PAGES)
    lines = ["pages (write one with `refmeta read NAME`, open it with `--open`):"]
    for name, dotted in PAGES.items():
        module = source.read(source.module_path(dotted))
        lines.append(f"  {name.ljust(width)}  {dotted}: {module.title.split('. ')[0].rstrip('.')}")
    return "\n".join(lines)


@dataclass
class Page:
    """Everything one page shows; ``page.render`` turns it into HTML."""
    name: str
    dotted: str
    module: source.Module
    tests: dict            # {(page, label): [test ids]}, or None without a test suite
    exported: object       # trace.exported's answer
    version: str = refmeta.__version__

    @property
    def relpath(self):
        return self.dotted.replace(".", "/") + ".py"

    @property
    def tests_note(self):
        return ("Tests are read from the test suite's equation markers." if self.tests is not None else
                "No test suite beside this installation: run from a source checkout to see the tests.")

    def trace(self, equation):
        """[(row name, HTML)]: tested by, exported in, paper."""
        return [("tested by", self._tested(equation)), ("exported in", self._exported(equation)),
                ("paper", self._paper(equation))]

    def _tested(self, equation):
        if self.tests is None:
            return "not known here: the test suite is not beside this installation"
        found = list(dict.fromkeys(t for label in equation.labels for t in self.tests.get((self.name, label), ())))
        if not found:
            return '<span class="missing">no test</span>'
        items = []
        for test in found:
            filename, _, name = test.partition("::")
            words = name.split("::")[-1].removeprefix("test_").replace("_", " ")
            items.append(f'<li title="tests/{html.escape(test)}"><span class="file">{html.escape(filename)}'
                         f'</span> {html.escape(words)}</li>')
        return f'<ul class="tests">{"".join(items)}</ul>'

    def _exported(self, equation):
        if isinstance(self.exported, str):
            return html.escape(self.exported)
        rows = []
        for label in equation.labels:
            prefix = f"{html.escape(label)}: " if len(equation.labels) > 1 else ""
            carried = self.exported.get(label, "not listed")
            if isinstance(carried, str):
                rows.append(f"<li>{prefix}{html.escape(carried)}</li>")
                continue
            by_cases = {}                                  # outputs found in the same cases: one line
            for pattern, hits in carried:
                group = pattern.rpartition(":")[2]
                deeper = any(name != group for names in hits.values() for name in names)
                by_cases.setdefault(tuple(hits), []).append(f"<code>{html.escape(group)}"
                                                            f"{'/…' if deeper else ''}</code>")
            for case_ids, outputs in by_cases.items():
                cases = ", ".join(html.escape(case_id) for case_id in case_ids)
                rows.append(f'<li>{prefix}{" ".join(outputs)} <span class="cases">in {cases}</span></li>')
        return f'<ul class="exports">{"".join(rows)}</ul>'

    def _paper(self, equation):
        cited = trace.paper(equation)
        module_refs = trace.module_refs(self.module)
        text = cited or (f"the module cites {module_refs}" if module_refs else
                         "none: the module names no paper section")
        if "unverified" in self.module_text:
            text += " (equation numbers unverified against the paper's text: see the module docstring)"
        return html.escape(text)

    @property
    def module_text(self):
        return " ".join(line for block in self.module.blocks for line in block.lines)


def build(name, tests=None):
    """The Page of ``name``; ``tests`` is the test folder (default: the checkout's, if any)."""
    if name not in PAGES:
        raise ReadError(f"unknown page {name!r}; pages: {', '.join(PAGES)}")
    from refmeta import cases
    folder = tests if tests is not None else tests_folder()
    index = None
    if folder is not None:
        if not os.path.isdir(folder):
            raise ReadError(f"no test folder {str(folder)!r}")
        index = trace.tests_by_equation(trace.markers(folder)[0])
    built = {case_id: cases.build(case_id) for case_id in cases.CASES}
    module = source.read(source.module_path(PAGES[name]))
    return Page(name, PAGES[name], module, index, trace.exported(name, built))


def write(name, folder=DEFAULT_FOLDER, tests=None):
    """Write ``folder``/NAME.html atomically (a temporary file, then a rename); returns its path."""
    from refmeta.read import page as html_page
    text = html_page.render(build(name, tests))
    try:
        os.makedirs(folder, exist_ok=True)
        target = os.path.abspath(os.path.join(folder, name + ".html"))
        handle, temporary = tempfile.mkstemp(prefix=f".{name}-", suffix=".html", dir=folder)
    except OSError as error:
        raise ReadError(f"cannot write to {folder!r}: {error.strerror or error}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return target
