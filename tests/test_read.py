"""`refmeta read`: the traceability of every equation (tests, reference cases, paper), the
parsing of the module sources, the HTML and the command.  The pages in a real browser:
tests/test_read_browser.py."""

import html.parser
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from refmeta import cases, cli, read
from refmeta.read import docstring, exports, source, trace, typeset

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture(scope="module")
def modules():
    return read.modules()


@pytest.fixture(scope="module")
def built():
    return {case_id: cases.build(case_id) for case_id in cases.CASES}


# ----- every equation has a test, and every marker names an equation -----
def test_every_equation_has_a_test_and_every_marker_names_one(modules):
    problems = trace.problems(TESTS, modules)
    assert problems == [], "\n".join(problems)
    assert sum(len(m.equations) for m in modules.values()) >= 40


def test_the_check_fails_when_the_tests_of_an_equation_lose_their_markers(modules, tmp_path):
    """A real mistake: the MAML tests without their markers.  Every MAML equation is named."""
    for name in os.listdir(TESTS):
        if name.startswith("test_") and name.endswith(".py"):
            text = (TESTS / name).read_text(encoding="utf-8")
            kept = [line for line in text.splitlines(keepends=True)
                    if not line.startswith('@pytest.mark.equation("maml"')]
            (tmp_path / name).write_text("".join(kept), encoding="utf-8")
    assert trace.problems(tmp_path, modules) == [
        f'maml equation ({n}) has no test: mark the tests that check it with '
        f'@pytest.mark.equation("maml", "({n})")' for n in (1, 2, 3)]


