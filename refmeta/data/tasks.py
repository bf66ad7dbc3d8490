"""Sinusoid regression tasks, as Episodes (``refmeta.contract.Episode``, re-exported here).

Sinusoid regression (Finn et al. 2017, Section 5.1)
    y = A · sin(x + s·φ),   A ~ U[amplitude_range], φ ~ U[phase_range], x ~ U[x_range]

    ``phase_sign`` s is explicit: the MAML authors' code uses A·sin(x − φ)
    (s = −1, the default here, with φ ∈ [0, π]); Reptile's sine uses x + b with
    b ∈ [0, 2π] (s = +1).
"""

import math
from typing import NamedTuple

import numpy as np

from refmeta import checks
from refmeta.contract import Episode
from refmeta.device import backend


class SinusoidFamily(NamedTuple):
    """The sinusoid task distribution; the defaults are the MAML paper's."""
    amplitude_range: tuple = (0.1, 5.0)
    phase_range: tuple = (0.0, math.pi)
    x_range: tuple = (-5.0, 5.0)
    phase_sign: int = -1

    def check(self):
        for name in ("amplitude_range", "phase_range", "x_range"):
            low, high = getattr(self, name)
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ValueError(f"{name} must be finite (low, high) with low <= high; got {(low, high)}")
        if self.phase_sign not in (-1, 1):
            raise ValueError(f"phase_sign must be -1 (A·sin(x − φ)) or +1 (A·sin(x + φ)); "
                             f"got {self.phase_sign!r}")
        return self

    def describe(self):
        return {"formula": f"y = A * sin(x {'-' if self.phase_sign < 0 else '+'} phase)",
                "amplitude_range": list(self.amplitude_range), "phase_range": list(self.phase_range),
                "x_range": list(self.x_range), "phase_sign": self.phase_sign}


def sinusoid(x, amplitude, phase, phase_sign=-1):
    """A · sin(x + phase_sign · φ), broadcasting."""
    return amplitude * np.sin(x + phase_sign * phase)


def sample_sinusoid_tasks(rng, family, n_tasks):
    """Draw (amplitudes, phases), each shape (n_tasks,), on the host."""
    family.check()
    amplitudes = rng.uniform(*family.amplitude_range, size=n_tasks)
    phases = rng.uniform(*family.phase_range, size=n_tasks)
    return amplitudes, phases


def sinusoid_episode(rng, family, amplitudes, phases, n_support, n_query):
    """A meta-batch Episode for the given tasks, moved to the current backend.

    x (T, n, 1) drawn from U[x_range]; the support points are drawn before the query points.
    """
    t = len(amplitudes)
    amplitudes, phases = np.reshape(amplitudes, (t, 1, 1)), np.reshape(phases, (t, 1, 1))
    arrays = []
    for n in (n_support, n_query):
        x = rng.uniform(*family.x_range, size=(t, n, 1))
        arrays += [x, sinusoid(x, amplitudes, phases, family.phase_sign)]
    return checks.episode(Episode(*(backend.asarray(a) for a in arrays)))


def sample_sinusoid_episode(rng, family, n_tasks, n_support, n_query):
    """Draw T tasks and their support and query points in one go."""
    amplitudes, phases = sample_sinusoid_tasks(rng, family, n_tasks)
    return sinusoid_episode(rng, family, amplitudes, phases, n_support, n_query)
