"""How near the unmet speed targets can come with NumPy, OpenBLAS and autograd: the part of each
gradient that no rewrite of refmeta's own Python removes, timed beside the whole gradient.

    python benchmarks/floors.py                    both parts (about a minute on 2 cores)
    python benchmarks/floors.py --only sinusoid    one part
    python benchmarks/floors.py --json floors.json the tables and the machine as JSON too

conv4     bench.py's conv4 max-pool pass (the gradient of Σ z² on 80 images, float64 and
          float32) beside the matrix products its convolutions make, and nothing else: the
          same products, on random operands of the same shapes, chunked as ``refmeta.nn.conv``
          chunks them (``conv4_products``).  The rest of the pass (im2col, batch norm, the
          pool, ReLU, autograd) has to fit in the difference between PyTorch's whole pass and
          these products for the pass to match PyTorch.
sinusoid  bench.py's generic MAML meta-gradient (float64) split into the time spent inside the
          raw bodies of its primitives (the NumPy work) and the rest (autograd's tracing and
          backward passes, refmeta's glue), beside ``FusedMLP.meta_gradient``, the same
          arithmetic written out in NumPy with no autograd at all, and JAX jit when installed.

Run it as bench.py is run (one BLAS thread, on an idle core); it keeps freed memory as bench.py
does (``bench.keep_freed_memory``) and prints the machine and the load with each table.
``timing_evaluations`` replaces the raw function inside every autograd primitive wrapper of
autograd and refmeta while it is open, and restores them after; tests/test_bench.py checks both
helpers against the code they describe.
"""

import argparse
import contextlib
import gc
import os
import sys
import time
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import bench_machine  # noqa: E402
from bench_compare import json_path_problem, print_machine, timed, write_json  # noqa: E402
from bench_workloads import (HIDDEN, IMAGE, K_SHOT, N_QUERY_PER_CLASS, N_WAY, in_dtype,  # noqa: E402
                             metric_data, refmeta_conv4_pass, refmeta_sinusoid,
                             refmeta_sinusoid_fused, sinusoid_data)

PARTS = ("conv4", "sinusoid")
N_BLOCKS = 4


# ----- conv4: the matrix products alone -----
def conv4_products(itemsize, n_images=N_WAY * (K_SHOT + N_QUERY_PER_CLASS), hidden=HIDDEN, image=IMAGE):
    """[(a shape, b shape)]: every product ``np.matmul(a, b)`` that one conv4 max-pool forward +
    backward pass makes through ``refmeta.nn.conv`` on arrays of ``itemsize`` bytes (stride 1;
    the images are not differentiated), block by block and chunk by chunk."""
    from refmeta.nn import conv
    taps = conv.KERNEL * conv.KERNEL
    products, channels, size = [], 1, image
    for block in range(N_BLOCKS):
        pixels = lambda start, stop: (stop - start) * size * size
        for start, stop in conv._image_chunks((n_images, channels, size, size), 1, itemsize):
            products.append(((hidden, channels * taps), (channels * taps, pixels(start, stop))))   # y
        if block == 0:                                          # conv3x3_weight_grad: w̄ only
            chunks = conv._image_chunks((n_images, channels, size, size), 1, itemsize)
            products += [((hidden, pixels(a, b)), (pixels(a, b), channels * taps)) for a, b in chunks]
        else:                                                   # conv3x3_grads: x̄ and w̄
            for start, stop in conv._image_chunks((n_images, hidden, size, size), 1, itemsize):
                products.append(((channels, hidden * taps), (hidden * taps, pixels(start, stop))))
                products.append(((channels, pixels(start, stop)), (pixels(start, stop), hidden * taps)))
        channels, size = hidden, size // 2
    return products


def products_alone(shapes, dtype, seed=0):
    """A function of no arguments that makes the products ``shapes`` (conv4_products) in
    ``dtype``: one set of operands and one output per distinct shape, made beforehand and used
    for every product of that shape, so the operands are in the cache as refmeta's chunks are
    (each is multiplied just after it is made)."""
    rng = np.random.default_rng(seed)
    operands = {(a, b): (rng.standard_normal(a).astype(dtype), rng.standard_normal(b).astype(dtype),
                         np.empty((a[0], b[1]), dtype=dtype)) for a, b in set(shapes)}
    calls = [operands[shape] for shape in shapes]
    return lambda: [np.matmul(a, b, out=out) for a, b, out in calls]


def flops(shapes):
    """Floating-point operations of the products (2 per multiply-add)."""
    return sum(2 * a[0] * a[1] * b[1] for a, b in shapes)


def conv4_part(repeats, results):
    from bench import PYTORCH, peers
    torch, _ = peers()
    data = metric_data()
    rows = []
    print("\nconv4 max-pool forward + backward (bench.py's conv4) against its matrix products alone")
    print_machine(results)
    for dtype in ("float64", "float32"):
        cast = tuple(in_dtype(a, dtype) for a in data)
        shapes = conv4_products(np.dtype(dtype).itemsize)
        whole = timed(refmeta_conv4_pass(*cast), repeats)[0] * 1e3
        alone = timed(products_alone(shapes, dtype), repeats)[0] * 1e3
        peer = None
        if torch is not None:
            from bench_torch import torch_conv4_pass
            peer = timed(torch_conv4_pass(torch, *cast), repeats)[0] * 1e3
        rows.append({"dtype": dtype, "refmeta_ms": whole, "products_ms": alone, "pytorch_ms": peer,
                     "products": len(shapes), "gflop": flops(shapes) / 1e9,
                     "products_gflops": flops(shapes) / alone / 1e6})
    print(f"  {'dtype':8s} {'refmeta pass':>12s} {'products alone':>14s} {'rest':>8s} "
          f"{PYTORCH + ' pass':>18s} {'left for the rest':>17s}   (ms)")
    for row in rows:
        peer = "" if row["pytorch_ms"] is None else f"{row['pytorch_ms']:.1f}"
        left = "" if row["pytorch_ms"] is None else f"{row['pytorch_ms'] - row['products_ms']:.1f}"
        print(f"  {row['dtype']:8s} {row['refmeta_ms']:12.1f} {row['products_ms']:14.1f} "
              f"{row['refmeta_ms'] - row['products_ms']:8.1f} {peer:>18s} {left:>17s}   "
              f"({row['products']} products, {row['gflop']:.2f} GFLOP at {row['products_gflops']:.0f} GFLOP/s)")
    results["conv4"] = {"rows": rows, "load_average_end": _print_load_at_end()}