def test_the_check_fails_on_markers_that_name_nothing_or_cannot_be_read(tmp_path):
    module_file = tmp_path / "toy.py"
    module_file.write_text('"""Toy.\n\n    y = a x       (1)\n    z = y²        (2)\n"""\n\n\n'
                           'def f(x):\n    """(1): y."""\n    return 2 * x\n', encoding="utf-8")
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_toy.py").write_text(textwrap.dedent('''\
        import pytest

        @pytest.mark.equation("toy", "(1)")
        def test_one(): pass

        @pytest.mark.equation("toy", "(7)")
        def test_seven(): pass

        @pytest.mark.equation("yot", "(1)")
        def test_wrong_page(): pass

        @pytest.mark.equation("toy", 1)
        def test_not_a_string(): pass

        @pytest.mark.equation("toy", "(2)")
        def not_a_test(): pass

        class TestMany:
            @pytest.mark.equation("toy", "(2)")
            def test_two(self): pass

        CASES = [pytest.param(1, marks=pytest.mark.equation("toy", "(2)"))]
        '''), encoding="utf-8")
    problems = trace.problems(tests, {"toy": source.read(module_file)})
    assert problems == [
        "test_toy.py:12: write the marker as @pytest.mark.equation(\"PAGE\", \"(LABEL)\", ...), "
        "literal strings only",
        "test_toy.py:15: the equation marker is on not_a_test, which pytest does not collect as a test",
        "test_toy.py:22: use the equation marker only as a decorator of a test function or class, "
        "with the page and labels as strings",
        "test_toy.py::test_seven (line 6): page 'toy' has no equation (7); it has (1), (2)",
        "test_toy.py::test_wrong_page (line 9): no page 'yot'; pages: toy"]
    found, _ = trace.markers(tests)
    assert ("test_toy.py::TestMany::test_two", ("(2)",)) in [(m.test, m.labels) for m in found]
    (tests / "test_toy.py").write_text('import pytest\n\n@pytest.mark.equation("toy", "(1)")\n'
                                       'def test_one(): pass\n', encoding="utf-8")
    assert trace.problems(tests, {"toy": source.read(module_file)}) == [
        'toy equation (2) has no test: mark the tests that check it with @pytest.mark.equation("toy", "(2)")']


def test_a_misspelt_marker_name_fails_the_run(tmp_path):
    """setup.cfg registers the marker and runs pytest with --strict-markers."""
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        'import pytest\n\n@pytest.mark.equaton("maml", "(1)")\ndef test_x(): pass\n\n'
        '@pytest.mark.equation("maml", "(1)")\ndef test_y(): pass\n', encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "'equaton' not found in `markers` configuration option" in run.stdout
    assert "'equation' not found" not in run.stdout


# ----- exported in: the case registry -----
def test_every_equation_is_listed_and_every_export_pattern_matches_a_case_output(modules, built):
    assert trace.export_problems(modules, built) == []
    maml_1 = dict(trace.exported("maml", built)["(1)"])["adapted_step*"]
    assert set(maml_1) == {c for c in cases.CASES if c.startswith("maml-")}
    assert "adapted_step3/dense0.w" in maml_1["maml-sinusoid-k3-second-order"]
    reptile_1 = dict(trace.exported("reptile", built)["(1)"])
    assert list(reptile_1["*-serial:updated"]) == ["reptile-sinusoid-serial"]
    for label in ("(3)", "(4)", "(11)"):             # every Meta Networks case, chunked ones too
        carried = {case_id for _, hits in trace.exported("metanet", built)[label] for case_id in hits}
        assert carried == {c for c in cases.CASES if c.startswith("metanet-")}, label
    assert "metanet-4way1shot-chunks2-first-order" in cases.CASES


def test_the_export_check_fails_on_a_pattern_that_matches_nothing_or_a_cited_output_left_out(
        modules, built, monkeypatch):
    table = dict(exports.EXPORTED["maml"][1], **{"(3)": ("meta_gradeint",)})
    monkeypatch.setitem(exports.EXPORTED, "maml", ("MAML", table))
    metanet = dict(exports.EXPORTED["metanet"][1], **{"(3)": ("meta_info/example",)})
    monkeypatch.setitem(exports.EXPORTED, "metanet", ("Meta Networks", metanet))
    problems = trace.export_problems(modules, built)
    assert "maml (3): pattern 'meta_gradeint' matches no output of a MAML case" in problems
    assert ("metanet-3way1shot-first-order output 'meta_info/task/conv0.w' cites (3), but "
            "EXPORTED['metanet'] does not list it under (3)") in problems
    del table["(2)"]
    assert "maml: EXPORTED does not list equation (2)" in trace.export_problems(modules, built)


# ----- reading the sources -----
def test_equations_labels_notes_and_shared_lines():
    _, blocks = docstring.docstring_blocks(textwrap.dedent("""\
        Title.

        Lead-in (Section 2.2, Eq. 1):

            a = b + c        (1)  Eq. 1
            first line
            d = e            (9), (10)
            after line
        The chain rule through (1) gives nothing new  (not a label: (x)).
        TCBlock: dilations 2^i     (3)
        """))
    equations = [b.equation for b in blocks if b.kind == "equation"]
    assert [e.labels for e in equations] == [("(1)",), ("(9)", "(10)"), ("(3)",)]
    assert equations[0].lines == ["a = b + c"] and equations[0].note == "Eq. 1"
    assert equations[0].lead == "Lead-in (Section 2.2, Eq. 1):"
    assert equations[1].lines == ["first line", "d = e", "after line"]
    assert trace.paper(equations[0]) == "Eq. 1, Section 2.2"


def test_citations_leave_out_other_papers_indices_and_undefined_labels():
    defined = {"(1)", "(2)", "(3)", "(A)"}
    assert docstring.citations("One inner step (1) for (A), and (1)–(3)", defined) == {"(1)", "(2)", "(3)", "(A)"}
    assert docstring.citations("MAML (1), MAML's Eq. (3), snail's (2), θ^(1), x_(2), (7)", defined) == set()


def test_each_equation_sits_beside_the_function_that_computes_it(modules):
    where = {(p, label): e.computed_by for p, m in modules.items() for label, e in m.equations.items()}
    assert where["maml", "(1)"] == ["inner_update"]          # not adapt: a door that reaches it
    assert where["maml", "(2)"] == ["_loss"]                 # not loss, step or meta_gradient
    assert where["maml", "(3)"] == ["meta_gradient"]         # only a door cites it
    assert where["protonet", "(2)"] == ["log_probabilities"]
    assert where["matching", "(P)"] == []                    # no function: its card stays in the intro
    assert where["matching", "(L)"] == ["class_log_probabilities", "log_probabilities"]
    assert where["snail_blocks", "(4)"] == ["causal_softmax", "attention_block"]
    assert where["fused_mlp", "(3)"] == ["_hessian_vector", "FusedMLP.meta_gradient"]
    assert where["metanet", "(9)"] == where["metanet", "(10)"] == ["meta_information"]


def test_a_door_checks_what_it_is_given_not_what_a_model_returned(tmp_path):
    """Checks inside the equations (a model held to its contract where it is called, a public
    distance that refuses an unknown name) make no door; a function that checks its own
    arguments does, and so does the private recomputation inside a check that names a NaN."""
    path = tmp_path / "toy.py"
    path.write_text(textwrap.dedent('''\
        """Toy.

            θ′ = θ − α ∇L(θ)       (1)
            p = softmax(−d(z, c))    (2)
        """

        from refmeta import checks


        def loss(params, x, config):
            """(1) on a batch: the door."""
            checks.instance("config", config, dict)
            value = inner(params, x, config)
            if not checks.all_finite(value):
                checks.first_non_finite("loss", _quantities(params, x, config))
            return value


        def _quantities(params, x, config):
            """The quantities of (1), in order, to name the first NaN."""
            yield "θ′", inner(params, x, config)


        def inner(params, x, config):
            """One step (1)."""
            return params - config["lr"] * _losses(params, x, config)


        def _losses(params, x, config):
            return checks.model_losses("config.model", config["model"](params, x), 3)


        def distance(z, c, kind="sqeuclidean"):
            checks.choice("kind", kind, ("sqeuclidean",))
            return (z - c) ** 2


        def probabilities(z, c, kind):
            """(2)."""
            return -distance(z, c, kind)
        '''), encoding="utf-8")
    module = source.read(str(path))
    assert module.equations["(1)"].computed_by == ["inner"]
    assert module.equations["(2)"].computed_by == ["probabilities"]
    path.write_text(path.read_text(encoding="utf-8").replace(
        'return params - config["lr"]', 'checks.instance("params", params, float)\n    return params - config["lr"]'),
        encoding="utf-8")
    assert source.read(str(path)).equations["(1)"].computed_by == ["inner", "loss", "_quantities"]


def test_math_sets_scripts_and_leaves_names_and_html_alone():
    assert typeset.math("θ_i^(j+1) − α ∇L_i^S") == "θ<sub>i</sub><sup>(j+1)</sup> − α ∇L<sub>i</sub><sup>S</sup>"
    assert typeset.math("x_{t − 1} W_out e^{−p}") == "x<sub>t − 1</sub> W<sub>out</sub> e<sup>−p</sup>"
    assert typeset.math("loss_emb(u) < task_reduction") == "loss_emb(u) &lt; task_reduction"


# ----- the pages -----
class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.hrefs, self.tags = [], [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        self.ids += [attrs["id"]] if "id" in attrs else []
        self.hrefs += [attrs["href"]] if "href" in attrs else []


def test_every_page_has_a_card_per_equation_with_tests_exports_and_paper(modules, tmp_path):
    for name in read.PAGES:
        text = Path(read.write(name, str(tmp_path))).read_text(encoding="utf-8")
        links = _Links()
        links.feed(text)
        assert len(links.ids) == len(set(links.ids)), name
        assert {h[1:] for h in links.hrefs} <= set(links.ids), name              # all in-page
        assert not links.tags & {"script", "link", "img", "iframe"}, name        # nothing fetched
        for label in modules[name].equations:
            assert docstring.anchor(label) in links.ids, (name, label)
        cards = text.count('<div class="card"')
        assert cards == len({id(e) for e in modules[name].equations.values()}), name
        assert text.count("<dt>tested by</dt>") == text.count("<dt>exported in</dt>") == cards
        assert "no test" not in text and "not listed" not in text, name
    maml = (tmp_path / "maml.html").read_text(encoding="utf-8")
    card = maml[maml.index('id="eq-1"'):]
    card = card[:card.index("</dl>")]
    assert "quadratic closed form" in card and "maml-sinusoid-k1-second-order" in card
    assert "Algorithm 2, line 7" in card
    assert "unverified against the paper" in (tmp_path / "metanet.html").read_text(encoding="utf-8")


def test_without_a_test_suite_the_page_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(read, "tests_folder", lambda: None)
    text = Path(read.write("reptile", str(tmp_path))).read_text(encoding="utf-8")
    assert "not known here: the test suite is not beside this installation" in text


# ----- the command -----
def test_read_lists_the_pages(capsys):
    assert cli.main(["read"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in read.PAGES)


def test_read_writes_the_page_prints_its_path_and_opens_it(tmp_path, capsys, monkeypatch):
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    assert cli.main(["read", "snail_blocks", "--out", str(tmp_path), "--open"]) == 0
    path = capsys.readouterr().out.strip()
    assert path == str(tmp_path / "snail_blocks.html") and Path(path).is_file()
    assert opened == [Path(path).as_uri()]
    assert os.listdir(tmp_path) == ["snail_blocks.html"]


@pytest.mark.parametrize("argv, status, message", [
    (["read", "mamll"], 2, "refmeta: error: unknown page 'mamll'; available: maml, "),
    (["read", "maml", "--tests", "/no/such/folder"], 1, "refmeta read: no test folder '/no/such/folder'"),
])
def test_read_refuses_an_unknown_page_or_test_folder_in_one_line(argv, status, message, capsys, tmp_path):
    assert cli.main(argv + ["--out", str(tmp_path)]) == status
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_read_without_the_docs_extra_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "markdown", None)
    monkeypatch.delitem(sys.modules, "refmeta.read.page", raising=False)
    monkeypatch.delattr(read, "page", raising=False)                # imported again, without markdown
    assert cli.main(["read", "maml", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err == "refmeta read: markdown is not installed: pip install 'refmeta[docs]'\n"
    assert os.listdir(tmp_path) == []


def test_a_failed_write_leaves_no_partial_page(monkeypatch, tmp_path):
    (tmp_path / "maml.html").write_text("the old page", encoding="utf-8")
    original = os.replace

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        read.write("maml", str(tmp_path))
    monkeypatch.setattr(os, "replace", original)
    assert os.listdir(tmp_path) == ["maml.html"]
    assert (tmp_path / "maml.html").read_text(encoding="utf-8") == "the old page"
