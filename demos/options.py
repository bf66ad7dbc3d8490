"""What every demo's command line shares: sizes that --fast shrinks, integer options with a
floor, the Omniglot folders, ``main``, and figures that are skipped when matplotlib is missing."""

import argparse
import os


def integer_at_least(minimum):
    """An argparse type: an int >= minimum, or a usage error naming both."""
    def parse(text):
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {value}")
        return value
    parse.__name__ = "integer"  # argparse names the type in its error messages
    return parse


def add_size_switches(parser, fast, figures="the learning-curve figure"):
    """--fast (the sizes ``fast``, a run of seconds for the tests) and --no-plots."""
    described = ", ".join(f"{name.replace('_', '-')} {value}" for name, value in fast.items())
    parser.add_argument("--fast", action="store_true", help=f"a run of seconds (tests): {described}")
    parser.add_argument("--no-plots", action="store_true", help=f"skip {figures}")


def add_omniglot_folders(parser, name):
    """--data (the folder of Omniglot zips), --out (default runs/NAME) and --cache (OUT/cache)."""
    add = parser.add_argument
    add("--data", required=True, help="folder holding images_background_small{1,2}.zip and all_runs.zip")
    add("--out", default=os.path.join("runs", name), help=f"results folder (default runs/{name})")
    add("--cache", help="cache folder for the decoded zips (default OUT/cache)")


def sizes(args, full, fast):
    """Each size: the option if given, else its value in ``fast`` (with --fast) or ``full``."""
    defaults = fast if args.fast else full
    return {name: getattr(args, name) if getattr(args, name) is not None else value
            for name, value in defaults.items()}


def figure(figsize):
    """A matplotlib Figure, or None after saying so when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed (pip install 'refmeta[plots]'): skipping the figures")
        return None
    return Figure(figsize=figsize)


def main(description, add_arguments, run, argv=None):
    """Parse argv with the demo's options (its module docstring as the help) and run it."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))
