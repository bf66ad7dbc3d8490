"""The ``refmeta`` command line (also ``python -m refmeta``).

    refmeta demo                      list the demos, one line each
    refmeta demo NAME [options]       run a demo
    refmeta demo NAME --help          that demo's options
    refmeta cases list                list the reference cases
    refmeta cases export DIR [ID ...] write the cases (default: all) into DIR, atomically
    refmeta verify CASE.json THEIRS.npz   compare another implementation's outputs with a case
                 [--partial] [--json FILE]   (only the outputs given; a JSON report too)
    refmeta data fetch omniglot [--dir HOME] [--from SOURCE]
                                      fetch the Omniglot zips, SHA-256 checked (docs/data.md)
    refmeta read                      list the pages: a module's paper beside its code
    refmeta read NAME [--out DIR] [--tests DIR] [--open]
                                      write DIR/NAME.html, print its path (docs/reading.md)

Each subcommand is a function ``_add_<name>_command(subparsers)`` that builds its
parser and sets ``func``, the handler called with the parsed arguments; the
handler returns the exit status.  A new subcommand is one more such function.

A demo is a module with a docstring (its first line is the description listed
here), ``add_arguments(parser)``, ``run(args) -> dict`` and ``main()``.

Errors are one line on stderr, never a traceback; a reader of stdout that goes away
(``refmeta verify … | head``) ends the command quietly with status 141:
    refmeta: error: MESSAGE        a bad command line, demo option, data folder, data file or
                                   output folder (``refmeta.demos.options.UsageError``);
                                   exit status 2, found before any training
    refmeta demo NAME: MESSAGE     training diverged: the step, what became NaN or inf, the
                                   options to lower (``refmeta.demos.train``); exit status 1.
                                   Ctrl-C or SIGTERM: the first during training ends training
                                   there, in one line, and the demo tests and writes what it
                                   trained; one after that stops it: 130 after Ctrl-C, 143
                                   after SIGTERM, every file written whole
    refmeta cases export: MESSAGE  a case that cannot be written; exit status 1
                                   (130 after Ctrl-C, 143 after SIGTERM; every case left is whole)
    refmeta verify: MESSAGE        exit status 2 when nothing can be compared or the --json
                                   report cannot be written, 1 when verification fails
                                   (``refmeta.cases.verify``); 130 after Ctrl-C, 143 after
                                   SIGTERM, and no partial report is left
    refmeta data fetch: MESSAGE    a file that cannot be fetched, checked or written; exit
                                   status 1 (130 after Ctrl-C, 143 after SIGTERM); no partial
                                   or unchecked file is left (``refmeta.data.fetch``)
    refmeta read: MESSAGE          a page that cannot be written, or the docs extra missing;
                                   exit status 1 (130, 143); no partial page is left
"""

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading

from refmeta.data import fetch
from refmeta.demos import options, train

# name -> module; `refmeta demo NAME` imports the module only when it runs.
DEMOS = {
    "maml-sinusoid": "refmeta.demos.maml_sinusoid",
    "check-with-torch": "refmeta.demos.check_with_torch",
    "protonet-omniglot": "refmeta.demos.protonet_omniglot",
    "matching-omniglot": "refmeta.demos.matching_omniglot",
    "snail-omniglot": "refmeta.demos.snail_omniglot",
    "metanet-omniglot": "refmeta.demos.metanet_omniglot",
    "reptile-sinusoid": "refmeta.demos.reptile_sinusoid",
    "maml-omniglot": "refmeta.demos.maml_omniglot",
    "reptile-omniglot": "refmeta.demos.reptile_omniglot",
}

