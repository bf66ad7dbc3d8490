"""Where new data lives: numpy or CuPy.

    use("numpy" | "cupy")     choose the backend; default numpy
    use_environment()         choose the one REFMETA_BACKEND names (numpy if unset): ``import refmeta``
    current() -> str          the backend's name
    asarray(host, dtype)      host data -> an array of the current backend
    to_host(x)                any array, or a dict / list tree of them -> numpy (explicitly)
    is_available("cupy")      cupy importable and a CUDA device present
    load_cupy()               import CuPy and register ``cupy.ndarray`` with autograd, once

Algorithms never ask the backend: they follow their inputs (``anp.zeros_like(x)``,
``numpy.asarray(host, like=x)``).  Only code that creates data uses ``asarray``.  How autograd
differentiates a CuPy array is ``refmeta.device.autograd_patches``'s concern.
"""

import os

import numpy as np
from autograd.tracer import Box

from refmeta.device import autograd_patches

__all__ = ["BACKENDS", "use", "use_environment", "current", "asarray", "to_host", "is_available", "load_cupy"]

BACKENDS = ("numpy", "cupy")
_state = {"name": "numpy"}


def _cupy_scatter_add(a, indices, values):
    import cupy
    import cupyx
    scatter = getattr(cupyx, "scatter_add", None)  # cupy.add.at where a future CuPy drops it
    (scatter or cupy.add.at)(a, indices, values)


def load_cupy():
    """Import CuPy, register ``cupy.ndarray`` with autograd once, and return the module."""
    try:
        import cupy
    except ImportError as err:
        raise ImportError("backend 'cupy' needs the cupy package: pip install 'refmeta[gpu]' "
                          "or the cupy-cudaXXx wheel matching your CUDA") from err
    if not is_available("cupy"):
        raise RuntimeError("backend 'cupy': cupy is installed but no CUDA device was found")
    if not autograd_patches.is_registered(cupy.ndarray):
        autograd_patches.register_array_type(cupy.ndarray, cupy, _cupy_scatter_add)
    return cupy


def _check_name(name):
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")


def is_available(name):
    """True if backend ``name`` can run here: for "cupy", importable and a GPU present."""
    _check_name(name)
    if name == "numpy":
        return True
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, or CUDA driver errors when there is no GPU
        return False


def use(name):
    """Make ``name`` ("numpy" or "cupy") the backend that ``asarray`` creates data on."""
    _check_name(name)
    if name == "cupy":
        load_cupy()
    _state["name"] = name


def use_environment():
    """Choose the backend the environment variable REFMETA_BACKEND names, numpy if it is unset or
    empty; ``import refmeta`` calls this once."""
    use(os.environ.get("REFMETA_BACKEND") or "numpy")


def current():
    return _state["name"]


def asarray(host_array, dtype=np.float64):
    """Host data -> an array of the current backend.  ``dtype=None`` keeps the host dtype."""
    if _state["name"] == "cupy":
        return load_cupy().asarray(host_array, dtype=dtype)
    return np.asarray(host_array, dtype=dtype)


def to_host(x):
    """Any supported array, or a dict / list / (named)tuple tree of them -> numpy; other leaves as they are."""
    if isinstance(x, dict):
        return {name: to_host(value) for name, value in x.items()}
    if isinstance(x, (list, tuple)):
        values = [to_host(value) for value in x]
        return type(x)(*values) if hasattr(x, "_fields") else type(x)(values)  # NamedTuples too
    if isinstance(x, Box):
        raise TypeError("to_host got an autograd box: read values outside differentiated code")
    return x.get() if autograd_patches.is_registered(type(x)) else x

