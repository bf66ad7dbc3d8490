"""The ``refmeta`` command line: listing the demos, a demo's own --help, bad names and options."""

import importlib
import io
import os
import subprocess
import sys
import zipfile

import pytest

from helpers import omniglot_folder
from refmeta import cli, progress
from refmeta.data import omniglot
from refmeta.demos import fewshot_omniglot, train


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


def test_an_unknown_demo_option_is_one_line_before_anything_runs():
    result = refmeta("demo", "maml-sinusoid", "--no-such-option")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "refmeta: error: unrecognized arguments: --no-such-option "
        "(see `refmeta demo maml-sinusoid --help`)"]


def test_no_command_is_a_usage_error():
    result = refmeta()
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "refmeta: error: the following arguments are required: COMMAND (see `refmeta --help`)"]


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


# ----- bad input to a demo: one line, exit status 2, nothing trained -----
def one_line_error(capsys, argv):
    """Run ``refmeta ARGV`` in process; the one stderr line, after checking the status and stdout."""
    assert cli.main(argv) == cli.EXIT_USAGE
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("refmeta: error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


@pytest.fixture
def no_training(monkeypatch):
    """Training, or reading the Omniglot zips, fails the test: the error must come first."""
    monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr(omniglot, "load_characters", lambda *a, **k: pytest.fail("read the zips"))


@pytest.mark.parametrize("argv, message", [
    (["--inner-lr", "nan"], "argument --inner-lr: expected a finite number >= 0; got nan"),
    (["--inner-lr", "inf"], "argument --inner-lr: expected a finite number >= 0; got inf"),
    (["--meta-lr", "-0.1"], "argument --meta-lr: expected a finite number >= 0; got -0.1"),
    (["--meta-lr", "fast"], "argument --meta-lr: invalid float value: 'fast'"),
    (["--iterations", "-1"], "argument --iterations: expected an integer >= 0; got -1"),
    (["--meta-batch-size", "0"], "argument --meta-batch-size: expected an integer >= 1; got 0"),
    (["--n-support", "2.5"], "argument --n-support: invalid integer value: '2.5'"),
    (["--seed", "-1"], "argument --seed: expected an integer >= 0; got -1"),
    (["--hidden", "0"], "unrecognized arguments: --hidden 0"),
])
def test_a_bad_sinusoid_option_is_one_line(capsys, no_training, argv, message):
    line = one_line_error(capsys, ["demo", "maml-sinusoid", *argv])
    assert message in line and line.endswith("(see `refmeta demo maml-sinusoid --help`)")


@pytest.mark.parametrize("demo, argv, message", [
    ("protonet-omniglot", ["--hidden", "0"], "--hidden must be a positive integer; got 0"),
    ("protonet-omniglot", ["--train-way", "1"], "--train-way must be >= 2; got 1"),
    ("protonet-omniglot", ["--lr", "nan"], "argument --lr: expected a finite number >= 0; got nan"),
    ("protonet-omniglot", ["--max-train-minutes", "0"], "argument --max-train-minutes: expected a finite number > 0"),
    ("protonet-omniglot", ["--test-fraction", "nan"], "argument --test-fraction: expected a finite number; got nan"),
    ("protonet-omniglot", ["--test-fraction", "1"], "--test-fraction must lie in (0, 1); got 1.0"),
    ("matching-omniglot", ["--attention-scale", "-1"], "argument --attention-scale: expected a finite number > 0"),
    ("matching-omniglot", ["--read-steps", "-1"], "argument --read-steps: expected an integer >= 0; got -1"),
    ("snail-omniglot", ["--attention-init-gain", "nan"], "argument --attention-init-gain: expected a finite number > 0"),
    ("snail-omniglot", ["--n-way", "1"], "argument --n-way: expected an integer >= 2; got 1"),
    ("metanet-omniglot", ["--hidden", "0"], "argument --hidden: expected an integer >= 1; got 0"),
    ("metanet-omniglot", ["--episodes", "0"], "argument --episodes: expected an integer >= 1; got 0"),
    ("metanet-omniglot", ["--fast-init-scale=-inf"], "argument --fast-init-scale: expected a finite number > 0"),
    ("metanet-omniglot", ["--fast-conv-blocks", "7"], "--fast-conv-blocks must be 0..5 (--n-blocks) or 'all'; got '7'"),
])
def test_a_bad_omniglot_option_is_one_line(capsys, no_training, tmp_path, demo, argv, message):
    line = one_line_error(capsys, ["demo", demo, "--data", str(tmp_path / "absent"), "--out",
                                   str(tmp_path / "out"), *argv])
    assert message in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("demo", ["protonet-omniglot", "matching-omniglot", "snail-omniglot", "metanet-omniglot"])
def test_a_missing_data_folder_is_one_line(capsys, no_training, tmp_path, demo):
    line = one_line_error(capsys, ["demo", demo, "--fast", "--data", str(tmp_path / "absent"),
                                   "--out", str(tmp_path / "out")])
    assert f"--data {tmp_path / 'absent'}: expected a folder holding images_background_small1.zip" in line
    assert line.endswith("it is not a folder")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("demo", ["protonet-omniglot", "snail-omniglot", "metanet-omniglot"])
def test_unreadable_data_is_one_line(capsys, tmp_path, demo):
    data = tmp_path / "data"
    data.mkdir()
    for name in fewshot_omniglot.ZIPS + ("all_runs.zip",):
        (data / name).write_bytes(b"not a zip at all")
    line = one_line_error(capsys, ["demo", demo, "--fast", "--data", str(data), "--out", str(tmp_path / "out")])
    assert f"{data / fewshot_omniglot.ZIPS[0]}: not a readable zip" in line
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_drawing_of_the_wrong_size_is_one_line_naming_it(capsys, tmp_path):
    from PIL import Image
    data = tmp_path / "data"
    data.mkdir()
    for name in fewshot_omniglot.ZIPS + ("all_runs.zip",):
        with zipfile.ZipFile(data / name, "w") as archive:
            for c, side in enumerate((105, 105, 28)):
                buffer = io.BytesIO()
                Image.new("1", (side, side), 1).save(buffer, format="PNG")
                archive.writestr(f"set/Alphabet/character{c}/0001_01.png", buffer.getvalue())
    line = one_line_error(capsys, ["demo", "protonet-omniglot", "--fast", "--data", str(data),
                                   "--out", str(tmp_path / "out")])
    assert "member 'set/Alphabet/character2/0001_01.png' is 28×28 pixels; Omniglot drawings are 105×105" in line


def unwritable_outs(tmp_path):
    """Output folders that cannot be created: below a regular file, the file itself, and in /proc."""
    (tmp_path / "a-file").write_text("")
    outs = [tmp_path / "a-file" / "out", tmp_path / "a-file"]
    return outs + ([os.path.join("/proc", "refmeta-out")] if os.path.isdir("/proc") else [])


def test_an_output_folder_that_cannot_be_written_is_found_before_training(capsys, no_training, tmp_path):
    for out in unwritable_outs(tmp_path):
        line = one_line_error(capsys, ["demo", "maml-sinusoid", "--fast", "--out", str(out)])
        assert line.startswith(f"refmeta: error: --out {out}: cannot create or write the output folder")


@pytest.mark.parametrize("demo", ["protonet-omniglot", "snail-omniglot", "metanet-omniglot"])
def test_an_omniglot_demos_output_folder_is_checked_before_reading_the_data(capsys, no_training, tmp_path,
                                                                            monkeypatch, demo):
    from refmeta.demos import metanet_omniglot, snail_omniglot
    monkeypatch.setattr(snail_omniglot, "train", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr(metanet_omniglot, "train_model", lambda *a, **k: pytest.fail("trained"))
    for out in unwritable_outs(tmp_path):
        line = one_line_error(capsys, ["demo", demo, "--fast", "--data", str(omniglot_folder()),
                                       "--out", str(out)])
        assert f"--out {out}: cannot create or write the output folder" in line


def test_options_that_the_data_cannot_hold_are_one_line_before_training(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("trained"))
    line = one_line_error(capsys, ["demo", "protonet-omniglot", "--fast", "--data", str(omniglot_folder()),
                                   "--out", str(tmp_path), "--train-way", "5000"])
    assert line == "refmeta: error: --train-way 5000: needs 5000 training classes; the data has 776"


def test_a_bad_option_is_exactly_one_line_on_stderr_of_the_process(tmp_path):
    for argv in (["demo", "maml-sinusoid", "--inner-lr", "nan"],
                 ["demo", "protonet-omniglot", "--data", str(tmp_path / "absent")]):
        result = refmeta(*argv)
        assert result.returncode == 2 and result.stdout == ""
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("refmeta: error: "), \
            result.stderr


def test_an_error_inside_training_is_not_hidden(monkeypatch, tmp_path):
    """Only bad input becomes one line; a ValueError from the training code keeps its traceback."""
    def loop(*args, **kwargs):
        raise ValueError("a bug in the training loop")
    monkeypatch.setattr(train, "train", loop)
    with pytest.raises(ValueError, match="a bug in the training loop"):
        cli.main(["demo", "maml-sinusoid", "--fast", "--out", str(tmp_path)])


def test_ctrl_c_during_a_demo_exits_130_with_one_line(monkeypatch, tmp_path, capsys):
    def loop(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "train", loop)
    assert cli.main(["demo", "maml-sinusoid", "--fast", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err.splitlines() == [
        "refmeta demo maml-sinusoid: interrupted; the files written are whole"]


@pytest.mark.parametrize("argv, message", [
    (["demo", "no-such-demo"], "unknown demo 'no-such-demo'; available: check-with-torch"),
    (["demo", "--fast"], "unrecognized arguments: --fast (see `refmeta --help`)"),
    (["cases"], "the following arguments are required: ACTION"),
    (["cases", "export"], "the following arguments are required: DIR"),
    (["verify", "only-one.json"], "the following arguments are required: THEIRS.npz"),
    (["no-such-command"], "argument COMMAND: invalid choice: 'no-such-command'"),
])
def test_other_bad_command_lines_are_one_line(capsys, argv, message):
    assert message in one_line_error(capsys, argv)
