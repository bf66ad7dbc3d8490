"""How many autograd primitives one gradient takes: the counts behind autograd's per-primitive
overhead, which the generic MAML path pays on small arrays.

    python benchmarks/count_primitives.py                 the table below
    python benchmarks/count_primitives.py --by-primitive  and each workload's tape by primitive
    python benchmarks/bench.py --only primitives          the same table, in bench.py's JSON

For one call of each workload's public function (its door's input checks included):

    primitive calls  calls of a primitive's wrapper (``autograd.tracer.primitive``'s f_wrapped):
                     each looks for boxed arguments once.  A call on arguments boxed d levels
                     deep (d nested ``grad``s) calls the wrapper again on the unboxed values,
                     d times.  calls = boxed calls + evaluations.
    tape nodes       the nodes recorded for the backward passes (``autograd.core.VJPNode``), one
                     per boxed call of a differentiable primitive; by primitive name too.  The
                     other boxed calls are of the primitives autograd records nothing for
                     (comparisons such as ReLU's x > 0, shape, ndim).
    evaluations      calls that reach the raw function: the wrapper found no boxed argument.
    Python calls     every function call cProfile sees in one more call (Python and C), the
                     interpreter work around those primitives.

The counts depend on the code and the library versions only, never on the load (the Python
calls move by a few from run to run, with the interpreter's caches).
``counting()`` patches autograd's ``find_top_boxed_args`` and ``VJPNode.__init__`` while it is
open and restores them after; tests/test_bench.py checks it on toys counted by hand.
"""

import argparse
import contextlib
import cProfile
import os
import pstats
import sys
from collections import Counter
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import bench_workloads as w  # noqa: E402


@dataclass
class Counts:
    calls: int = 0
    boxed_calls: int = 0
    evaluations: int = 0
    nodes: Counter = field(default_factory=Counter)      # primitive name -> tape nodes
    python_calls: int = 0

    def as_json(self):
        return {"primitive_calls": self.calls, "boxed_calls": self.boxed_calls,
                "tape_nodes": sum(self.nodes.values()),
                "evaluations": self.evaluations, "python_calls": self.python_calls,
                "tape_nodes_by_primitive": dict(self.nodes.most_common())}


@contextlib.contextmanager
def counting():
    """Yields a Counts that every autograd primitive call adds to while the block runs."""
    from autograd import core, tracer
    counts = Counts()
    find, init = tracer.find_top_boxed_args, core.VJPNode.__init__

    def counted_find(args):
        found = find(args)
        counts.calls += 1
        counts.boxed_calls += bool(found[0])
        counts.evaluations += not found[0]
        return found

    def counted_init(self, value, fun, *rest):
        counts.nodes[getattr(fun, "__name__", repr(fun))] += 1
        init(self, value, fun, *rest)

    tracer.find_top_boxed_args, core.VJPNode.__init__ = counted_find, counted_init
    try:
        yield counts
    finally:
        tracer.find_top_boxed_args, core.VJPNode.__init__ = find, init


def count(fn):
    """Counts of one call of ``fn()``; Python calls from a second call under cProfile."""
    with counting() as counts:
        fn()
    profile = cProfile.Profile()
    profile.runcall(fn)
    counts.python_calls = pstats.Stats(profile).total_calls
    return counts


def workloads():
    """{label: () -> gradient}: the gradients bench.py times, float64."""
    sinusoid, conv4, metric = w.sinusoid_data(), w.conv4_data(), w.metric_data()
    return {"sinusoid MAML meta-gradient, generic autograd path": w.refmeta_sinusoid(*sinusoid),
            "sinusoid MAML meta-gradient, fused_mlp through maml": w.refmeta_sinusoid_fused(*sinusoid, False),
            "conv4 second-order MAML meta-gradient": w.refmeta_conv4(*conv4),
            "conv4 max-pool forward + backward, 80 images": w.refmeta_conv4_pass(*metric),
            "ProtoNet 5-way 1-shot episode": w.refmeta_protonet(*metric)}


def table(by_primitive=0):
    """Print the counts of every workload (and its ``by_primitive`` most recorded primitives);
    returns {label: Counts.as_json()}."""
    print(f"  {'workload':52s} {'primitive calls':>15s} {'tape nodes':>10s} {'evaluations':>11s} "
          f"{'Python calls':>12s}")
    results = {}
    for label, fn in workloads().items():
        counts = count(fn)
        results[label] = counts.as_json()
        print(f"  {label:52s} {counts.calls:15d} {sum(counts.nodes.values()):10d} "
              f"{counts.evaluations:11d} {counts.python_calls:12d}")
        if by_primitive:
            print("      " + ", ".join(f"{name} {n}" for name, n in counts.nodes.most_common(by_primitive)))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--by-primitive", type=int, nargs="?", const=12, default=0, metavar="N",
                        help="list each workload's N most recorded primitives (default 12)")
    args = parser.parse_args(argv)
    print("autograd primitives per gradient (counts: independent of the load)")
    table(args.by_primitive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
