"""Checking and timing one table of bench.py: every variant's gradient against refmeta's float64
one, then a block of back-to-back calls per variant, printed with the machine and the load.

    check_same(reference, out, names, label, dtype)   the gradients agree, and are ``dtype``
    compare(title, variants, baseline, repeats, results) -> the table as a dict (JSON)
    print_machine(results)           the machine and the load, printed above each table
    write_json(path, data, script)   the --json file of bench.py, profile_conv4.py and floors.py

Tolerances (``TOLERANCE``): max |theirs − reference| / max |reference|, the reference being
refmeta's float64 gradient.  float64: 1e-10.  float32: 1e-3.  float32 rounds at 6e-8; its sums
over up to 62 720 terms (80 images × 28 × 28) taken in another order, and a second-order pass,
reach 7e-5 of the scale with PyTorch's float32 kernels, while a convention that differs (batch
norm's ε, the unbiased variance) is well above 1e-3.
"""

import json
import os
import sys
import time
from collections import namedtuple

import numpy as np

import bench_machine

PAUSE_S = 0.5
TOLERANCE = {"float64": 1e-10, "float32": 1e-3}

Variant = namedtuple("Variant", "label dtype fn")


def timed(fn, repeats, warmup=2):
    """Median seconds of ``repeats`` back-to-back calls after ``warmup`` calls, then a pause."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    time.sleep(PAUSE_S)
    return float(np.median(times)), float(np.percentile(times, 25)), float(np.percentile(times, 75))


def check_same(reference, out, names, label, dtype="float64"):
    """A peer's gradient equals refmeta's float64 ``reference`` to TOLERANCE[dtype] of its scale,
    and every array of it has that dtype.  ``out`` is a dict by name (refmeta, JAX, torch.func)
    or a list in sorted-name order."""
    values = [out[k] for k in names] if isinstance(out, dict) else list(out)
    values = [np.asarray(v.detach() if hasattr(v, "detach") else v) for v in values]
    wrong = sorted({str(v.dtype) for v in values} - {dtype})
    assert not wrong, (label, f"computed in {wrong}, not {dtype}")
    scale = max(np.abs(reference[k]).max() for k in names)
    worst = max(np.abs(v - reference[k]).max() for v, k in zip(values, names))
    assert worst <= TOLERANCE[dtype] * scale, (label, dtype, worst, scale)


def compare(title, variants, baseline, repeats, results, reference=None):
    """Check every variant against refmeta's float64 gradient (the first variant's, unless
    ``reference`` is given), time it, print the table with the machine and the load; returns
    the table as a dict for the JSON."""
    print(f"\n{title}")
    machine = print_machine(results)
    reference = variants[0].fn() if reference is None else reference
    names = sorted(reference)
    rows = []
    for variant in variants:
        check_same(reference, variant.fn(), names, variant.label, variant.dtype)
        median, q1, q3 = timed(variant.fn, repeats, warmup=1)
        rows.append({"variant": variant.label, "dtype": variant.dtype, "median_ms": median * 1e3,
                     "q1_ms": q1 * 1e3, "q3_ms": q3 * 1e3})
    base = {row["dtype"]: row["median_ms"] for row in rows if row["variant"] == baseline}
    print(f"  {'variant':42s} {'dtype':8s} {'median ms':>10s} {'IQR ms':>17s} {'÷ ' + baseline:>22s}")
    for row in rows:
        row["ratio"] = row["median_ms"] / base[row["dtype"]] if row["dtype"] in base else None
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
        print(f"  {row['variant']:42s} {row['dtype']:8s} {row['median_ms']:10.2f} "
              f"{row['q1_ms']:8.2f}–{row['q3_ms']:<8.2f} {ratio:>22s}")
    end = bench_machine.load_average()
    dtypes = [d for d in TOLERANCE if any(row["dtype"] == d for row in rows)]
    print(f"  load average {bench_machine.load_text(end)} at the end; the gradients agree with refmeta's "
          "float64 one to " + ", ".join(f"{TOLERANCE[d]:g} of its scale in {d}" for d in dtypes))
    return {"title": title, "baseline": baseline, "machine": machine, "load_average_end": end,
            "tolerance": {d: TOLERANCE[d] for d in dtypes}, "rows": rows}


def print_machine(results):
    """Print the machine (with what was done to malloc, ``results["malloc"]``) and the load at
    the start of a table; returns the machine as a dict."""
    machine = bench_machine.describe(results.get("malloc"))
    bench_machine.print_summary(machine)
    print(f"  load average {bench_machine.load_text(machine['load_average'])} at the start")
    return machine


def json_path_problem(path):
    """Why ``path`` cannot take write_json's output (None if it can): checked before measuring."""
    from refmeta import disk
    return disk.write_problem(path) or (
        None if os.path.isdir(os.path.dirname(os.path.abspath(path))) else "is in a folder that does not exist")


def write_json(path, data, script):
    """``data`` as JSON at ``path``, whole or not at all even on SIGTERM (``refmeta.disk``); the
    exit status: 0, or 2 after one line on stderr naming ``script``."""
    from refmeta import disk
    try:
        disk.replace_atomically(path, lambda f: json.dump(data, f, indent=1), "w")
    except (ValueError, OSError) as error:
        print(f"{script}: cannot write {path}: {error}", file=sys.stderr)
        return 2
    return 0
