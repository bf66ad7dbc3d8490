"""What every demo's command line shares: option types that refuse bad values, sizes that
--fast shrinks, the Omniglot folders, the output folder, the 95% confidence interval, ``main``,
and figures that are skipped when matplotlib is missing.

Bad input is a ``UsageError`` (a ValueError): a bad option (argparse's own errors too, through
``Parser``), a data folder without its files, an output folder that cannot be written, data
that cannot be read.  ``refmeta demo NAME`` and ``python demos/NAME.py`` print its message as
one line and exit with status 2; nothing is trained first.
"""

import argparse
import contextlib
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from refmeta import checks, disk
from refmeta.data import fetch
from refmeta.demos import train

EXIT_USAGE = 2  # argparse's status for a bad command line


class UsageError(ValueError):
    """A bad option, data folder or output folder; the command line prints it as one line."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are UsageError (one line at the command line), not
    argparse's usage text and exit; ``--help`` still prints the help."""

    def error(self, message):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# ----- option types -----
def integer_at_least(minimum):
    """An argparse type: an int >= minimum, or a usage error naming both."""
    def parse(text):
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {value}")
        return value
    parse.__name__ = "integer"  # argparse names the type in its error messages
    return parse


def _float_type(accepts, expected):
    """An argparse type: a float for which ``accepts(value)`` holds (NaN and ±inf never do)."""
    def parse(text):
        value = float(text)
        if not (math.isfinite(value) and accepts(value)):
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text}")
        return value
    parse.__name__ = "float"  # argparse: "invalid float value: 'x'" for text that is no number
    return parse


finite_float = _float_type(lambda x: True, "a finite number")
positive_float = _float_type(lambda x: x > 0, "a finite number > 0")
nonnegative_float = _float_type(lambda x: x >= 0, "a finite number >= 0")
probability = _float_type(lambda x: 0 <= x <= 1, "a number in [0, 1]")
seed = integer_at_least(0)  # numpy.random.default_rng takes no negative seed


def increasing_integers(minimum):
    """An argparse type: comma-separated integers >= minimum in increasing order ("1,2,5"), as
    a tuple, or a usage error naming what was given."""
    def parse(text):
        values = tuple(int(part) for part in text.split(","))
        if any(v < minimum for v in values) or any(b <= a for a, b in zip(values, values[1:])):
            raise argparse.ArgumentTypeError(f"expected increasing integers >= {minimum}, "
                                             f"comma-separated; got {text}")
        return values
    parse.__name__ = "integer list"  # argparse: "invalid integer list value: 'x'"
    return parse


# ----- sizes, folders and input errors -----
def add_size_switches(parser, fast, figures="the learning-curve figure"):
    """--fast (the sizes ``fast``, a run of seconds for the tests) and --no-plots."""
    described = ", ".join(f"{name.replace('_', '-')} {value}" for name, value in fast.items())
    parser.add_argument("--fast", action="store_true", help=f"a run of seconds (tests): {described}")
    parser.add_argument("--no-plots", action="store_true", help=f"skip {figures}")


def add_omniglot_folders(parser, name):
    """--data (the folder of Omniglot zips, default the data home's, which `refmeta data fetch
    omniglot` fills), --out (default runs/NAME) and --cache (OUT/cache)."""
    add = parser.add_argument
    add("--data", default=str(fetch.omniglot_dir()),
        help="folder holding images_background_small{1,2}.zip and all_runs.zip (default "
             f"%(default)s, which `{fetch.fetch_command().replace('%', '%%')}` fills)")
    add("--out", default=os.path.join("runs", name), help=f"results folder (default runs/{name})")
    add("--cache", help="cache folder for the decoded zips (default OUT/cache)")


def sizes(args, full, fast):
    """Each size: the option if given, else its value in ``fast`` (with --fast) or ``full``."""
    defaults = fast if args.fast else full
    return {name: getattr(args, name) if getattr(args, name) is not None else value
            for name, value in defaults.items()}


