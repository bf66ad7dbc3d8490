"""Speed of refmeta's gradients against PyTorch eager and JAX jit, when installed, on the same data.

    python benchmarks/bench.py                         every part (several minutes on 2 cores)
    python benchmarks/bench.py --quick                 fewer repeats
    python benchmarks/bench.py --only conv4 protonet   some parts (names below)
    python benchmarks/bench.py --json results.json     the tables and the machine as JSON too

The parts, each a table:

conv4       conv4 max-pool forward + backward on 80 images of 28×28 (4 × {3×3 conv, 64 filters,
            transductive batch norm with scale and offset, ReLU, 2×2 max-pool}): the gradient of
            Σ z², float64 and float32; peer PyTorch eager.
protonet    one ProtoNet training episode (5-way 1-shot, 15 queries per class: the same 80
            images and net, squared Euclidean distance), forward + backward, float64 and
            float32; peer PyTorch eager.
maml-conv4  one second-order MAML meta-gradient of MAML's Omniglot net (4 × {3×3 conv, 64
            filters, stride 2, transductive batch norm with offset, ReLU}, mean, linear) on one
            5-way 1-shot task, 5 support and 75 query images, one inner step of α = 0.4 on N ×
            the mean cross-entropy, float64 and float32; peers PyTorch eager
            (``autograd.grad(create_graph=True)``) and JAX jit.
sinusoid    the MAML meta-gradient (second order, one inner step, α = 0.01) of the paper's MLP
            1-40-40-1 on a meta-batch of 25 tasks with K = 10 support and 10 query points,
            float64: refmeta's generic autograd path vectorised across tasks, its per-task loop
            (``maml.looped``), ``refmeta.fast.fused_mlp`` through ``maml.meta_gradient`` and
            ``FusedMLP.meta_gradient`` (MAML's Eq. (3) written out); peers JAX ``jit(grad)``
            with ``vmap`` over tasks, PyTorch eager per-task and vectorised, ``torch.func``.
snail       one SNAIL training step as the Omniglot demo takes it (8 episodes 5-way 1-shot, one
            query per class: 80 images through conv4 max-pool + linear to 64, 40 sequences of
            T = 6 through the paper's stack), and the stack alone; float64; peer PyTorch eager.
metanet     one Meta Networks training step as the Omniglot demo takes it (20-way 1-shot, one
            query per class, 4 conv blocks × 32 filters, fast weights on fc1 and the output
            layer), float64; peer PyTorch eager, looping over support examples as the authors do.
memory      peak memory of maml-conv4 with k = 1, 3, 5 inner steps, each in a fresh process
            (``bench_memory``).
primitives  the autograd primitives and Python calls of one gradient of each workload
            (``count_primitives``): counts, not times.

Every table prints the machine with it (``bench_machine``: CPU, BLAS and the kernel it chose,
versions, thread settings) and the load average at its start and end.  Every peer's gradient
is checked against refmeta's float64 one before it is timed (``check_same``): within 1e-10 of
its scale in float64, and within 1e-3 in float32, where the arithmetic is float32 throughout
(every gradient array must come back float32).  Each variant runs in a block of back-to-back
calls after a warm-up call, with an idle pause between blocks (a BLAS's threads keep spinning
briefly after a call and slow whatever runs next); a table shows each block's median and
interquartile range and the ratio of its median to the baseline's in the same dtype, measured
in the same process.  At the end, the ratios the speed targets name (``TARGETS``).
Timings mean little on a loaded machine.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import bench_machine  # noqa: E402
from bench_compare import Variant, compare, json_path_problem, write_json  # noqa: E402
from bench_workloads import (HIDDEN, IMAGE, K_QUERY, K_SHOT, K_SUPPORT, METANET_HIDDEN,  # noqa: E402
                             METANET_QUERIES, METANET_WAY, N_QUERY_PER_CLASS, N_TASKS, N_WAY,
                             SIZES, SNAIL_EPISODES, SNAIL_QUERIES, conv4_data, in_dtype,
                             metanet_data, metric_data, refmeta_conv4, refmeta_conv4_pass,
                             refmeta_metanet, refmeta_protonet, refmeta_sinusoid,
                             refmeta_sinusoid_fused, refmeta_snail, sinusoid_data, snail_channels,
                             snail_data)
from bench_jax import jax_conv4, jax_sinusoid  # noqa: E402
from bench_torch import (torch_conv4, torch_conv4_pass, torch_metanet,  # noqa: E402
                         torch_protonet, torch_sinusoid, torch_snail)

DTYPES = ("float64", "float32")
PYTORCH, JAX = "PyTorch eager", "JAX jit(grad(vmap))"
# (part, variant, dtype, baseline, ratio at most): the speed targets
TARGETS = [("conv4", "refmeta", "float64", PYTORCH, 1.0), ("conv4", "refmeta", "float32", PYTORCH, 1.0),
           ("protonet", "refmeta", "float64", PYTORCH, 1.0), ("protonet", "refmeta", "float32", PYTORCH, 1.0),
           ("sinusoid", "refmeta vectorised", "float64", JAX, 3.0)]
PARTS = ("conv4", "protonet", "maml-conv4", "sinusoid", "snail", "metanet", "memory", "primitives")


def keep_freed_memory():
    """Ask glibc to keep freed blocks instead of returning them to the OS.

    By default glibc serves blocks above its mmap threshold (128 KiB to start) with fresh
    pages and unmaps them on free, so each new (25, 40, 40) float64 array faults its pages in
    again; the sinusoid meta-gradient then spends about a third of its time in page faults.
    This sets M_MMAP_THRESHOLD to 64 MiB and M_TRIM_THRESHOLD to 128 MiB for this whole
    process, every implementation alike (the same as the environment variables
    MALLOC_MMAP_THRESHOLD_=67108864 MALLOC_TRIM_THRESHOLD_=134217728).  Returns what was done.
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        done = libc.mallopt(m_mmap_threshold, 64 << 20) == 1 and libc.mallopt(m_trim_threshold, 128 << 20) == 1
    except (OSError, AttributeError):
        done = False
    return "glibc keeps freed memory (mmap threshold 64 MiB)" if done else "malloc left as is (not glibc?)"


