"""Tasks and the one episode type every algorithm takes.

Episode
    ``Episode(support_x, support_y, query_x, query_y)``: one task, or a meta-batch
    of T tasks when every field has a leading task axis.

        regression      x (..., n, d_in) float    y (..., n, d_out) float
        classification  x (..., n, ...)  float    y (..., n) integer labels in 0..n_way-1

    ``Episode.validated`` checks all of this and raises ``ValueError``/``TypeError``
    naming what was expected and what was given.

Sinusoid regression (Finn et al. 2017, Section 5.1)
    y = A · sin(x + s·φ),   A ~ U[amplitude_range], φ ~ U[phase_range], x ~ U[x_range]

    ``phase_sign`` s is explicit: the MAML authors' code uses A·sin(x − φ)
    (s = −1, the default here, with φ ∈ [0, π]); Reptile's sine uses x + b with
    b ∈ [0, 2π] (s = +1).
"""

import math
from typing import NamedTuple

import numpy as np

from refmeta.device import backend


class Episode(NamedTuple):
    support_x: object
    support_y: object
    query_x: object
    query_y: object

    @classmethod
    def validated(cls, support_x, support_y, query_x, query_y, n_way=None):
        """Build an Episode after checking shapes, dtypes, finiteness and labels.

        Args:
            n_way: None for regression; for classification the number of classes,
                so every label must lie in 0..n_way-1.
        """
        episode = cls(support_x, support_y, query_x, query_y)
        for name in cls._fields:
            if not hasattr(getattr(episode, name), "shape"):
                raise TypeError(f"episode {name} must be an array; got {type(getattr(episode, name)).__name__}")
        support = _check_pair(episode.support_x, episode.support_y, "support", n_way)
        query = _check_pair(episode.query_x, episode.query_y, "query", n_way)
        if support != query:
            raise ValueError(
                f"support and query disagree: support_x {episode.support_x.shape} / support_y "
                f"{episode.support_y.shape} vs query_x {episode.query_x.shape} / query_y "
                f"{episode.query_y.shape}; task axes and per-example shapes must match, only n may differ")
        return episode


def _check_pair(x, y, which, n_way):
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{which}_x must be floating point; got dtype {x.dtype}")
    if not bool((abs(x) < np.inf).all()):
        raise ValueError(f"{which}_x contains NaN or inf")
    if n_way is None:
        if not np.issubdtype(y.dtype, np.floating):
            raise TypeError(f"{which}_y (regression targets) must be floating point; got {y.dtype}")
        if not bool((abs(y) < np.inf).all()):
            raise ValueError(f"{which}_y contains NaN or inf")
        if y.ndim < 2 or x.ndim != y.ndim or x.shape[:-1] != y.shape[:-1]:
            raise ValueError(f"{which}: expected x (..., n, d_in) and y (..., n, d_out) with the same "
                             f"leading axes; got x {x.shape} and y {y.shape}")
        return _layout(x, y, example_axis=y.ndim - 2)
    if not isinstance(n_way, int) or n_way < 2:
        raise ValueError(f"n_way must be an integer >= 2; got {n_way!r}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{which}_y (class labels) must be integers; got dtype {y.dtype}")
    if y.ndim < 1 or x.shape[:y.ndim] != y.shape:
        raise ValueError(f"{which}: expected labels (..., n) matching the leading axes of x; "
                         f"got x {x.shape} and labels {y.shape}")
    low, high = (int(y.min()), int(y.max())) if y.size else (0, 0)
    if low < 0 or high >= n_way:
        raise ValueError(f"{which} labels must be in 0..{n_way - 1} (n_way={n_way}); "
                         f"got values from {low} to {high}")
    return _layout(x, y, example_axis=y.ndim - 1)


def _layout(x, y, example_axis):
    """(task axes, per-example x shape, per-example y shape): what support and query must share."""
    return x.shape[:example_axis], x.shape[example_axis + 1:], y.shape[example_axis + 1:]


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
    return Episode.validated(*(backend.asarray(a) for a in arrays))


def sample_sinusoid_episode(rng, family, n_tasks, n_support, n_query):
    """Draw T tasks and their support and query points in one go."""
    amplitudes, phases = sample_sinusoid_tasks(rng, family, n_tasks)
    return sinusoid_episode(rng, family, amplitudes, phases, n_support, n_query)
