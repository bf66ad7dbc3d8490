"""benchmarks/ runs: every part of bench.py once (one repeat per variant, one thread), with every
installed peer computing the same gradient as refmeta (bench_compare.check_same asserts it);
the machine printed with every table; the primitive counter on toys counted by hand; the
profile's parts.  Nothing here asserts a time."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

BENCHMARKS = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")
HAS_TORCH, HAS_JAX = (importlib.util.find_spec(name) is not None for name in ("torch", "jax"))


def load(name):
    """benchmarks/<name>.py, imported by file (it puts benchmarks/ on sys.path for its siblings)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    module = load("bench")
    sys.modules["bench_compare"].PAUSE_S = 0.0
    return module


@pytest.fixture(scope="module")
def check_same(bench):
    """bench_compare.check_same, as bench.py imports it (benchmarks/ on sys.path)."""
    return sys.modules["bench_compare"].check_same


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One BLAS / OpenMP / PyTorch thread: two threads per library fight on a busy machine."""
    torch = importlib.import_module("torch") if HAS_TORCH else None
    threads = torch.get_num_threads() if torch else None
    with threadpool_limits(1):
        if torch:
            torch.set_num_threads(1)
        yield
        if torch:
            torch.set_num_threads(threads)


# ----- every part runs, and its peers agree -----
@pytest.mark.parametrize("part, key, variants", [
    ("conv4_part", "conv4", {("refmeta", "float64"), ("refmeta", "float32")}
     | ({("PyTorch eager", "float64"), ("PyTorch eager", "float32")} if HAS_TORCH else set())),
    ("protonet_part", "protonet", {("refmeta", "float64"), ("refmeta", "float32")}
     | ({("PyTorch eager", "float64"), ("PyTorch eager", "float32")} if HAS_TORCH else set())),
    ("maml_conv4_part", "maml-conv4", {("refmeta", "float64"), ("refmeta", "float32")}
     | ({("PyTorch eager", "float64"), ("PyTorch eager", "float32")} if HAS_TORCH else set())
     | ({("JAX jit", "float64"), ("JAX jit", "float32")} if HAS_JAX else set())),
    ("sinusoid_part", "sinusoid", {("refmeta vectorised", "float64"), ("refmeta per-task loop", "float64"),
                                   ("refmeta vectorised, fused_mlp", "float64"),
                                   ("refmeta fused_mlp, Eq. (3) written out", "float64")}
     | ({("JAX jit(grad(vmap))", "float64")} if HAS_JAX else set())
     | ({("PyTorch eager per-task loop", "float64"), ("PyTorch eager vectorised", "float64"),
         ("torch.func grad(vmap)", "float64")} if HAS_TORCH else set())),
    ("metanet_part", "metanet", {("refmeta (per-example gradients vectorised)", "float64")}
     | ({("PyTorch eager (per-example loop)", "float64")} if HAS_TORCH else set())),
])
def test_each_timed_part_runs_and_prints_the_machine_with_its_table(bench, part, key, variants, capsys):
    results = {"malloc": "default"}
    getattr(bench, part)(1, results)
    table = results[key]
    assert {(row["variant"], row["dtype"]) for row in table["rows"]} == variants
    assert all(row["median_ms"] > 0 for row in table["rows"])
    baseline = [row for row in table["rows"] if row["variant"] == table["baseline"]]
    assert baseline and all(row["ratio"] == 1.0 for row in baseline)
    assert len(table["load_average_end"]) == 3 and len(table["machine"]["load_average"]) == 3
    openblas = [lib for lib in table["machine"]["blas"] if lib["internal_api"] == "openblas"]
    out = capsys.readouterr().out
    assert "CPU " in out and "at the start" in out and "at the end" in out and "median ms" in out
    for lib in openblas:                        # numpy's wheels ship OpenBLAS: its kernel is printed
        assert lib["architecture"] and f"kernel {lib['architecture']}" in out
    json.dumps(results)


def test_the_snail_part_runs_and_peers_agree(bench, capsys):
    results = {}
    bench.snail_part(1, results)
    assert set(results["snail"]) == {"step", "stack"}
    for case in results["snail"].values():
        assert [row["variant"] for row in case["rows"]] == ["refmeta"] + ["PyTorch eager"] * HAS_TORCH
        assert all(row["median_ms"] > 0 for row in case["rows"])
    assert "SNAIL training step" in capsys.readouterr().out


def test_the_memory_part_measures_in_fresh_processes(bench, capsys):
    results = {}
    bench.memory_part(results, steps=(1,))
    peaks = results["memory"]["peak"]
    assert set(peaks) == {"refmeta k=1"} | ({"torch k=1"} if HAS_TORCH else set())
    assert all(m["peak_mib"] >= m["before_mib"] > 0 for m in peaks.values())
    assert peaks["refmeta k=1"]["traced_peak_mib"] > 1          # the meta-gradient allocates MiBs
    assert "peak RSS MiB" in capsys.readouterr().out


def test_the_primitives_part_counts_every_workload(bench, capsys):
    results = {}
    bench.primitives_part(results)
    counts = results["primitives"]["counts"]
    generic, fused = (counts[f"sinusoid MAML meta-gradient, {path}"]
                      for path in ("generic autograd path", "fused_mlp through maml"))
    for c in counts.values():
        assert c["primitive_calls"] == c["boxed_calls"] + c["evaluations"]
        assert 0 < c["tape_nodes"] <= c["boxed_calls"]
        assert sum(c["tape_nodes_by_primitive"].values()) == c["tape_nodes"]
    assert fused["tape_nodes"] < generic["tape_nodes"]            # three primitives replace the MLP's
    assert "tape nodes" in capsys.readouterr().out


def test_main_writes_the_machine_and_the_tables_as_json(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--only", "primitives", "--default-malloc", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results) >= {"machine", "primitives", "load_average_end"}
    assert results["machine"]["cpu"]["logical_cpus"] >= 1 and results["malloc"] == "default"


def test_main_refuses_a_json_path_it_cannot_write_before_measuring(bench, tmp_path, capsys):
    assert bench.main(["--only", "primitives", "--json", str(tmp_path)]) == 2
    assert bench.main(["--only", "primitives", "--json", str(tmp_path / "no" / "b.json")]) == 2
    out, err = capsys.readouterr()
    assert "tape nodes" not in out and err.count("\n") == 2 and "cannot write" in err


def test_the_targets_are_the_ratios_of_medians_in_one_dtype(bench, capsys):
    rows = lambda *medians: [{"variant": v, "dtype": d, "median_ms": m} for v, d, m in medians]
    results = {"machine": {"cpu": {"model": "a CPU"}, "blas": []},
               "conv4": {"rows": rows(("refmeta", "float64", 300.0), ("PyTorch eager", "float64", 200.0),
                                      ("refmeta", "float32", 90.0), ("PyTorch eager", "float32", 100.0))},
               "sinusoid": "not a table"}
    bench.print_targets(results)
    assert [(t["dtype"], t["ratio"]) for t in results["targets"]] == [("float64", 1.5), ("float32", 0.9)]
    out = capsys.readouterr().out
    assert "not met" in out and out.count(" met") == 2


# ----- check_same -----
def test_check_same_rejects_a_different_gradient(check_same):
    reference = {"w": np.ones(3)}
    check_same(reference, {"w": np.ones(3) + 1e-12}, ["w"], "close")
    with pytest.raises(AssertionError):
        check_same(reference, {"w": np.ones(3) + 1e-6}, ["w"], "far")


def test_check_same_rejects_a_float32_row_computed_in_float64(check_same):
    reference = {"w": np.ones(3)}
    check_same(reference, {"w": np.ones(3, np.float32)}, ["w"], "float32", "float32")
    with pytest.raises(AssertionError, match="computed in"):
        check_same(reference, {"w": np.ones(3)}, ["w"], "upcast", "float32")


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch (pip install torch)")
def test_the_float32_tolerance_passes_pytorch_and_fails_a_porting_mistake(bench, check_same):
    """PyTorch's float32 ProtoNet passes 1e-3; the same with TensorFlow's batch norm ε (1e-3 for
    PyTorch's 1e-5) fails."""
    import torch
    data = bench.metric_data()
    reference = bench.refmeta_protonet(*data)()
    names = sorted(reference)
    float32 = tuple(bench.in_dtype(a, "float32") for a in data)
    check_same(reference, bench.torch_protonet(torch, *float32)(), names, "PyTorch", "float32")
    with pytest.raises(AssertionError):
        check_same(reference, bench.torch_protonet(torch, *float32, bn_eps=1e-3)(), names,
                         "TF's ε", "float32")


# ----- the machine -----
def test_the_machine_without_threadpoolctl_names_numpys_build_blas(monkeypatch):
    machine = load("bench_machine")
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)     # import threadpoolctl fails
    described = machine.describe()
    assert described["blas"]["threadpoolctl"] == "not installed"
    assert "pip install threadpoolctl" in machine.summary(described)[1]
    json.dumps(described)