def optional(name):
    try:
        return __import__(name)
    except ImportError:
        return None


def peers():
    """(torch or None, jax or None), set up to keep each array's dtype (float64 stays float64)."""
    torch, jax = optional("torch"), optional("jax")
    if torch is not None:
        torch.set_default_dtype(torch.float64)
    if jax is not None:
        jax.config.update("jax_enable_x64", True)
    return torch, jax


def against_pytorch(make_ours, make_theirs, data, dtypes, torch):
    """Variants refmeta and, when installed, PyTorch eager, for each dtype (data cast to it)."""
    variants = []
    for dtype in dtypes:
        cast = tuple(in_dtype(a, dtype) for a in data)
        variants.append(Variant("refmeta", dtype, make_ours(*cast)))
        if torch is not None:
            variants.append(Variant(PYTORCH, dtype, make_theirs(torch, *cast)))
    return variants


# ----- the parts -----
def conv4_part(repeats, results, dtypes=DTYPES):
    torch, _ = peers()
    variants = against_pytorch(refmeta_conv4_pass, torch_conv4_pass, metric_data(), dtypes, torch)
    n = N_WAY * (K_SHOT + N_QUERY_PER_CLASS)
    results["conv4"] = compare(f"conv4 max-pool forward + backward, {n} images {IMAGE}×{IMAGE}, {HIDDEN} "
                               "filters (the gradient of Σ z²)", variants,
                               PYTORCH if torch else "refmeta", repeats, results)


def protonet_part(repeats, results, dtypes=DTYPES):
    torch, _ = peers()
    variants = against_pytorch(refmeta_protonet, torch_protonet, metric_data(), dtypes, torch)
    results["protonet"] = compare(f"ProtoNet episode, {N_WAY}-way {K_SHOT}-shot, {N_QUERY_PER_CLASS} "
                                  f"queries per class, conv4 max-pool, {HIDDEN} filters, forward + backward",
                                  variants, PYTORCH if torch else "refmeta", repeats, results)