def check_data_folder(folder, names):
    """UsageError unless ``folder`` is a folder holding every file in ``names``; for the data
    home's Omniglot folder (the default --data) the message gives the command that fetches them."""
    folder = Path(folder)
    missing = [name for name in names if not (folder / name).is_file()]
    if missing and folder == fetch.omniglot_dir():
        raise UsageError(f"no Omniglot data in {folder} (missing {', '.join(missing)}): "
                         f"fetch it with `{fetch.fetch_command()}`")
    if missing:
        raise UsageError(f"--data {folder}: expected a folder holding {', '.join(names)}; "
                         f"{'it is not a folder' if not folder.is_dir() else 'missing ' + ', '.join(missing)}")


def check_out_folder(folder, files=("results.json",)):
    """Create the output folder and write a file there (removed at once), or UsageError: an
    output folder that cannot be written, or ``files`` (the names the demo writes there) that
    are not regular files to replace (a folder, a link, a device), are found before any training."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UsageError(f"--out {folder}: cannot create or write the output folder "
                         f"({error.strerror or error})") from None
    for name in files:
        problem = disk.write_problem(os.path.join(folder, name))
        if problem:
            raise UsageError(f"--out {folder}: {name} {problem}; the demo writes its {name} there")


def check_needs(*needs):
    """UsageError for the first ``(what, needed, available, of_what)`` with needed > available:
    the episodes an option asks for against what the data holds."""
    for what, needed, available, of_what in needs:
        if needed > available:
            raise UsageError(f"{what}: needs {needed} {of_what}; the data has {available}")


def check_memory(*needs):
    """UsageError for the first ``(option, what, nbytes)`` whose bytes cannot fit in this process's
    memory (``refmeta.checks.fits``): a size typed on the command line is refused before anything
    is allocated.  ``nbytes`` is a lower bound: the arrays the option asks for at once."""
    for option, what, nbytes in needs:
        try:
            checks.fits(option, what, nbytes, at_least=True)
        except ValueError as error:
            raise UsageError(str(error)) from None


@contextlib.contextmanager
def input_errors():
    """Inside, a ValueError, TypeError or OSError is the user's input (an option, a data file):
    it is raised again as a UsageError with the same message."""
    try:
        yield
    except UsageError:
        raise
    except OSError as error:
        where = f"{error.filename}: " if error.filename and error.strerror else ""
        raise UsageError(f"{where}{error.strerror if where else error}") from error
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from error


# ----- results -----
def mean_and_ci95(values):
    """(mean, half-width of the 95% confidence interval) of 1-D ``values``:
    1.96 · std / √n with the sample standard deviation (ddof = 1); NaN for n = 1."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"mean_and_ci95 needs a non-empty 1-D array; got shape {values.shape}")
    n = values.size
    spread = float(np.std(values, ddof=1)) if n > 1 else math.nan
    return float(np.mean(values)), 1.96 * spread / math.sqrt(n)


def figure(figsize):
    """A matplotlib Figure, or None after saying so when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed (pip install 'refmeta[plots]'): skipping the figures")
        return None
    return Figure(figsize=figsize)


# ----- running a demo -----
def parser(prog, description):
    """The demo's parser: its docstring as the help, errors as UsageError."""
    return Parser(prog=prog, description=description,
                  formatter_class=argparse.RawDescriptionHelpFormatter)


def main(description, add_arguments, run, argv=None):
    """Parse argv with the demo's options (its module docstring as the help) and run it.
    A UsageError is printed as one line, ``PROG: error: MESSAGE``, and exits with status 2;
    training that diverged (``train.Diverged``) as ``PROG: MESSAGE``, status 1."""
    demo_parser = parser(None, description)
    add_arguments(demo_parser)
    try:
        return run(demo_parser.parse_args(argv))
    except UsageError as error:
        print(f"{demo_parser.prog}: error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except train.Diverged as error:
        print(f"{demo_parser.prog}: {error}", file=sys.stderr)
        raise SystemExit(train.EXIT_DIVERGED) from None
