"""What a timing depends on besides the code: the CPU, the BLAS and the kernel it chose, the
library versions, the thread settings and the load.  ``bench.py`` prints ``summary()`` with
every table and records ``describe()`` in its JSON.

The same two implementations can stand in a different ratio on another CPU: OpenBLAS picks its
kernels at run time from the CPU it finds (SkylakeX where AVX-512 is present, Haswell or Zen on
AVX2 machines), and PyTorch dispatches to its own (AVX2, AVX512).  So a ratio is reported with
them, and with the threads and the load it was measured under.

    describe()       {"cpu", "python", "numpy", "autograd", "refmeta", "blas", "torch", "jax",
                      "threads", "cpu_affinity", "malloc", "load_average"}: plain JSON
    summary(machine) the same, but the load, in four lines of text

The BLAS libraries come from threadpoolctl (``pip install 'refmeta[bench]'``): its
``threadpool_info()`` names each loaded BLAS and OpenMP library, its version, the kernel
("architecture") OpenBLAS chose and its number of threads.  Without threadpoolctl,
``describe`` gives numpy's build configuration instead (the library and version numpy was
built against, not the kernel chosen on this CPU), and says so.  PyTorch's MKL is linked into
its own library, where threadpoolctl cannot see it: ``torch.__config__`` names it, and
``torch.backends.cpu.get_cpu_capability()`` the kernels PyTorch dispatches to.
"""

import os
import platform
import re
import sys

import numpy as np

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS")
VECTOR_FLAGS = ("avx2", "avx512f", "fma", "asimd", "sve")
BLAS_FIELDS = ("user_api", "internal_api", "prefix", "version", "architecture", "threading_layer",
               "num_threads")


def load_average():
    """The 1-, 5- and 15-minute load averages, as a list (JSON)."""
    return [round(x, 2) for x in os.getloadavg()]


def cpu():
    """{"model", "cpuid", "logical_cpus", "vector_extensions", "platform"} of this machine."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if not line.strip():
                    break                       # the first processor's block is enough
                fields.setdefault(key, value.strip())
    except OSError:
        pass
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    cpuid = " ".join(f"{name} {fields[key]}" for name, key in
                     (("family", "cpu family"), ("model", "model"), ("stepping", "stepping"))
                     if key in fields)
    return {"model": fields.get("model name") or platform.processor() or platform.machine(),
            "cpuid": cpuid, "logical_cpus": os.cpu_count(),
            "vector_extensions": [flag for flag in VECTOR_FLAGS if flag in flags],
            "platform": platform.platform()}


def blas():
    """threadpoolctl's view of the loaded BLAS and OpenMP libraries (a list of dicts), or a dict
    {"threadpoolctl": "not installed", "numpy_build": ...} from numpy's build configuration."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        build = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
        return {"threadpoolctl": "not installed",
                "numpy_build": {k: build.get(k) for k in ("name", "version", "openblas configuration")}}
    return [{k: info.get(k) for k in BLAS_FIELDS} for info in threadpool_info()]


def torch_runtime():
    """PyTorch's version, BLAS, kernel set and threads, if bench.py imported it; else None."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    found = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    return {"version": torch.__version__, "blas": found.group(1) if found else None,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "num_threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads()}


def jax_runtime():
    """JAX's version and devices, if bench.py imported it; else None."""
    jax = sys.modules.get("jax")
    if jax is None:
        return None
    return {"version": jax.__version__, "devices": [str(d) for d in jax.devices()]}


def describe(malloc=None):
    """Everything above, as one JSON-able dict; ``malloc``: what bench.py did to glibc's malloc."""
    return {"cpu": cpu(), "python": platform.python_version(), "numpy": np.__version__,
            "autograd": _installed_version("autograd"), "refmeta": _installed_version("refmeta"),
            "blas": blas(), "torch": torch_runtime(), "jax": jax_runtime(),
            "threads": {name: os.environ.get(name) for name in THREAD_VARIABLES},
            "cpu_affinity": affinity(), "malloc": malloc, "load_average": load_average()}


def affinity():
    """The CPUs this process may run on (``taskset``), or None where the system does not say."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _installed_version(name):
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def load_text(averages):
    return " ".join(f"{x:.2f}" for x in averages)


def summary(machine):
    """Four lines of text: the CPU; numpy and its BLAS; the peers; the thread settings."""
    c = machine["cpu"]
    vector = ", ".join(c["vector_extensions"]) or "no AVX2 / AVX-512"
    lines = [f"CPU {c['model']} ({c['cpuid'] or 'cpuid unknown'}; {vector}), "
             f"{c['logical_cpus']} logical CPUs, {c['platform']}",
             f"refmeta {machine['refmeta']}, numpy {machine['numpy']}, autograd {machine['autograd']}, "
             f"Python {machine['python']}; " + blas_text(machine["blas"])]
    peers = []
    if machine["torch"]:
        t = machine["torch"]
        peers.append(f"torch {t['version']}: BLAS {t['blas']}, {t['cpu_capability']} kernels, "
                     f"{_threads(t['num_threads'])}")
    if machine["jax"]:
        peers.append(f"jax {machine['jax']['version']} on {', '.join(machine['jax']['devices'])}")
    lines.append("; ".join(peers) or "no peer imported (torch, jax)")
    settings = " ".join(f"{name}={'unset' if value is None else value}"
                        for name, value in machine["threads"].items())
    cpus = machine["cpu_affinity"]
    allowed = "" if cpus is None else f"; runs on CPU {', '.join(map(str, cpus))}"
    lines.append(f"threads: {settings}{allowed}" + (f"; {machine['malloc']}" if machine["malloc"] else ""))
    return lines


def print_summary(machine, indent="  "):
    for line in summary(machine):
        print(indent + line)


def blas_text(libraries):
    """"BLAS openblas 0.3.31 (kernel SkylakeX, 1 thread); OpenMP libgomp (1 thread)", from blas()."""
    if isinstance(libraries, dict):
        build = libraries["numpy_build"]
        return (f"BLAS {build['name']} {build['version']} as numpy was built (the kernel chosen and the "
                "threads: pip install threadpoolctl)")
    parts = []
    for lib in libraries:
        what = "BLAS" if lib["user_api"] == "blas" else "OpenMP" if lib["user_api"] == "openmp" else lib["user_api"]
        name = f"{lib['internal_api']} {lib['version']}" if lib.get("version") else lib["prefix"]
        kernel = f"kernel {lib['architecture']}, " if lib.get("architecture") else ""
        parts.append(f"{what} {name} ({kernel}{_threads(lib['num_threads'])})")
    return "; ".join(parts) or "no BLAS or OpenMP library loaded"


def _threads(n):
    return f"{n} thread{'s' if n != 1 else ''}"
