"""Where the time of conv4 forward + backward goes, part by part, under cProfile.

    python benchmarks/profile_conv4.py                        conv4 max-pool, 80 images, float64
    python benchmarks/profile_conv4.py --dtype float32 --calls 10
    python benchmarks/profile_conv4.py --workload protonet    or maml-conv4 (second order)
    python benchmarks/profile_conv4.py --json profile.json    the shares as JSON too

The workloads are bench.py's (``bench_workloads``): the gradient of Σ z² through conv4 max-pool
on 80 images of 28×28 ("conv4"), the ProtoNet episode on the same images, or the conv4
second-order MAML meta-gradient.  One warm-up call, then ``--calls`` calls under one cProfile.

A part's time is the cumulative time of the functions ``PARTS`` lists (for an autograd
primitive its raw body, and the functions defined inside each: a VJP maker's returned VJP),
less that of the calls they make directly to another listed function, whose time counts in
that function's part: no time counts twice.  (A listed function that reached another through
a builtin, ``map(f, ...)``, would count that time twice: cProfile names the builtin as the
caller.)  The raw body of a primitive runs on plain arrays and calls no other primitive, so
the conv4 parts do not nest anyway.  "other" is the rest: autograd's tracing and backward pass, ReLU and its VJP, the
reshapes and swaps between layers, the loss.  The VJPs that the parts' primitives get from
``defvjp`` are other's too, except for the primitives they call (which count in their part).
In a second-order gradient the VJPs themselves are differentiated, and most of that lands in
"other".

cProfile adds a fixed cost to every function call it sees, so a part made of many small
calls looks larger than it is: compare shares measured the same way (before and after a
change, one machine), not against a timer.  Shares, unlike milliseconds, change little with
the load; still, take them on an idle machine.  A name in ``PARTS`` that no longer exists is
reported (tests/test_bench.py fails on it): after renaming a layer function, update ``PARTS``.
"""

import argparse
import cProfile
import importlib
import os
import pstats
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import bench_machine  # noqa: E402
from bench_compare import write_json  # noqa: E402
import bench_workloads as w  # noqa: E402

# (part, the functions whose time is that part's, as "module:name")
PARTS = [
    ("batch norm: transductive, channel affine, dot", [
        "refmeta.nn.norm:transductive", "refmeta.nn.norm:channel_affine", "refmeta.nn.norm:channel_dot"]),
    ("matrix products: convolutions, dense", [
        "refmeta.nn.conv:conv3x3", "refmeta.nn.conv:conv3x3_transpose", "refmeta.nn.conv:conv3x3_weight_grad",
        "refmeta.nn.conv:conv3x3_grads", "refmeta.nn.conv:_correlate", "refmeta.nn.layers:_dense", "refmeta.nn.layers:_matmul",
        "refmeta.nn.layers:_matmul_nt", "refmeta.nn.layers:_matmul_tn"]),
    ("max-pool: max, choice, scatter, gather", ["refmeta.nn.pool:max_pool", "refmeta.nn.pool:pooled",
                                                "refmeta.nn.pool:pool_scatter", "refmeta.nn.pool:pool_gather"]),
    ("im2col and col2im", ["refmeta.nn.conv:im2col", "refmeta.nn.conv:col2im"]),
    ("per-channel params and sums", ["refmeta.nn.conv:spread_channels", "refmeta.nn.conv:sum_channels",
                                     "refmeta.nn.conv:sum_to"]),
]
WORKLOADS = {"conv4": "conv4 max-pool forward + backward, 80 images",
             "protonet": "ProtoNet 5-way 1-shot episode, forward + backward",
             "maml-conv4": "conv4 second-order MAML meta-gradient"}
COMPREHENSIONS = ("<genexpr>", "<listcomp>", "<dictcomp>", "<setcomp>")


def resolve(name):
    """"module:function" -> the function's raw body (an autograd primitive's ``.fun``), or None."""
    module, _, attribute = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError):
        return None
    return getattr(fn, "fun", fn)


def code_keys(fn):
    """pstats keys (file, first line, name) of ``fn``'s code and of the functions and lambdas
    defined inside it.  Not its comprehensions: they run inside ``fn``, their time already in
    its cumulative time, and cProfile names the builtin consuming a generator as its caller."""
    keys, stack = set(), [fn.__code__]
    while stack:
        code = stack.pop()
        keys.add((code.co_filename, code.co_firstlineno, code.co_name))
        stack.extend(c for c in code.co_consts if hasattr(c, "co_filename") and c.co_name not in COMPREHENSIONS)
    return keys