# ----- sinusoid: the raw bodies of the primitives against the rest -----
def _primitive_wrappers():
    """[(wrapper, cell)]: every autograd primitive wrapper alive (``autograd.extend.primitive``'s
    functions, which carry their raw function as ``wrapper.fun``), and the closure cell that
    holds that raw function."""
    found = []
    for value in gc.get_objects():
        raw = getattr(value, "fun", None) if type(value) is types.FunctionType else None
        cells = (value.__closure__ or ()) if raw is not None else ()
        cell = next((c for c in cells if c.cell_contents is raw), None)
        if cell is not None:
            found.append((value, cell))
    return found


@contextlib.contextmanager
def timing_evaluations():
    """Yields [seconds, evaluations]: the time spent inside the raw function of every primitive
    (autograd's and refmeta's) called while the block runs, and how many such calls.  A raw
    function that calls a primitive on raw arrays counts that call as an evaluation, and its
    time once, in its own."""
    total, inside = [0.0, 0], [False]
    wrappers = _primitive_wrappers()

    def timed_raw(raw):
        def run(*args, **kwargs):
            total[1] += 1
            if inside[0]:                           # called from another raw body: timed there
                return raw(*args, **kwargs)
            inside[0], start = True, time.perf_counter()
            try:
                return raw(*args, **kwargs)
            finally:
                inside[0] = False
                total[0] += time.perf_counter() - start
        return run

    saved = [cell.cell_contents for _, cell in wrappers]
    try:
        for (_, cell), raw in zip(wrappers, saved):
            cell.cell_contents = timed_raw(raw)
        yield total
    finally:
        for (_, cell), raw in zip(wrappers, saved):
            cell.cell_contents = raw


def evaluation_time(fn, calls):
    """(seconds inside the primitives' raw bodies per call of ``fn``, evaluations per call)."""
    fn()
    with timing_evaluations() as total:
        for _ in range(calls):
            fn()
    return total[0] / calls, total[1] // calls


def sinusoid_part(repeats, results):
    from bench import peers
    _, jax = peers()
    params, data = sinusoid_data()
    generic = refmeta_sinusoid(params, data)
    whole = timed(generic, repeats)[0] * 1e3
    inside, evaluations = evaluation_time(generic, repeats)
    written_out = timed(refmeta_sinusoid_fused(params, data, True), repeats)[0] * 1e3
    peer = None
    if jax is not None:
        from bench_jax import jax_sinusoid
        peer = timed(jax_sinusoid(jax, params, data), repeats)[0] * 1e3
    row = {"generic_ms": whole, "inside_primitives_ms": inside * 1e3, "evaluations": evaluations,
           "rest_ms": whole - inside * 1e3, "written_out_ms": written_out, "jax_ms": peer}
    print("\nsinusoid MAML meta-gradient (bench.py's sinusoid, float64): where the generic path's time goes")
    print_machine(results)
    print(f"  generic autograd path, whole                      {whole:8.2f} ms")
    print(f"    inside the raw bodies of its primitives          {inside * 1e3:8.2f} ms "
          f"({evaluations} evaluations)")
    print(f"    the rest: autograd's tracing and backward, glue  {whole - inside * 1e3:8.2f} ms")
    print(f"  FusedMLP.meta_gradient (written out, no autograd) {written_out:8.2f} ms")
    if peer is not None:
        print(f"  JAX jit(grad(vmap))                               {peer:8.2f} ms; 3 × JAX = "
              f"{3 * peer:.2f} ms, {3 * peer - inside * 1e3:.2f} ms of it left beside the raw bodies")
    results["sinusoid"] = {"row": row, "load_average_end": _print_load_at_end()}


def _print_load_at_end():
    """Print the load average at the end of a table; returns it."""
    end = bench_machine.load_average()
    print(f"  load average {bench_machine.load_text(end)} at the end")
    return end


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--repeats", type=int, default=30, help="calls timed per variant (default 30)")
    parser.add_argument("--json", metavar="PATH", help="also write the tables and the machine as JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1; got {args.repeats}")
    problem = args.json and json_path_problem(args.json)    # before measuring, not after
    if problem:
        print(f"floors.py: cannot write {args.json}: it {problem}", file=sys.stderr)
        return 2
    from bench import keep_freed_memory
    results = {"malloc": keep_freed_memory()}
    results["machine"] = bench_machine.describe(results["malloc"])
    run = {"conv4": conv4_part, "sinusoid": sinusoid_part}
    for part in args.only:
        run[part](args.repeats, results)
    return write_json(args.json, results, "floors.py") if args.json else 0


if __name__ == "__main__":
    sys.exit(main())