# ----- the primitive counter, on toys counted by hand -----
def toy_primitives():
    """double(x) = 2x, times(a, b) = ab, square(x) = x², total(x) = Σx, as autograd primitives
    whose VJPs are written with these primitives (total's with numpy)."""
    from autograd.extend import defvjp, primitive
    double, times = primitive(lambda x: 2 * x), primitive(lambda a, b: a * b)
    square, total = primitive(lambda x: x * x), primitive(np.sum)
    defvjp(double, lambda ans, x: lambda g: double(g))
    defvjp(times, lambda ans, a, b: lambda g: times(g, b), lambda ans, a, b: lambda g: times(g, a))
    defvjp(square, lambda ans, x: lambda g: times(double(x), g))
    defvjp(total, lambda ans, x: lambda g: np.full(np.shape(x), g))
    return square, total


def test_the_counter_counts_a_first_order_gradient_by_hand():
    """grad of total(square(x)), with a comparison x > −1 on the side: the forward pass calls
    square and total on x boxed once, two wrapper calls each (the second on the unboxed value:
    2 nodes, 2 evaluations), and the comparison likewise but records nothing (no node); the
    backward pass calls double(x) and times(·, g) on raw arrays (2 evaluations).  8 calls."""
    import autograd.numpy as anp
    from autograd import grad
    count_primitives = load("count_primitives")
    square, total = toy_primitives()
    f = lambda x: (anp.greater(x, -1), total(square(x)))[1]
    with count_primitives.counting() as counts:
        np.testing.assert_allclose(grad(f)(np.arange(3.0)), [0, 2, 4], rtol=1e-15)
    assert (counts.calls, counts.boxed_calls, counts.evaluations) == (8, 3, 5)
    assert dict(counts.nodes) == {"<lambda>": 1, "sum": 1}