EXIT_USAGE = options.EXIT_USAGE  # 2, argparse's status for a bad command line
EXIT_INTERRUPTED, EXIT_TERMINATED = 128 + signal.SIGINT, 128 + signal.SIGTERM
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def main(argv=None):
    """Parse ``argv`` (default: sys.argv[1:]), run the subcommand, return its exit status."""
    try:
        args = build_parser().parse_args(argv)
        status = args.func(args)
        sys.stdout.flush()            # a closed pipe shows here, not at the interpreter's exit
        return status
    except options.UsageError as error:
        print(f"refmeta: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return _reader_gone()


def _reader_gone():
    """The reader of stdout went away (``refmeta verify … | head``): what is left unprinted
    goes nowhere, with no traceback; exit status 141, as a shell's for SIGPIPE."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):      # no file descriptor behind sys.stdout (a test's capture)
        pass
    return EXIT_BROKEN_PIPE


def build_parser():
    parser = options.Parser(
        prog="refmeta", description="Reference meta-learning in NumPy + autograd.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo_command(subparsers)
    _add_cases_command(subparsers)
    _add_verify_command(subparsers)
    _add_data_command(subparsers)
    _add_read_command(subparsers)
    return parser


def _add_demo_command(subparsers):
    demo = subparsers.add_parser(
        "demo", help="list the demos, or run one",
        description="Without NAME, list the demos. `refmeta demo NAME --help` shows NAME's options.")
    demo.add_argument("name", nargs="?", metavar="NAME", help="the demo to run")
    demo.add_argument("demo_args", nargs=argparse.REMAINDER, metavar="...",
                      help="options passed to the demo")
    demo.set_defaults(func=_run_demo_command)


def _run_demo_command(args):
    if args.name is None:
        print(format_demo_list())
        return 0
    if args.name not in DEMOS:
        raise options.UsageError(f"unknown demo {args.name!r}; available: {', '.join(sorted(DEMOS))}")
    try:
        with sigterm_raises():
            run_demo(args.name, args.demo_args)
    except train.Diverged as error:
        print(f"refmeta demo {args.name}: {error}", file=sys.stderr)
        return train.EXIT_DIVERGED
    except (KeyboardInterrupt, Terminated) as stop:
        what = "interrupted" if isinstance(stop, KeyboardInterrupt) else "terminated"
        print(f"refmeta demo {args.name}: {what}; the files written are whole", file=sys.stderr)
        return EXIT_INTERRUPTED if isinstance(stop, KeyboardInterrupt) else EXIT_TERMINATED
    return 0


def _add_cases_command(subparsers):
    cases = subparsers.add_parser(
        "cases", help="list or export the reference cases (docs/reference-cases.md)",
        description="Reference cases: <id>.json (what to compute) + <id>.npz (the numbers).")
    actions = cases.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="list the cases").set_defaults(func=_run_cases_list)
    export = actions.add_parser("export", help="write the cases into DIR, atomically")
    export.add_argument("directory", metavar="DIR", help="created if missing")
    export.add_argument("case_ids", nargs="*", metavar="ID", help="only these cases (default: all)")
    export.set_defaults(func=_run_cases_export)


def _run_cases_list(args):
    from refmeta import cases
    print(cases.describe_cases())
    return 0


class Terminated(BaseException):
    """SIGTERM, raised where the program is (as Ctrl-C raises KeyboardInterrupt)."""


@contextlib.contextmanager
def sigterm_raises():
    """Inside, SIGTERM raises Terminated, so ``finally`` clauses clean up; a second SIGTERM
    during that clean-up is ignored.  The old handler is restored on the way out.  Only the
    main thread can set handlers: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated(signum)

    old = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if old is None else old)


