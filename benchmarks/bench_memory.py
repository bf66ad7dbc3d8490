"""Peak memory of the conv4 second-order MAML meta-gradient with k inner steps, for bench.py's
``memory`` part: each measurement runs in a fresh process,

    python benchmarks/bench_memory.py refmeta|torch K

which prints one JSON line: the resident size just before the call (VmRSS), its peak during the
call (VmHWM), their difference, and for refmeta the peak of numpy's allocations as tracemalloc
sees them in a second call.  Memory does not depend on the load.
"""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from bench_workloads import conv4_data, refmeta_conv4  # noqa: E402


def _status_mib(field):
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def measure(framework, inner_steps):
    """{"before_mib", "peak_mib", "growth_mib"[, "traced_peak_mib"]} of one meta-gradient."""
    params, data = conv4_data()
    if framework == "refmeta":
        fn = refmeta_conv4(params, data, inner_steps)
    else:
        import torch
        from bench_torch import torch_conv4
        torch.set_default_dtype(torch.float64)
        fn = torch_conv4(torch, params, data, inner_steps)
    before = _status_mib("VmRSS")
    fn()
    result = {"before_mib": before, "peak_mib": _status_mib("VmHWM")}
    result["growth_mib"] = result["peak_mib"] - before
    if framework == "refmeta":
        import tracemalloc
        tracemalloc.start()
        fn()
        result["traced_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2 ** 20
    return result


def in_fresh_process(framework, inner_steps):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), framework, str(inner_steps)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(frameworks, steps):
    """Print one row per (framework, k), each measured in a fresh process; returns {"refmeta k=1": ...}."""
    print(f"  {'':8s} {'k':>2s} {'peak RSS MiB':>13s} {'growth MiB':>11s} {'Δ/step':>7s} "
          f"{'numpy traced peak MiB':>22s} {'Δ/step':>7s}")
    measured = {}
    for framework in frameworks:
        previous = None
        for k in steps:
            m = in_fresh_process(framework, k)
            traced = m.get("traced_peak_mib")
            step = lambda key: "" if previous is None or previous.get(key) is None else \
                f"{(m[key] - previous[key]) / (k - previous['k']):7.1f}"
            print(f"  {framework:8s} {k:2d} {m['peak_mib']:13.1f} {m['growth_mib']:11.1f} "
                  f"{step('growth_mib'):>7s} {'' if traced is None else f'{traced:22.1f}':>22s} "
                  f"{step('traced_peak_mib'):>7s}")
            measured[f"{framework} k={k}"] = m
            previous = dict(m, k=k)
    return measured


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]))))