def test_the_counter_counts_a_second_order_gradient_by_hand():
    """grad of x ↦ total(grad(total ∘ square)(x)).  Inner forward: square and total on x boxed
    twice, 3 wrapper calls and 2 nodes each; inner backward: double(x), times(2x, g) on x boxed
    once, 2 calls and 1 node each; outer: total of that, 2 calls, 1 node; outer backward: raw
    times and double, 1 call each.  14 calls, 7 nodes, 7 evaluations."""
    from autograd import grad
    count_primitives = load("count_primitives")
    square, total = toy_primitives()
    f = lambda x: total(square(x))
    with count_primitives.counting() as counts:
        np.testing.assert_allclose(grad(lambda x: total(grad(f)(x)))(np.arange(3.0)), [2, 2, 2], rtol=1e-15)
    assert (counts.calls, sum(counts.nodes.values()), counts.evaluations) == (14, 7, 7)
    assert counts.boxed_calls == 7
    assert counts.nodes["sum"] == 3


def test_the_counter_leaves_autograd_as_it_was_even_after_an_error():
    from autograd import core, tracer
    count_primitives = load("count_primitives")
    before = tracer.find_top_boxed_args, core.VJPNode.__init__
    with pytest.raises(ZeroDivisionError):
        with count_primitives.counting():
            1 / 0
    assert (tracer.find_top_boxed_args, core.VJPNode.__init__) == before


# ----- the profile -----
def test_every_function_the_profile_names_exists():
    profile = load("profile_conv4")
    assert profile.part_keys()[1] == []


def test_the_profile_gives_every_part_its_time_once(tmp_path, capsys):
    profile = load("profile_conv4")
    out = tmp_path / "profile.json"
    assert profile.main(["--calls", "1", "--top", "3", "--json", str(out)]) == 0
    parts = json.loads(out.read_text())["parts"]
    assert [p["part"] for p in parts] == [name for name, _ in profile.PARTS] + ["other"]
    assert all(p["calls_per_call"] > 0 for p in parts[:-1])      # every part's functions ran
    assert all(p["share"] >= 0 for p in parts) and sum(p["share"] for p in parts) == pytest.approx(1)
    assert "batch norm" in capsys.readouterr().out


def _inner():
    return sum(i * i for i in range(200_000))