def _run_cases_export(args):
    from refmeta import cases
    try:
        with sigterm_raises():
            paths = cases.export(args.directory, args.case_ids or None)
    except cases.CaseError as error:
        print(f"refmeta cases export: {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated) as stop:
        what = "interrupted" if isinstance(stop, KeyboardInterrupt) else "terminated"
        print(f"refmeta cases export: {what}; every case in the directory is whole",
              file=sys.stderr)
        return EXIT_INTERRUPTED if isinstance(stop, KeyboardInterrupt) else EXIT_TERMINATED
    print(f"wrote {len(paths)} case(s) to {args.directory}: " + ", ".join(args.case_ids or ["all"]))
    return 0


def _add_data_command(subparsers):
    data = subparsers.add_parser(
        "data", help="fetch the data the demos read (docs/data.md)",
        description="The data home is --dir, else $REFMETA_DATA, else $XDG_CACHE_HOME/refmeta, "
                    "else ~/.cache/refmeta; each data set goes in a folder of its own there.")
    actions = data.add_subparsers(dest="action", metavar="ACTION", required=True)
    get = actions.add_parser(
        "fetch", help="download a data set into the data home, each file SHA-256 checked",
        description="Download each file to a temporary name, check its SHA-256, then rename "
                    "it; a file already there with the right SHA-256 is not fetched again.")
    get.add_argument("dataset", choices=("omniglot",), help="omniglot: the three zips into HOME/omniglot")
    get.add_argument("--dir", metavar="HOME", help=f"the data home (now {fetch.data_home()})")
    get.add_argument("--from", dest="source", metavar="SOURCE",
                     help="an http(s):// or file:// URL or a local folder holding the files, in "
                          f"the repository's layout or side by side (default {fetch.DEFAULT_SOURCE})")
    get.set_defaults(func=_run_data_fetch)


def _run_data_fetch(args):
    try:
        fetch.parse_source(args.source)
        fetch.omniglot_dir(args.dir)
    except ValueError as error:
        raise options.UsageError(str(error)) from None
    try:
        with sigterm_raises():
            folder = fetch.fetch_omniglot(args.dir, args.source)
    except fetch.FetchError as error:
        print(f"refmeta data fetch: {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated) as stop:
        what = "interrupted" if isinstance(stop, KeyboardInterrupt) else "terminated"
        print(f"refmeta data fetch: {what}; no partial file was left", file=sys.stderr)
        return EXIT_INTERRUPTED if isinstance(stop, KeyboardInterrupt) else EXIT_TERMINATED
    print(f"Omniglot: {len(fetch.OMNIGLOT)} files checked in {folder}")
    return 0


def _add_verify_command(subparsers):
    verify = subparsers.add_parser(
        "verify", help="compare another implementation's outputs with a reference case",
        description="The table follows the order of computation and names the first output "
                    "to fail; each likely cause is said once (a constant factor, transposed "
                    "axes, the forward or backward pass, a fixed parameter that moved, nothing "
                    "reaching the parameters, batched Reptile on a serial case, the tasks that "
                    "fail, float32; docs/verify.md). Exit status: 0 every output within "
                    "tolerance, 1 verification failed, 2 the case or the outputs file could not "
                    "be read, or the --json report could not be written.")
    verify.add_argument("case", metavar="CASE.json", help="a case written by `refmeta cases export`")
    verify.add_argument("theirs", metavar="THEIRS.npz", help="one array per output name")
    verify.add_argument("--partial", action="store_true",
                        help="compare only the outputs THEIRS.npz holds; the others are listed as "
                             "not compared (exit 0 if every one compared passes)")
    verify.add_argument("--json", metavar="FILE", dest="json_report",
                        help="also write the report as JSON to FILE, atomically (docs/verify.md)")
    verify.set_defaults(func=lambda args: _verify_main(args.case, args.theirs, args.partial,
                                                       args.json_report))


def _verify_main(case, theirs, partial=False, json_report=None):
    from refmeta.cases import verify
    try:
        with sigterm_raises():
            return verify.main(case, theirs, partial=partial, json_path=json_report)
    except (KeyboardInterrupt, Terminated) as stop:
        what = "interrupted" if isinstance(stop, KeyboardInterrupt) else "terminated"
        print(f"refmeta verify: {what}; no partial report was left", file=sys.stderr)
        return EXIT_INTERRUPTED if isinstance(stop, KeyboardInterrupt) else EXIT_TERMINATED


def _add_read_command(subparsers):
    read = subparsers.add_parser(
        "read", help="write a module's page, its paper's prose beside its code (docs/reading.md)",
        description="Without NAME, list the pages. With NAME, write DIR/NAME.html (one file, no "
                    "script, works offline) and print its path.")
    read.add_argument("name", nargs="?", metavar="NAME", help="the page to write")
    read.add_argument("--out", metavar="DIR", help="the folder to write to (default ./refmeta-read)")
    read.add_argument("--tests", metavar="DIR", help="the test suite whose equation markers name "
                      "the tests of each equation (default: the one beside this source checkout)")
    read.add_argument("--open", action="store_true", help="open the page in the web browser")
    read.set_defaults(func=_run_read_command)


def _run_read_command(args):
    from refmeta import read
    if args.name is None:
        print(read.describe())
        return 0
    if args.name not in read.PAGES:
        raise options.UsageError(f"unknown page {args.name!r}; available: {', '.join(read.PAGES)}")
    try:
        with sigterm_raises():
            path = read.write(args.name, args.out or read.DEFAULT_FOLDER, args.tests)
    except ImportError as error:
        print(f"refmeta read: {error.name or error} is not installed: pip install 'refmeta[docs]'",
              file=sys.stderr)
        return 1
    except read.ReadError as error:
        print(f"refmeta read: {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated) as stop:
        what = "interrupted" if isinstance(stop, KeyboardInterrupt) else "terminated"
        print(f"refmeta read: {what}; no partial page was left", file=sys.stderr)
        return EXIT_INTERRUPTED if isinstance(stop, KeyboardInterrupt) else EXIT_TERMINATED
    print(path)
    if args.open:
        import pathlib
        import webbrowser
        if not webbrowser.open(pathlib.Path(path).as_uri()):
            print(f"refmeta read: no web browser found; open {path} yourself", file=sys.stderr)
    return 0


def run_demo(name, argv):
    """Parse ``argv`` with the demo's own parser and run it; returns its results dict.
    A bad option, data folder or output folder raises ``options.UsageError``."""
    module = importlib.import_module(DEMOS[name])
    parser = options.parser(f"refmeta demo {name}", module.__doc__)
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def format_demo_list():
    """One line per demo: its name and the first line of its module docstring."""
    width = max(len(name) for name in DEMOS)
    lines = ["demos (run one with `refmeta demo NAME`, options with `--help`):"]
    for name in sorted(DEMOS):
        lines.append(f"  {name.ljust(width)}  {_describe(DEMOS[name])}")
    return "\n".join(lines)


def _describe(module_name):
    doc = importlib.import_module(module_name).__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


if __name__ == "__main__":
    sys.exit(main())
