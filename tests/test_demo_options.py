"""demos/options.py: what every demo's command line shares."""

import argparse
import inspect
import math
import sys

import numpy as np
import pytest

from refmeta.demos import (fewshot_omniglot, maml_sinusoid, metanet_omniglot, options,
                           snail_omniglot)


def test_integer_at_least_parses_and_refuses_with_both_numbers():
    parse = options.integer_at_least(2)
    assert parse("2") == 2 and parse("17") == 17
    with pytest.raises(argparse.ArgumentTypeError, match="expected an integer >= 2; got 1"):
        parse("1")
    with pytest.raises(ValueError):
        parse("two")


def test_sizes_take_the_option_else_fast_or_full():
    full, fast = {"episodes": 100, "hidden": 64}, {"episodes": 3, "hidden": 4}
    args = argparse.Namespace(fast=False, episodes=None, hidden=8)
    assert options.sizes(args, full, fast) == {"episodes": 100, "hidden": 8}
    args.fast = True
    assert options.sizes(args, full, fast) == {"episodes": 3, "hidden": 8}


def test_main_parses_the_demo_options_and_returns_what_run_returns():
    def add_arguments(parser):
        parser.add_argument("--n", type=options.integer_at_least(1), default=1)
        options.add_size_switches(parser, {"n": 2})
    assert options.main("doc", add_arguments, lambda args: (args.n, args.fast, args.no_plots),
                        ["--n", "5", "--fast"]) == (5, True, False)
    with pytest.raises(SystemExit):
        options.main("doc", add_arguments, lambda args: None, ["--n", "0"])


def test_main_prints_bad_input_as_one_line_and_exits_2(capsys):
    def run(args):
        raise options.UsageError("--data nowhere: expected a folder")
    with pytest.raises(SystemExit) as raised:
        options.main("doc", lambda parser: None, run, [])
    assert raised.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].endswith(": error: --data nowhere: expected a folder")
    with pytest.raises(SystemExit) as raised:
        options.main("doc", lambda parser: parser.add_argument("--x", type=options.positive_float),
                     lambda args: None, ["--x", "nan"])
    assert raised.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "error: argument --x: expected a finite number > 0; got nan (see `" in line


@pytest.mark.parametrize("parse, good, bad", [
    (options.finite_float, {"1e-3": 1e-3, "-2": -2.0, "0": 0.0}, ["nan", "inf", "-inf", "NaN"]),
    (options.positive_float, {"1e-3": 1e-3, "5": 5.0}, ["0", "-0.0", "-1", "nan", "inf"]),
    (options.nonnegative_float, {"0": 0.0, "0.01": 0.01}, ["-1e-9", "nan", "-inf", "inf"]),
    (options.probability, {"0": 0.0, "1": 1.0, "0.5": 0.5}, ["1.5", "-0.1", "nan"]),
    (options.seed, {"0": 0, "2017": 2017}, ["-1"]),
])
def test_option_types_refuse_nan_inf_and_the_wrong_sign(parse, good, bad):
    for text, value in good.items():
        assert parse(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=f"got {text}$"):
            parse(text)
    with pytest.raises(ValueError):
        parse("ten")


def test_a_parser_error_is_a_usage_error_naming_the_help():
    parser = options.parser("refmeta demo x", "doc")
    parser.add_argument("--n", type=options.integer_at_least(1))
    with pytest.raises(options.UsageError, match=r"argument --n: expected an integer >= 1; got 0 "
                                                 r"\(see `refmeta demo x --help`\)"):
        parser.parse_args(["--n", "0"])
    assert isinstance(options.UsageError("x"), ValueError)


def test_the_data_folder_check_names_what_is_missing(tmp_path):
    (tmp_path / "a.zip").write_bytes(b"")
    options.check_data_folder(tmp_path, ("a.zip",))
    with pytest.raises(options.UsageError, match=r"expected a folder holding a.zip, b.zip; missing b.zip"):
        options.check_data_folder(tmp_path, ("a.zip", "b.zip"))
    with pytest.raises(options.UsageError, match="it is not a folder"):
        options.check_data_folder(tmp_path / "absent", ("a.zip",))


def test_the_output_folder_is_created_or_refused(tmp_path):
    options.check_out_folder(tmp_path / "new" / "out")
    assert (tmp_path / "new" / "out").is_dir() and list((tmp_path / "new" / "out").iterdir()) == []
    (tmp_path / "file").write_text("")
    for out, reason in ((tmp_path / "file" / "out", "Not a directory"), (tmp_path / "file", "File exists")):
        with pytest.raises(options.UsageError, match=f"--out {out}: cannot create or write the output "
                                                     f"folder \\({reason}\\)"):
            options.check_out_folder(out)


def test_input_errors_become_usage_errors_with_their_message(tmp_path):
    with pytest.raises(options.UsageError, match="^bad zip$"):
        with options.input_errors():
            raise ValueError("bad zip")
    with pytest.raises(options.UsageError, match=f"^{tmp_path / 'x'}: No such file or directory$"):
        with options.input_errors():
            open(tmp_path / "x")
    with pytest.raises(KeyError):                      # not input: left alone
        with options.input_errors():
            raise KeyError("bug")


def test_needs_that_the_data_cannot_meet_are_usage_errors():
    options.check_needs(("--n-way 5", 5, 5, "classes"))
    with pytest.raises(options.UsageError, match="^--n-way 6: needs 6 classes; the data has 5$"):
        options.check_needs(("--k-shot 1", 1, 20, "drawings"), ("--n-way 6", 6, 5, "classes"))


# ----- the 95% confidence interval, one formula for every demo -----
def test_mean_and_ci95_is_1_96_sample_std_over_root_n():
    values = np.array([1.0, 2.0, 3.0, 4.0])
    mean, ci95 = options.mean_and_ci95(values)
    assert mean == 2.5
    assert ci95 == pytest.approx(1.96 * math.sqrt(5 / 3) / 2, rel=1e-15)   # std with ddof=1: √(5/3)
    mean, ci95 = options.mean_and_ci95([0.75])
    assert mean == 0.75 and math.isnan(ci95)                                 # no spread from one value
    for bad in ([], np.zeros((2, 2))):
        with pytest.raises(ValueError, match="non-empty 1-D"):
            options.mean_and_ci95(bad)


def test_every_demo_reports_the_one_ci95():
    accuracies = np.array([0.2, 0.6, 0.8, 1.0, 1.0])
    mean, ci95 = options.mean_and_ci95(accuracies)
    assert fewshot_omniglot.summarise(accuracies)["ci95"] == 100 * ci95
    assert snail_omniglot.summarise(accuracies)["ci95"] == 100 * ci95
    summary = maml_sinusoid.summarise(np.array([0.2, 0.6, 0.8, 1.0, 1.0, 1e6]))   # 1e6 diverged
    assert (summary["mean"], summary["ci95"]) == (mean, ci95) and summary["n_diverged"] == 1
    for demo in (fewshot_omniglot, snail_omniglot, maml_sinusoid, metanet_omniglot):
        source = inspect.getsource(demo)
        assert "options.mean_and_ci95(" in source and ".std(" not in source   # no CI of its own


def test_a_missing_matplotlib_gives_no_figure(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)    # import raises ImportError
    assert options.figure((4, 3)) is None
    assert "matplotlib is not installed" in capsys.readouterr().out