def _outer():
    return _inner() + sum(i for i in range(200_000))


def test_the_profile_counts_a_nested_call_once_in_the_callees_part():
    """A listed function calling another directly: the callee's time is its part's only."""
    import cProfile
    import pstats
    profile = load("profile_conv4")
    profiler = cProfile.Profile()
    profiler.runcall(_outer)
    stats = pstats.Stats(profiler)
    rows, total = profile.shares(stats, {"outer": profile.code_keys(_outer), "inner": profile.code_keys(_inner)})
    seconds = {part: s for part, s, _ in rows}
    cumulative = {key[2]: value[3] for key, value in stats.stats.items() if key[2] in ("_outer", "_inner")}
    assert seconds["inner"] == pytest.approx(cumulative["_inner"], rel=1e-12)
    assert seconds["outer"] == pytest.approx(cumulative["_outer"] - cumulative["_inner"], rel=1e-9)
    assert 0 < seconds["other"] < total


# ----- the floors -----
class _RecordingNumpy:
    """numpy, but every matmul records its operands' shapes (patched into refmeta.nn.conv)."""

    def __init__(self):
        self.shapes = []

    def matmul(self, a, b, **kwargs):
        self.shapes.append((a.shape, b.shape))
        return np.matmul(a, b, **kwargs)

    def __getattr__(self, name):
        return getattr(np, name)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_floor_makes_the_products_the_conv4_pass_makes(monkeypatch, dtype):
    from refmeta.nn import conv
    floors, workloads = load("floors"), sys.modules["bench_workloads"]
    recording = _RecordingNumpy()
    monkeypatch.setattr(conv, "np", recording)
    data = tuple(workloads.in_dtype(a, dtype) for a in workloads.metric_data())
    workloads.refmeta_conv4_pass(*data)()
    listed = floors.conv4_products(np.dtype(dtype).itemsize)
    assert sorted(recording.shapes) == sorted(listed)
    assert len(listed) > 4 * 3                                  # chunked: several per product


def test_the_evaluation_timer_sees_every_evaluation_and_restores_autograd():
    floors, count_primitives = load("floors"), load("count_primitives")
    workloads = sys.modules["bench_workloads"]
    gradient = workloads.refmeta_sinusoid(*workloads.sinusoid_data())
    before = [(wrapper, cell.cell_contents) for wrapper, cell in floors._primitive_wrappers()]
    seconds, evaluations = floors.evaluation_time(gradient, 2)
    assert evaluations == count_primitives.count(gradient).evaluations > 0
    assert seconds > 0
    with pytest.raises(ZeroDivisionError):
        with floors.timing_evaluations():
            1 / 0
    assert all(wrapper.__closure__ is not None and wrapper.fun is raw
               and any(c.cell_contents is raw for c in wrapper.__closure__) for wrapper, raw in before)


def test_the_floors_run_and_write_json(tmp_path, capsys):
    floors = load("floors")
    sys.modules["bench_compare"].PAUSE_S = 0.0
    out = tmp_path / "floors.json"
    assert floors.main(["--repeats", "1", "--json", str(out)]) == 0
    written = json.loads(out.read_text())
    assert [row["dtype"] for row in written["conv4"]["rows"]] == ["float64", "float32"]
    assert written["sinusoid"]["row"]["evaluations"] > 0
    printed = capsys.readouterr().out
    assert "products alone" in printed and "inside the raw bodies" in printed and "load average" in printed


def test_the_evaluation_timer_counts_a_nested_evaluations_time_once():
    """A raw body that calls another primitive: two evaluations, and no more time inside the
    raw bodies than the calls took in all (counted twice, it would be about twice as much)."""
    import time
    from autograd.extend import primitive
    floors = load("floors")
    inner = primitive(lambda x: time.sleep(0.02) or x)
    outer = primitive(lambda x: inner(x) + 0)
    start = time.perf_counter()
    with floors.timing_evaluations() as total:
        for _ in range(3):
            outer(1.0)
    elapsed = time.perf_counter() - start
    assert total[1] == 6
    assert 0.06 <= total[0] <= elapsed


def test_the_floors_refuse_a_json_path_they_cannot_write_before_measuring(tmp_path, capsys):
    floors = load("floors")
    assert floors.main(["--json", str(tmp_path / "missing" / "floors.json")]) == 2
    captured = capsys.readouterr()
    assert "cannot write" in captured.err and "products alone" not in captured.out