def maml_conv4_part(repeats, results, dtypes=DTYPES):
    torch, jax = peers()
    params, data = conv4_data()
    variants = []
    for dtype in dtypes:
        p, d = in_dtype(params, dtype), in_dtype(data, dtype)
        variants.append(Variant("refmeta", dtype, refmeta_conv4(p, d)))
        if torch is not None:
            variants.append(Variant(PYTORCH, dtype, torch_conv4(torch, p, d)))
        if jax is not None:
            variants.append(Variant("JAX jit", dtype, jax_conv4(jax, p, d)))
    results["maml-conv4"] = compare(
        f"conv4 second-order MAML meta-gradient, {N_WAY}-way {K_SHOT}-shot, {N_WAY * K_SHOT}+"
        f"{N_WAY * N_QUERY_PER_CLASS} images {IMAGE}×{IMAGE}, {HIDDEN} filters, 1 inner step",
        variants, PYTORCH if torch else "refmeta", repeats, results)


def sinusoid_part(repeats, results):
    torch, jax = peers()
    params, data = sinusoid_data()
    variants = [Variant("refmeta vectorised", "float64", refmeta_sinusoid(params, data, True)),
                Variant("refmeta per-task loop", "float64", refmeta_sinusoid(params, data, False)),
                Variant("refmeta vectorised, fused_mlp", "float64",
                        refmeta_sinusoid_fused(params, data, written_out=False)),
                Variant("refmeta fused_mlp, Eq. (3) written out", "float64",
                        refmeta_sinusoid_fused(params, data, written_out=True))]
    if jax is not None:
        variants.append(Variant(JAX, "float64", jax_sinusoid(jax, params, data)))
    if torch is not None:
        for how, label in (("loop", "PyTorch eager per-task loop"), ("vectorised", "PyTorch eager vectorised"),
                           ("func", "torch.func grad(vmap)")):
            variants.append(Variant(label, "float64", torch_sinusoid(torch, params, data, how)))
    results["sinusoid"] = compare(
        f"sinusoid MAML meta-gradient, meta-batch {N_TASKS}, K={K_SUPPORT}+{K_QUERY}, MLP "
        f"{'-'.join(map(str, SIZES))}, second order", variants,
        JAX if jax else "refmeta vectorised", repeats, results)


def snail_part(repeats, results):
    torch, _ = peers()
    config, params, data = snail_data()
    ours, sequences = refmeta_snail(config, params, data)
    theirs = torch_snail(torch, config, params, data, sequences) if torch is not None else {}
    n_images = SNAIL_EPISODES * N_WAY * (K_SHOT + SNAIL_QUERIES)
    n_sequences = SNAIL_EPISODES * N_WAY * SNAIL_QUERIES
    titles = {"step": f"SNAIL training step (forward + backward of the query loss): {SNAIL_EPISODES} episodes "
                      f"{N_WAY}-way {K_SHOT}-shot, {SNAIL_QUERIES} query per class = {n_images} images "
                      f"{IMAGE}×{IMAGE} through conv4 max-pool + linear, {n_sequences} sequences of "
                      f"T={config.sequence_length} through the paper's stack",
              "stack": f"SNAIL stack alone, forward + backward: {n_sequences} sequences of T="
                       f"{config.sequence_length}, channels {' → '.join(map(str, snail_channels(config)))}"}
    results["snail"] = {}
    for case, title in titles.items():
        variants = [Variant("refmeta", "float64", ours[case])]
        variants += [Variant(PYTORCH, "float64", theirs[case])] if case in theirs else []
        results["snail"][case] = compare(title, variants, variants[-1].label, repeats, results)


def metanet_part(repeats, results):
    torch, _ = peers()
    config, params, data = metanet_data()
    variants = [Variant("refmeta (per-example gradients vectorised)", "float64",
                        refmeta_metanet(config, params, data))]
    if torch is not None:
        variants.append(Variant("PyTorch eager (per-example loop)", "float64",
                                torch_metanet(torch, config, params, data)))
    results["metanet"] = compare(
        f"MetaNet training step (gradient of L_train, first order): {METANET_WAY}-way 1-shot, "
        f"{METANET_WAY * METANET_QUERIES} queries, {IMAGE}×{IMAGE}, 4 conv blocks × {METANET_HIDDEN} "
        "filters, fast weights on fc1 and out (fast_conv_blocks=0)", variants, variants[-1].label,
        repeats, results)