def part_keys():
    """({part: set of pstats keys}, [names that did not resolve])."""
    parts, missing = {}, []
    for part, names in PARTS:
        parts[part] = set()
        for name in names:
            fn = resolve(name)
            if fn is None:
                missing.append(name)
            else:
                parts[part] |= code_keys(fn)
    return parts, missing


def workload(name, dtype):
    """() -> gradient, for ``name`` in WORKLOADS, its data cast to ``dtype``."""
    if name == "maml-conv4":
        params, data = w.conv4_data()
        return w.refmeta_conv4(w.in_dtype(params, dtype), w.in_dtype(data, dtype))
    params, images, support_y, query_y = w.metric_data()
    make = w.refmeta_conv4_pass if name == "conv4" else w.refmeta_protonet
    return make(w.in_dtype(params, dtype), w.in_dtype(images, dtype), support_y, query_y)


def shares(stats, parts):
    """[(part, seconds, calls)] for every part and "other", from a pstats.Stats; and the total.

    A part's seconds: the cumulative time of its functions, less that of the calls they make
    directly to any listed function (of this part or another), whose time is counted there."""
    part_of = {key: part for part, keys in parts.items() for key in keys}
    seconds, calls = dict.fromkeys(parts, 0.0), dict.fromkeys(parts, 0)
    for key in part_of.keys() & stats.stats.keys():
        _, ncalls, _, cumulative, callers = stats.stats[key]
        seconds[part_of[key]] += cumulative
        calls[part_of[key]] += ncalls
        for caller, edge in callers.items():
            if caller in part_of and caller != key:
                seconds[part_of[caller]] -= edge[3]
    rows = [(part, seconds[part], calls[part]) for part in parts]
    total = stats.total_tt
    rows.append(("other", total - sum(seconds.values()), None))
    return rows, total


def profile(name="conv4", dtype="float64", calls=5):
    """cProfile ``calls`` calls of the workload (after one warm-up call); a pstats.Stats."""
    fn = workload(name, dtype)
    fn()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    return pstats.Stats(profiler)


def report(name="conv4", dtype="float64", calls=5, top=12):
    """Profile, print the table and the ``top`` functions by own time; returns the JSON dict."""
    parts, missing = part_keys()
    machine = bench_machine.describe()
    stats = profile(name, dtype, calls)
    rows, total = shares(stats, parts)
    print(f"{WORKLOADS[name]}, {dtype}, {calls} calls under cProfile (load average "
          f"{bench_machine.load_text(machine['load_average'])} at the start, "
          f"{bench_machine.load_text(bench_machine.load_average())} at the end)")
    bench_machine.print_summary(machine)
    for missing_name in missing:
        print(f"  not found: {missing_name} (renamed? update PARTS in profile_conv4.py)")
    print(f"  {'part':42s} {'ms per call':>11s} {'share':>7s} {'calls per call':>15s}")
    for part, seconds, n in rows:
        print(f"  {part:42s} {seconds / calls * 1e3:11.1f} {seconds / total:7.1%} "
              f"{'' if n is None else f'{n / calls:15.0f}'}")
    print(f"  {'total':42s} {total / calls * 1e3:11.1f}")
    if top:
        part_of = {key: part for part, keys in parts.items() for key in keys}
        print(f"\n  the {top} functions with the most own time (tottime), per call:")
        ranked = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:top]
        for (filename, line, function), (_, ncalls, own, cumulative, _) in ranked:
            where = f"{os.path.basename(filename)}:{line}" if line else filename
            print(f"  {own / calls * 1e3:9.2f} ms own {cumulative / calls * 1e3:9.2f} ms cumulative "
                  f"{ncalls / calls:7.0f}×  {function} ({where}) {part_of.get((filename, line, function), '')}")
    return {"workload": name, "dtype": dtype, "calls": calls, "total_ms_per_call": total / calls * 1e3,
            "parts": [{"part": part, "ms_per_call": seconds / calls * 1e3, "share": seconds / total,
                       "calls_per_call": None if n is None else n / calls} for part, seconds, n in rows],
            "not_found": missing, "machine": machine, "load_average_end": bench_machine.load_average()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=list(WORKLOADS), default="conv4")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--calls", type=int, default=5, help="calls profiled (default 5)")
    parser.add_argument("--top", type=int, default=12, help="functions listed by own time (0: none)")
    parser.add_argument("--json", help="also write the shares here")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.top < 0:
        parser.error(f"--calls must be ≥ 1 and --top ≥ 0; got {args.calls} and {args.top}")
    result = report(args.workload, args.dtype, args.calls, args.top)
    return write_json(args.json, result, "profile_conv4.py") if args.json else 0


if __name__ == "__main__":
    sys.exit(main())
