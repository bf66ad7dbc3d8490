"""The ``refmeta`` command line: listing the demos, a demo's own --help, bad names and options."""

import importlib
import io
import os
import subprocess
import sys

import pytest

from refmeta import cli, progress


def refmeta(*argv):
    """Run ``python -m refmeta ARGV`` in a fresh interpreter; return the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "refmeta", *argv], capture_output=True,
                          text=True, timeout=120)


def test_demo_without_a_name_lists_every_demo_with_its_description():
    result = refmeta("demo")
    assert result.returncode == 0, result.stderr
    assert "maml-sinusoid" in cli.DEMOS
    lines = [line.split(None, 1) for line in result.stdout.splitlines()[1:]]
    for name, module in cli.DEMOS.items():
        first_line = importlib.import_module(module).__doc__.strip().splitlines()[0]
        assert [name, first_line] in lines


def test_a_demos_help_shows_its_own_options():
    result = refmeta("demo", "maml-sinusoid", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: refmeta demo maml-sinusoid")
    for option in ("--iterations", "--seed", "--fast", "--meta-batch-size", "--inner-lr", "--out"):
        assert option in result.stdout


def test_an_unknown_demo_exits_2_and_names_the_known_ones():
    result = refmeta("demo", "no-such-demo")
    assert result.returncode == 2
    assert "unknown demo 'no-such-demo'" in result.stderr
    assert "maml-sinusoid" in result.stderr
    assert result.stdout == ""


def test_an_unknown_demo_option_is_a_usage_error_before_anything_runs():
    result = refmeta("demo", "maml-sinusoid", "--no-such-option")
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-option" in result.stderr
    assert "usage: refmeta demo maml-sinusoid" in result.stderr


def test_no_command_is_a_usage_error():
    result = refmeta()
    assert result.returncode == 2
    assert "usage: refmeta" in result.stderr


def test_main_returns_the_exit_status_in_process(capsys):
    assert cli.main(["demo"]) == 0
    assert "maml-sinusoid" in capsys.readouterr().out
    assert cli.main(["demo", "nope"]) == 2
    assert "unknown demo 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("module", sorted(cli.DEMOS.values()))
def test_every_registered_demo_has_the_demo_interface(module):
    demo = importlib.import_module(module)
    assert demo.__doc__ and demo.__doc__.strip().splitlines()[0]
    for name in ("add_arguments", "run", "main"):
        assert callable(getattr(demo, name)), f"{module} lacks {name}()"


def test_the_console_script_is_installed_and_lists_the_demos():
    script = os.path.join(os.path.dirname(sys.executable), "refmeta")
    if not os.path.exists(script):
        pytest.skip(f"no console script at {script} (package not installed with pip)")
    result = subprocess.run([script, "demo"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "maml-sinusoid" in result.stdout


def test_the_plain_progress_line_without_tqdm_ends_at_the_total_with_the_postfix():
    stream = io.StringIO()
    bar = progress.PlainProgress(range(3), desc="train", stream=stream)
    for i in bar:
        bar.set_postfix(loss=i)
    bar.set_postfix(loss="after close")  # ignored: the line is finished
    text = stream.getvalue()
    assert text.startswith("\rtrain:") and text.endswith("\rtrain: 3/3 loss=2\n")
    assert text.count("\n") == 1


def test_progress_falls_back_to_the_plain_line_when_tqdm_is_missing(monkeypatch):
    monkeypatch.setattr(progress, "tqdm", None)
    assert isinstance(progress.progress(range(2), desc="x"), progress.PlainProgress)