def memory_part(results, steps=(1, 3, 5)):
    import bench_memory
    frameworks = ["refmeta"] + (["torch"] if optional("torch") is not None else [])
    machine = bench_machine.describe(results.get("malloc"))
    print("\npeak memory of one conv4 second-order MAML meta-gradient, k inner steps (fresh process "
          "each), float64; memory does not depend on the load")
    bench_machine.print_summary(machine)
    results["memory"] = {"machine": machine, "peak": bench_memory.table(frameworks, steps)}


def primitives_part(results):
    import count_primitives
    machine = bench_machine.describe(results.get("malloc"))
    print("\nautograd primitives per gradient, float64 (counts: independent of the load; "
          "benchmarks/count_primitives.py says what each column counts)")
    print("  " + bench_machine.summary(machine)[1])
    results["primitives"] = {"machine": machine, "counts": count_primitives.table(by_primitive=6)}


def target_rows(results):
    """[(part, variant, dtype, its ms, baseline, baseline ms, ratio, at most)] of the TARGETS measured."""
    rows = []
    for part, variant, dtype, baseline, at_most in TARGETS:
        table = results.get(part)
        measured = table.get("rows", []) if isinstance(table, dict) else []
        medians = {(r["variant"], r["dtype"]): r["median_ms"] for r in measured}
        if (variant, dtype) in medians and (baseline, dtype) in medians:
            ours, theirs = medians[variant, dtype], medians[baseline, dtype]
            rows.append((part, variant, dtype, ours, baseline, theirs, ours / theirs, at_most))
    return rows


def print_targets(results):
    rows = target_rows(results)
    if not rows:
        return
    machine = results["machine"]
    print(f"\nthe speed targets, measured in this run on {machine['cpu']['model']}, "
          f"{bench_machine.blas_text(machine['blas'])}:")
    print(f"  {'part':10s} {'variant':20s} {'dtype':8s} {'ms':>9s} {'baseline':22s} {'ms':>9s} "
          f"{'ratio':>6s} {'target':>7s}")
    for part, variant, dtype, ours, baseline, theirs, ratio, at_most in rows:
        print(f"  {part:10s} {variant:20s} {dtype:8s} {ours:9.2f} {baseline:22s} {theirs:9.2f} "
              f"{ratio:6.2f} {'≤ %.1f' % at_most:>7s} {'met' if ratio <= at_most else 'not met'}")
    results["targets"] = [dict(zip(("part", "variant", "dtype", "ms", "baseline", "baseline_ms", "ratio",
                                    "at_most"), row)) for row in rows]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--only", nargs="+", choices=PARTS, metavar="PART",
                        help="run only these parts: " + ", ".join(PARTS))
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc thresholds as they are (see keep_freed_memory)")
    args = parser.parse_args(argv)
    problem = args.json and json_path_problem(args.json)    # before measuring, not after
    if problem:
        print(f"bench.py: cannot write {args.json}: it {problem}", file=sys.stderr)
        return 2
    results = {"malloc": "default" if args.default_malloc else keep_freed_memory()}
    results["machine"] = bench_machine.describe(results["malloc"])
    print(f"refmeta benchmarks; load average {bench_machine.load_text(results['machine']['load_average'])}")
    repeats = 3 if args.quick else 9
    run = {"conv4": lambda: conv4_part(repeats, results),
           "protonet": lambda: protonet_part(repeats, results),
           "maml-conv4": lambda: maml_conv4_part(repeats, results),
           "sinusoid": lambda: sinusoid_part(15 if args.quick else 60, results),
           "snail": lambda: snail_part(repeats, results),
           "metanet": lambda: metanet_part(repeats, results),
           "memory": lambda: memory_part(results),
           "primitives": lambda: primitives_part(results)}
    for part in PARTS:
        if args.only is None or part in args.only:
            run[part]()
    print_targets(results)
    results["load_average_end"] = bench_machine.load_average()
    print(f"\nload average {bench_machine.load_text(results['load_average_end'])} at the end")
    return write_json(args.json, results, "bench.py") if args.json else 0


if __name__ == "__main__":
    sys.exit(main())
