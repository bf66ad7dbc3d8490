"""The ``refmeta`` command line (also ``python -m refmeta``).

    refmeta demo                      list the demos, one line each
    refmeta demo NAME [options]       run a demo
    refmeta demo NAME --help          that demo's options
    refmeta cases list                list the reference cases
    refmeta cases export DIR [ID ...] write the cases (default: all) into DIR, atomically
    refmeta verify CASE.json THEIRS.npz   compare another implementation's outputs with a case

Each subcommand is a function ``_add_<name>_command(subparsers)`` that builds its
parser and sets ``func``, the handler called with the parsed arguments; the
handler returns the exit status.  A new subcommand is one more such function.

A demo is a module with a docstring (its first line is the description listed
here), ``add_arguments(parser)``, ``run(args) -> dict`` and ``main()``.
"""

import argparse
import importlib
import sys

# name -> module; `refmeta demo NAME` imports the module only when it runs.
DEMOS = {
    "maml-sinusoid": "refmeta.demos.maml_sinusoid",
    "check-with-torch": "refmeta.demos.check_with_torch",
    "protonet-omniglot": "refmeta.demos.protonet_omniglot",
    "matching-omniglot": "refmeta.demos.matching_omniglot",
    "snail-omniglot": "refmeta.demos.snail_omniglot",
    "metanet-omniglot": "refmeta.demos.metanet_omniglot",
}

EXIT_USAGE = 2  # argparse's status for a bad command line


def main(argv=None):
    """Parse ``argv`` (default: sys.argv[1:]), run the subcommand, return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="refmeta", description="Reference meta-learning in NumPy + autograd.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo_command(subparsers)
    _add_cases_command(subparsers)
    _add_verify_command(subparsers)
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
        print(f"refmeta demo: unknown demo {args.name!r}; available: {', '.join(sorted(DEMOS))}",
              file=sys.stderr)
        return EXIT_USAGE
    run_demo(args.name, args.demo_args)
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


def _run_cases_export(args):
    from refmeta import cases
    try:
        paths = cases.export(args.directory, args.case_ids or None)
    except cases.CaseError as error:
        print(f"refmeta cases export: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("refmeta cases export: interrupted; every case in the directory is whole",
              file=sys.stderr)
        return 130
    print(f"wrote {len(paths)} case(s) to {args.directory}: " + ", ".join(args.case_ids or ["all"]))
    return 0


def _add_verify_command(subparsers):
    verify = subparsers.add_parser(
        "verify", help="compare another implementation's outputs with a reference case",
        description="Exit status: 0 every output within tolerance, 1 verification failed, "
                    "2 the case or the outputs file could not be read.")
    verify.add_argument("case", metavar="CASE.json", help="a case written by `refmeta cases export`")
    verify.add_argument("theirs", metavar="THEIRS.npz", help="one array per output name")
    verify.set_defaults(func=lambda args: _verify_main(args.case, args.theirs))


def _verify_main(case, theirs):
    from refmeta.cases import verify
    return verify.main(case, theirs)


def run_demo(name, argv):
    """Parse ``argv`` with the demo's own parser and run it; returns its results dict."""
    module = importlib.import_module(DEMOS[name])
    parser = argparse.ArgumentParser(prog=f"refmeta demo {name}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
