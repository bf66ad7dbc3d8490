"""Well-posed cases: an implementation that differs from refmeta only by rounding must pass.

Two things are measured while a case is built (docs/reference-cases.md, "Well posed"):

- **the spread**: every float input (not the integer-valued labels and indices) is moved by a
  relative 1e-13, x ↦ x · (1 + 1e-13 · s), s = ±1 per element drawn by
  ``numpy.random.default_rng(seed)`` in the order of the inputs, for each of ``SEEDS``, and
  the case is recomputed.  An output's spread is its largest change over the seeds, as an
  absolute value and as a fraction of the allowed error atol + rtol·|reference| (the worst
  element).  A tolerance must be at least ``SPREAD_FACTOR`` times its spread
  (tests/test_well_posed.py).  1e-13 is about what reordering a sum does to a float64 result
  of a few hundred terms.
- **the kinks**: every kink the computation passes (``refmeta.nn.kinks``) has a margin, its
  input's distance from the kink over the scale of its array; the smallest per kind is
  recorded, and a case whose smallest margin is below ``MIN_KINK_MARGIN`` is refused.
"""

import math

import numpy as np

RELATIVE_MOVE = 1e-13
SEEDS = (0, 1, 2)
SPREAD_FACTOR = 100          # a tolerance is at least this many times its spread
MIN_KINK_MARGIN = 1e-8       # ≥ 1000 × the largest move the 1e-13 perturbation causes (≤ 1e-11)
MARGIN = ("the distance of a kink's input from the kink over the largest |value| of that call's "
          "array: |x| / max |x| at a ReLU (inputs exactly 0 left out); (largest − second largest) / "
          "max |x| over a max-pool's windows (windows whose largest input is 0 left out); ||g| − t| "
          "/ max(max |g|, t) at MetaNet's switch t = e^−p; |v − t| / max(max v, t) at a floor t "
          "(docs/reference-cases.md, \"Kinks\")")


def is_float_input(value):
    """True for the inputs that are moved: float arrays, not integer labels or indices."""
    return not (np.issubdtype(np.asarray(value).dtype, np.integer) or np.asarray(value).dtype == bool)


def perturbed(inputs, seed):
    """{name: host array}: every float input of ``inputs`` {name: Array} × (1 ± RELATIVE_MOVE)."""
    rng = np.random.default_rng(seed)
    moved = {}
    for name, array in inputs.items():
        value = np.asarray(array.value)
        if is_float_input(value):
            value = value * (1.0 + RELATIVE_MOVE * rng.choice([-1.0, 1.0], value.shape))
        moved[name] = value
    return moved


def changes(reference, outputs, tolerances):
    """{name: (max |Δ|, max |Δ| / (atol + rtol·|reference|))} of ``outputs`` against the reference
    outputs (both {name: Array} on the host); ``tolerances`` {name: (rtol, atol)}."""
    found = {}
    for name, array in reference.items():
        rtol, atol = tolerances[name]
        expected = np.asarray(array.value, dtype=np.float64)
        change = np.abs(np.asarray(outputs[name].value, dtype=np.float64) - expected)
        allowed = atol + rtol * np.abs(expected)
        largest = float(change.max()) if change.size else 0.0
        fraction = float(np.max(np.where(change > 0, change / np.where(allowed > 0, allowed, np.inf),
                                         0.0))) if change.size else 0.0
        found[name] = (largest, fraction)
    return found


def spreads(reference, recomputed, tolerances):
    """{name: {"max_abs": …, "fraction_of_allowed": …}}: the largest change of every output over
    the ``recomputed`` outputs (one {name: Array} per seed), rounded up to 2 significant digits."""
    worst = {name: (0.0, 0.0) for name in reference}
    for outputs in recomputed:
        for name, (largest, fraction) in changes(reference, outputs, tolerances).items():
            worst[name] = (max(worst[name][0], largest), max(worst[name][1], fraction))
    return {name: {"max_abs": round_up(largest), "fraction_of_allowed": round_up(fraction)}
            for name, (largest, fraction) in worst.items()}


def kink_summary(found):
    """The JSON's record of the kinks passed, from ``kinks.recording``'s (kind, margin, left out)
    list: per kind the calls, the smallest margin and the inputs left out (exact zeros at a
    ReLU, dead max-pool windows), and the smallest margin of all (None: no kink passed)."""
    by_kind = {}
    for kind, margin, left_out in found:
        calls, smallest, total = by_kind.get(kind, (0, math.inf, 0))
        by_kind[kind] = (calls + 1, min(smallest, margin), total + left_out)
    smallest = min((m for _, m, _ in by_kind.values()), default=math.inf)
    record = lambda m: None if math.isinf(m) else round_down(m)
    return {"smallest_margin": record(smallest),
            "by_kind": {kind: {"calls": calls, "smallest_margin": record(m), "left_out": total}
                        for kind, (calls, m, total) in sorted(by_kind.items())},
            "required_margin": MIN_KINK_MARGIN, "margin": MARGIN}


def round_up(x, digits=2):
    """x > 0 rounded up to ``digits`` significant digits (0 stays 0)."""
    if x <= 0:
        return 0.0
    unit = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return float(f"{math.ceil(x / unit * (1 - 1e-12)) * unit:.{digits}g}")


def round_down(x, digits=2):
    """x ≥ 0 rounded down to ``digits`` significant digits."""
    if x <= 0:
        return 0.0
    unit = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return float(f"{math.floor(x / unit * (1 + 1e-12)) * unit:.{digits}g}")
