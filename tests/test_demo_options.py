"""demos/options.py: what every demo's command line shares."""

import argparse
import sys

import pytest

from refmeta.demos import options


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


def test_a_missing_matplotlib_gives_no_figure(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)    # import raises ImportError
    assert options.figure((4, 3)) is None
    assert "matplotlib is not installed" in capsys.readouterr().out
