"""Unicode math and aligned text as HTML, with no change to the characters written.

``math`` sets x_i, x_{…}, x^(k) and x^{…} as sub- and superscripts (``loss_emb``, a name with
two or more letters on both sides, stays as it is) and escapes the rest.  ``rows`` sets lines
of formulas, keeping the columns the source spaces with two or more blanks apart.  ``columns``
and ``key_values`` read a block whose columns line up as a table.
"""

import html
import re
import unicodedata

GAP = re.compile(r" {2,}")


def rows(lines):
    """Formula lines as HTML: a line's columns (split at wide gaps) as chunks, indents kept."""
    margin = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    rows = []
    for line in lines:
        indent = (len(line) - len(line.lstrip()) - margin) * 0.45
        chunks = "".join(f'<span class="chunk">{math(chunk)}</span>' for chunk in GAP.split(line.strip()))
        rows.append(f'<div class="eqline" style="padding-left:{indent:.2f}em">{chunks}</div>')
    return "".join(rows)


def math(text):
    """Unicode math as HTML: x_i, x_{…}, x^(k), x^{…} as sub- and superscripts, the rest escaped."""
    out, i = [], 0
    while i < len(text):
        mark = text[i]
        if mark in "_^" and i > 0 and not text[i - 1].isspace() and i + 1 < len(text):
            script, end = _script(text, i + 1)
            if script and not (mark == "_" and _is_name(text, i, script, text[i + 1])):
                tag = "sub" if mark == "_" else "sup"
                out.append(f"<{tag}>{math(script)}</{tag}>")
                i = end
                continue
        out.append(html.escape(mark))
        i += 1
    return "".join(out)


def _script(text, start):
    """(the script after _ or ^ at ``start``, where it ends): {…} without its braces, (…) with
    its parentheses, or a run of letters, digits and primes."""
    if text[start] in "{(":
        close, depth = {"{": "}", "(": ")"}[text[start]], 0
        for j in range(start, len(text)):
            depth += (text[j] == text[start]) - (text[j] == close)
            if depth == 0:
                return (text[start + 1:j] if text[start] == "{" else text[start:j + 1]), j + 1
        return "", start
    end = start
    while end < len(text) and (text[end].isalnum() or text[end] in "′'" or unicodedata.combining(text[end])):
        end += 1
    return text[start:end], end


def _is_name(text, at, script, first):
    """True for a name such as loss_emb: two or more letters on both sides of the underscore."""
    start = at
    while start > 0 and (text[start - 1].isalpha() or unicodedata.combining(text[start - 1])):
        start -= 1
    letters = sum(1 for c in text[start:at] if c.isalpha())
    return first not in "{(" and letters >= 2 and len(script) >= 2


def columns(lines):
    """Rows of cells when every line breaks at the same gutters (two or more blank columns,
    measured as shown: combining marks take no width), or None."""
    shown = [[c for c in line if not unicodedata.combining(c)] for line in lines]
    width = max(len(s) for s in shown)
    blank = [all(c >= len(s) or s[c] == " " for s in shown) for c in range(width)]
    cuts = [c for c in range(1, width - 1) if blank[c] and blank[c + 1] and not blank[c - 1]]
    if len(lines) < 2 or not cuts:
        return None
    rows = []
    for line in lines:
        cells, position, start, bounds = [], 0, 0, cuts + [width]
        for k, character in enumerate(line):
            if not unicodedata.combining(character):
                if position == bounds[len(cells)]:
                    cells.append(line[start:k].strip())
                    start = k
                position += 1
        cells.append(line[start:].strip())
        rows.append(cells + [""] * (len(bounds) - len(cells)))
    return rows


def key_values(lines):
    """Rows [name, text] of a "name  text" list whose text may go on under itself, a line
    with no name being a row of its own ([text]); None unless two rows have names."""
    first = re.search(r"\S {2,}(?=\S)", lines[0])
    if first is None:
        return None
    column, rows = first.end(), []
    for line in lines:
        name = re.match(r"(\S+) {2,}(?=\S)", line)
        if line[:column].strip() == "" and rows:
            rows[-1][-1] += " " + line.strip()                       # the text goes on
        elif name and len(line) - len(line.lstrip()) == 0:
            rows.append([name.group(1), line[name.end():].strip()])
        else:
            rows.append([line.strip()])
    return rows if sum(len(row) == 2 for row in rows) >= 2 else None


def dedent(lines):
    margin = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return [line[margin:] for line in lines]
