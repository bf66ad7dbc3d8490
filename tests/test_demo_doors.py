"""A demo's output folder is checked before training, and training that diverges ends in one
line naming the step and the option to lower; no traceback, no partial file."""

import os
import re

import pytest

from helpers import omniglot_folder
from refmeta import cli, maml
from refmeta.demos import maml_sinusoid, train


def error_lines(capsys, argv, status):
    assert cli.main(argv) == status
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err.strip().splitlines()


@pytest.fixture
def no_training(monkeypatch):
    monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("trained"))   # every demo's loop


# ----- the output folder's files, before any training -----
@pytest.mark.parametrize("demo, name, make", [
    ("maml-sinusoid", "results.json", os.mkdir),
    ("maml-sinusoid", "learning_curves.png", os.mkfifo),
    ("protonet-omniglot", "results.json", os.mkdir),
    ("protonet-omniglot", "learning_curve.png", lambda path: os.symlink(os.devnull, path)),
])
def test_an_output_file_whose_place_is_taken_is_refused_before_training(capsys, no_training, tmp_path,
                                                                        demo, name, make):
    make(tmp_path / name)
    what = {os.mkdir: "a folder, not a regular file", os.mkfifo: "a pipe, not a regular file"}.get(
        make, "a symbolic link")
    argv = ["demo", demo, "--fast", "--out", str(tmp_path)]
    if demo == "protonet-omniglot":
        argv += ["--data", str(omniglot_folder())]
    (line,) = error_lines(capsys, argv, cli.EXIT_USAGE)
    assert line.startswith(f"refmeta: error: --out {tmp_path}: {name} is {what} (refmeta replaces only ")
    assert line.endswith(f"; the demo writes its {name} there")
    assert os.listdir(tmp_path) == [name]                     # nothing written, no temporary file


# ----- divergence: one line, the step, the option -----
SINUSOID = [("maml-sinusoid", ["--inner-lr", "1e300"], "MAML training",
             "--inner-lr (now 1e+300) or --meta-lr (now 0.001)"),
            ("reptile-sinusoid", ["--inner-lr", "1e300"], "Reptile training",
             "--inner-lr (now 1e+300) or --meta-step-size (now 0.1)")]
OMNIGLOT = [("maml-omniglot", ["--inner-lr", "1e300"], "MAML (first order) held-out check",
             "--inner-lr (now 1e+300) or --meta-lr (now 0.003)"),
            ("reptile-omniglot", ["--inner-lr", "1e300"], "Reptile held-out check",
             "--inner-lr (now 1e+300) or --meta-step-size (now 1)"),
            ("protonet-omniglot", ["--lr", "1e300"], "protonet training", "--lr (now 1e+300)"),
            ("matching-omniglot", ["--lr", "1e300"], "matching-fce training", "--lr (now 1e+300)"),
            ("snail-omniglot", ["--lr", "1e300"], "SNAIL training", "--lr (now 1e+300)"),
            ("metanet-omniglot", ["--lr", "1e300"], "MetaNet training", "--lr (now 1e+300)")]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")          # the overflow itself
@pytest.mark.parametrize("demo, argv, what, lower", SINUSOID + OMNIGLOT)
def test_a_diverging_demo_ends_in_one_line_naming_the_step_and_the_option(capsys, tmp_path, demo, argv,
                                                                          what, lower):
    data = ["--data", str(omniglot_folder())] if demo.endswith("omniglot") else []
    lines = error_lines(capsys, ["demo", demo, "--fast", "--no-plots", "--out", str(tmp_path / "out"),
                                 *data, *argv], 1)
    # what became NaN or inf is named by refmeta.checks (a leaf of params, the loss, a gradient)
    assert re.fullmatch(rf"refmeta demo {re.escape(demo)}: {re.escape(what)} diverged at step \d+: "
                        rf".+; lower {re.escape(lower)}", lines[-1]), lines[-1]
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_diverging_demo_script_exits_1_with_the_same_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as raised, pytest.warns(RuntimeWarning):
        maml_sinusoid.main(["--fast", "--no-plots", "--out", str(tmp_path), "--inner-lr", "1e300"])
    assert raised.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(r"MAML training diverged at step 1: .+; lower --inner-lr \(now 1e\+300\) or "
                     r"--meta-lr \(now 0\.001\)$", last), last


def test_an_error_that_is_no_divergence_keeps_its_traceback(monkeypatch, tmp_path):
    def step(*args):
        raise ValueError("a bug in a step")
    monkeypatch.setattr(maml, "step", step)
    with pytest.raises(ValueError, match="a bug in a step"):
        cli.main(["demo", "maml-sinusoid", "--fast", "--no-plots", "--out", str(tmp_path)])
