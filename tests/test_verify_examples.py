"""The two worked examples of docs/verify.md run as written: higher's MAML on refmeta.cases.torch
and a plain-JAX MAML on refmeta.cases.jax each write a THEIRS.npz that ``refmeta verify`` passes."""

import io
import re
from pathlib import Path

import pytest

from helpers import import_or_skip
from refmeta import cases
from refmeta.cases import verify

DOC = Path(__file__).resolve().parents[1] / "docs" / "verify.md"


def example(name):
    """The python block that follows ``<!-- example: name -->`` in docs/verify.md."""
    found = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)\n```", DOC.read_text(), re.S)
    assert found, f"docs/verify.md has no example {name!r}"
    return found.group(1)


@pytest.mark.parametrize("name, modules", [("torch", ("torch", "higher")), ("jax", ("jax",))])
def test_the_worked_example_passes_refmeta_verify(tmp_path, monkeypatch, name, modules):
    for module in modules:
        import_or_skip(module, f"pip install 'refmeta[{name}]'" + (" higher" if module == "higher" else ""))
    code = example(name)
    case_id = re.search(r'"cases/([\w-]+)\.json"', code).group(1)
    cases.export(str(tmp_path / "cases"), [case_id])
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"docs/verify.md, example {name}", "exec"), {"__name__": "__main__"})
    out = io.StringIO()
    status = verify.main(f"cases/{case_id}.json", "theirs.npz", out=out, err=io.StringIO())
    assert status == 0, out.getvalue()
    assert f"all {len(verify.load_case(f'cases/{case_id}.json')[0]['outputs'])} outputs pass" in out.getvalue()
