"""The HTML of one page: prose (Markdown) on the left, the code (Pygments) on the right.

One file, no script: the style sheet (``page.css`` and Pygments' colours) is inlined, so the
page works offline and can be mailed.  Equations keep the source's Unicode (``typeset``).
"""

import html
import re
from importlib import resources

import markdown
import pygments
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from refmeta.read.docstring import CITATION, LABEL, anchor, citations, docstring_blocks
from refmeta.read.typeset import GAP, columns, dedent, key_values, math, rows

CODE_SPAN = re.compile(r"(``.+?``|`[^`]+`|(?<![\w*])\*\*?\w[^*\n]*?(?<=\w)\*\*?(?![\w*]))")  # and *emphasis*
MARKDOWN_SPECIAL = str.maketrans({c: "\\" + c for c in "\\*_[]"} | {"<": "&lt;", ">": "&gt;", "&": "&amp;"})
STYLE = "friendly"


def render(page):
    """The whole page (a str) for ``page``, a ``refmeta.read.Page``."""
    module = page.module
    code = _highlight(module.text)
    rows = []
    for section in module.sections:
        if section.heading:
            rows.append(f'<div class="part"><h2>{_inline(section.heading, page)}</h2></div>')
        left = _intro(page) if section.kind == "intro" else _section_prose(section, page)
        rows.append(f'<section class="row" id="{_section_id(section)}"><div class="prose">{left}</div>'
                    f'<div class="code">{_code(section.lines, code)}</div></section>')
    css = resources.files("refmeta.read").joinpath("page.css").read_text(encoding="utf-8")
    css += HtmlFormatter(style=STYLE).get_style_defs(".src")
    nav = " ".join(f'<a href="#{anchor(label)}">{html.escape(label)}</a>' for label in module.equations)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{page.dotted} · refmeta read</title><style>{css}</style></head><body>'
            f'<header class="top"><span class="brand">refmeta read</span> <code>{page.relpath}</code>'
            f'<nav>{"equations " + nav if nav else "no numbered equations"}</nav></header><main>'
            + "\n".join(rows) +
            f'</main><footer>Written by <code>refmeta read {page.name}</code> from refmeta '
            f'{html.escape(page.version)}. {html.escape(page.tests_note)}</footer></body></html>\n')


def _section_id(section):
    return "intro" if section.kind == "intro" else ("fn-" + section.name if section.name
                                                      else f"code-{section.lines[0] if section.lines else 0}")


# ----- left: prose, equations and their traces -----
def _intro(page):
    module = page.module
    parts = [f"<h1>{html.escape(page.dotted)}</h1>", f'<p class="lead">{_inline(module.title, page)}</p>']
    for block in module.blocks:
        if block.kind == "prose":
            parts.append(_markdown(block.lines, page))
        elif block.kind == "display":
            parts.append(_display(block.lines, page, literal=_after_literal_marker(module.blocks, block)))
        elif block.kind == "equation":
            equation = block.equation
            parts.append(_pointer(equation, equation.computed_by[0]) if equation.computed_by
                         else _card(equation, page))
    return "\n".join(parts)


def _section_prose(section, page):
    kind = {"class": "class ", "function": "", "code": ""}[section.kind]
    parts = [f'<h3><a href="#{_section_id(section)}">{kind}{html.escape(section.name)}</a></h3>'
             if section.name else ""]
    for equation in _unique(page.module.equations.values()):
        if equation.computed_by and equation.computed_by[0] == section.name:
            parts.append(_card(equation, page))
        elif section.name in equation.computed_by:
            parts.append(_pointer(equation, equation.computed_by[0]))
    if section.docstring:
        _, blocks = docstring_blocks("\n\n" + section.docstring, equations=False)
        for block in blocks:
            if block.kind == "prose":
                parts.append(_markdown(block.lines, page))
            elif block.kind == "display":
                parts.append(f'<pre class="display">{_inline_code(dedent(block.lines), page)}</pre>')
    return "\n".join(parts)


def _after_literal_marker(blocks, block):
    """True for a display right after prose ending with "::" (reStructuredText's literal block)."""
    index = next(k for k, other in enumerate(blocks) if other is block)
    before = [b for b in blocks[:index] if b.kind != "blank"]
    return bool(before) and before[-1].kind == "prose" and before[-1].lines[-1].rstrip().endswith("::")


def _unique(equations):
    seen = []
    for equation in equations:
        if all(equation is not other for other in seen):
            seen.append(equation)
    return seen


def _card(equation, page):
    ids = "".join(f'<span id="{anchor(label)}"></span>' for label in equation.labels[1:])
    trace = page.trace(equation)
    rows = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in trace)
    return (f'<div class="card" id="{equation.anchor}">{ids}{_equation(equation)}'
            f'<dl class="trace">{rows}</dl></div>')


