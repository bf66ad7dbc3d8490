"""Shared test setup: hypothesis profiles, and the ``dev`` fixture that runs a test per device.

    def test_x(dev):
        x = dev.asarray(np_array)      # on numpy, on the strict stand-in, or on CuPy
        ...
        np.testing.assert_allclose(dev.to_host(result), expected)

The "strict" device is refmeta.device.strict.StrictArray: a silent host copy raises there, on the CPU.
"cupy" is skipped, with its reason shown by ``-ra``, unless cupy and a GPU are present.
Choose the hypothesis profile with HYPOTHESIS_PROFILE=ci|dev|thorough (default ci).
"""

import importlib.util
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from refmeta.device import backend, strict

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=10, deadline=None)
settings.register_profile("thorough", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


class Device:
    """One place arrays can live, with explicit moves to and from the host.

    Attributes:
        name: "numpy", "strict" or "cupy".
    """

    def __init__(self, name, move, array_types):
        self.name = name
        self._move = move  # host ndarray -> device array
        self._array_types = array_types

    def asarray(self, host):
        """Host data -> a device array.  Keeps the dtype (int labels stay int; lists of floats are float64)."""
        return self._move(np.asarray(host))

    def tree(self, host_tree):
        """A dict of host arrays -> the same dict of device arrays."""
        return {name: self.asarray(value) for name, value in host_tree.items()}

    def to_host(self, x):
        """A device array, or a dict / list tree of them -> numpy."""
        return backend.to_host(x)

    def is_array(self, x):
        """True if ``x`` is an array of this device (numpy's scalars count as numpy's)."""
        return isinstance(x, self._array_types)

    def __repr__(self):
        return f"Device({self.name!r})"


def _cupy_device():
    if importlib.util.find_spec("cupy") is None:
        pytest.skip("cupy not installed")
    if not backend.is_available("cupy"):
        pytest.skip("no GPU")
    cupy = backend.load_cupy()
    return Device("cupy", cupy.asarray, (cupy.ndarray,))


@pytest.fixture(scope="session", params=["numpy", "strict", "cupy"])
def dev(request):
    """The device a test runs on; session-scoped so hypothesis ``@given`` tests can use it."""
    if request.param == "numpy":
        return Device("numpy", np.array, (np.ndarray, np.generic))
    if request.param == "strict":
        return Device("strict", strict.asarray, (strict.StrictArray,))
    return _cupy_device()