def _pointer(equation, where):
    return (f'<div class="pointer">{_equation(equation, where)}</div>')


def _equation(equation, where=None):
    body = rows(equation.lines)
    labels = "".join(f'<a class="no" href="#{anchor(l)}">{html.escape(l)}</a>' for l in equation.labels)
    at = f'<a class="at" href="#fn-{html.escape(where)}">at {html.escape(where)} ↓</a>' if where else ""
    note = f'<div class="note">{html.escape(equation.note)}</div>' if equation.note else ""
    return f'<div class="eq"><div class="body">{body}{note}</div><div class="labels">{labels}{at}</div></div>'


def _display(lines, page, literal=False):
    """An indented block of the module docstring: code after a "::", set as math when most
    lines are formulas, a table when its columns line up, else as it is."""
    formulas = sum(1 for line in lines if re.search(r" = | ← ", GAP.split(line.strip())[0]))
    if not literal and 2 * formulas >= len(lines):
        return f'<div class="formulas">{rows(dedent(lines))}</div>'
    table, kind = (None, "") if literal else (columns(dedent(lines)), "symbols")
    if table is None and not literal:
        table, kind = key_values(dedent(lines)), "names"
    if literal:
        code = pygments.highlight("\n".join(dedent(lines)), PythonLexer(), HtmlFormatter(style=STYLE, nowrap=True))
        return f'<pre class="display src">{code.rstrip()}</pre>'
    if table is None:
        return f'<pre class="display">{_inline_code(dedent(lines), page)}</pre>'
    width = max(len(row) for row in table)
    body = "".join("<tr>" + "".join(f'<td>{_cell(cell, k, kind, page)}</td>' for k, cell in enumerate(row))
                   + "</tr>" if len(row) == width else
                   f'<tr><td class="whole" colspan="{width}">{_inline(row[0], page)}</td></tr>' for row in table)
    return f'<table class="{kind}">{body}</table>'


def _cell(text, column, kind, page):
    """A table cell: the first column as math (symbols) or a name, the others as prose; a wide
    gap stays wide."""
    first = math if kind == "symbols" else (lambda t: html.escape(t))
    parts = [first(part) if column == 0 else _inline(part, page) for part in GAP.split(text)]
    return '<span class="gap"></span>'.join(parts)


def _markdown(lines, page):
    """Prose through Markdown: code spans, and links to equations; a line starting "1. " starts
    a paragraph of its own, numbered as written (not renumbered as a Markdown list)."""
    text = re.sub(r"::$", ":", "\n".join(line.strip() for line in lines))
    text = re.sub(r"^(\d+)\. ", r"\n\1\\. ", text, flags=re.M).strip()
    escaped = "".join(part if CODE_SPAN.fullmatch(part) else part.translate(MARKDOWN_SPECIAL)
                      for part in CODE_SPAN.split(text))       # code spans and emphasis kept as they are
    return _link_labels(markdown.markdown(escaped), page)


def _inline(text, page):
    """One line of prose: code spans and links to equations, no paragraph."""
    rendered = _markdown([text], page)
    return re.sub(r"^<p>(.*)</p>$", r"\1", rendered, flags=re.S)


def _inline_code(lines, page):
    """Preformatted lines, ``code`` spans set as code and equation labels linked."""
    escaped = html.escape("\n".join(lines), quote=False)
    return _link_labels(re.sub(r"``(.+?)``", r"<code>\1</code>", escaped), page)


def _link_labels(fragment, page):
    """Turn this module's equation labels in the text (not in code or links) into links."""
    defined = page.module.equations
    pieces = re.split(r"(<code>.*?</code>|<a .*?</a>|<[^>]+>)", fragment, flags=re.S)
    for k, piece in enumerate(pieces):
        if piece.startswith("<") and piece.endswith(">"):
            continue
        pieces[k] = CITATION.sub(lambda m: _label_link(m, piece, defined), piece)
    return "".join(pieces)


def _label_link(match, text, defined):
    cited = citations(text[max(0, match.start() - 24):match.end()], defined)
    if not cited:
        return match.group()
    return re.sub(LABEL, lambda m: f'<a href="#{anchor(m.group())}">{m.group()}</a>'
                  if m.group() in defined else m.group(), match.group())


# ----- right: the code -----
def _highlight(text):
    """Every source line as highlighted HTML (Pygments closes its spans at each line's end)."""
    formatted = pygments.highlight(text, PythonLexer(), HtmlFormatter(style=STYLE, nowrap=True))
    return formatted.split("\n")


def _code(numbers, code):
    lines = []
    for previous, number in zip([None] + numbers, numbers):
        if previous is not None and number != previous + 1:
            lines.append('<span class="ln">⋮</span>')
        lines.append(f'<span class="ln">{number}</span>{code[number - 1]}')
    return f'<pre class="src">{chr(10).join(lines)}</pre>' if lines else ""
