"""The porting mistakes one output can show, each found by undoing it and checking the result.

    factor     theirs ≈ c · reference: c = ⟨theirs, reference⟩ / ⟨reference, reference⟩ (least
               squares), and theirs / c passes.  c is named when theirs / q passes for one of
               the case's sizes q from its hyperparameters (T tasks, N classes, K shots, the
               support, query and mini-batch sizes), their reciprocals, or −1.  An unnamed c
               needs two failing elements (any c fits one number) and |c − 1| > 1e-5 (float32
               rounding is not a factor).  For a (T, inner_steps) loss, column 0 alone too.
    permuted   numpy.transpose(theirs, axes) passes for some axes ≠ identity: every
               permutation for ndim ≤ 4, those keeping the task axis first for ndim 5; the
               layer type in the case's model names the layouts (dense (in, out) against
               torch's (out, in); conv OIHW against HWIO; causal conv (k, in, out)).
    reshaped   the same number of elements in another shape, and the reshape passes.

"Passes" is the output's own tolerance (``refmeta.cases.comparison``).  A cause, undone, must
also leave at most 1% (``EXPLAINED``) of the largest error: noise just outside the tolerance
is never explained by a factor near 1 or a symmetry.

``likely_cause`` tries a permutation first, then a reshape (for a misshapen output) or a factor
(for one out of tolerance); ``refmeta.cases.diagnose`` calls it for each failing output that
is not rounding noise.
"""

import itertools
import math

import numpy as np

from refmeta.cases.comparison import Diagnosis, passes

EXPLAINED = 0.01  # a cause, undone, must leave at most this fraction of the largest error


def likely_cause(result, reference, theirs, facts):
    """The Diagnosis of one failing or misshapen output, or None.

    Args:
        result: its OutputResult (status "fail" or "wrong shape"; name, shape, rtol, atol).
        reference, theirs: the case's array and theirs, float64.
        facts: the case's ``refmeta.cases.case_facts.CaseFacts``.
    """
    found = _permuted(reference, theirs, result.rtol, result.atol,
                      facts.axis_names(result.name, result.shape),
                      facts.has_task_axis(result.name, result.shape))
    if found:
        return found
    if result.status == "wrong shape":
        return _reshaped(reference, theirs, result.rtol, result.atol)
    return (_factor(reference, theirs, result.rtol, result.atol, facts.quantities)
            or _first_step_factor(result, reference, theirs, facts))


def _explains(reference, theirs, undone, residual, rtol, atol):
    """True when ``undone`` (theirs with a cause undone) passes and the cause reproduces theirs:
    ``residual`` (what the cause leaves unexplained, in theirs' units) is at most EXPLAINED of
    theirs' largest error.  So noise just outside the tolerance is never a factor near 1, and
    noise below atol is never a large factor."""
    if not passes(reference, undone, rtol, atol):
        return False
    if theirs.shape != reference.shape:
        return True
    with np.errstate(all="ignore"):
        return bool(np.max(np.abs(residual)) <= EXPLAINED * np.max(np.abs(theirs - reference)))


def _factor(reference, theirs, rtol, atol, quantities):
    """Diagnosis "factor" when theirs ≈ c · reference for one c (see the module docstring)."""
    if not (np.isfinite(reference).all() and np.isfinite(theirs).all()):
        return None
    if not np.any(reference):
        return None
    failing = int(np.count_nonzero(np.abs(theirs - reference) > atol + rtol * np.abs(reference)))
    def explains(c):
        return _explains(reference, theirs, theirs / c, theirs - c * reference, rtol, atol)
    named = [c for c in _factor_candidates(quantities) if explains(c[0])]
    c = _least_squares_factor(reference, theirs)
    fits = (math.isfinite(c) and c != 0.0 and abs(c - 1.0) > 1e-5
            and explains(c))
    if not named and not (fits and failing >= 2):
        return None
    c = c if fits else named[0][0]
    return Diagnosis("factor", f"theirs = {_format_factor(c)} × reference: "
                     f"{_factor_meaning(named, quantities)}",
                     {"factor": c, "matches": [symbol for _, symbol, _, _ in named]})


def _factor_candidates(quantities):
    """[(c, symbol, what it is, what it usually means)]: −1, and each of the case's sizes
    (``CaseFacts.quantities``) and its reciprocal."""
    candidates = [(-1.0, "−1", "the sign", "a gradient ascended, or a loss of the opposite sign")]
    for value, symbol, counts, why in quantities:
        candidates += [(float(value), symbol, f"{counts} ({value})", why),
                       (1.0 / value, f"1/{symbol}", f"one over {counts} ({value})", why)]
    return candidates


def _least_squares_factor(reference, theirs):
    """c = ⟨theirs, reference⟩ / ⟨reference, reference⟩, both scaled by max |reference|."""
    scale = float(np.max(np.abs(reference)))
    r, t = reference.ravel() / scale, theirs.ravel() / scale
    with np.errstate(all="ignore"):
        return float(r @ t) / float(r @ r)


def _factor_meaning(named, quantities):
    """What the factor is: the named candidates it equals, or none of the case's sizes."""
    if named:
        return "; or ".join(f"{symbol} = {counts}: {why}" for _, symbol, counts, why in named)
    sizes = ", ".join(f"{symbol} = {value}" for value, symbol, _, _ in quantities)
    return "none of the case's sizes or their reciprocals" + (f" ({sizes})" if sizes else "")


def _first_step_factor(result, reference, theirs, facts):
    """Diagnosis "factor" on column 0 of a (T, inner_steps) loss: the losses at the
    meta-parameters, before an inner-loss mistake has changed the steps."""
    if (reference.ndim != 2 or reference.shape[1] < 2
            or not facts.meanings.get(result.name, "").startswith("(T, inner_steps)")):
        return None
    found = _factor(reference[:, 0], theirs[:, 0], result.rtol, result.atol, facts.quantities)
    if found is None:
        return None
    return Diagnosis("factor", f"in column 0, the losses before the first inner step, "
                     f"{found.message}; the later steps differ because the steps do",
                     dict(found.details, column=0))


def _format_factor(c):
    """c to four significant digits, or (1 ± δ) within 1e-3 of 1; minus signs as −."""
    if c != 1.0 and abs(c - 1.0) < 1e-3:
        return f"(1 {'+' if c > 1 else '−'} {abs(c - 1.0):.2g})"
    return f"{c:#.4g}".replace("-", "−")


def _permuted(reference, theirs, rtol, atol, axis_names, task_axis):
    """Diagnosis "permuted" when numpy.transpose(theirs, axes) passes for some axes."""
    ndim = reference.ndim
    if theirs.ndim != ndim or ndim < 2 or sorted(theirs.shape) != sorted(reference.shape):
        return None
    for axes in _axis_orders(ndim, task_axis):
        if axes == tuple(range(ndim)) or tuple(theirs.shape[a] for a in axes) != reference.shape:
            continue
        undone = np.transpose(theirs, axes)
        if _explains(reference, theirs, undone, undone - reference, rtol, atol):
            return _permutation_found(axes, axis_names)
    return None


def _axis_orders(ndim, task_axis):
    """The permutations tried: every one for ndim ≤ 4, those keeping the task axis first for a
    5-D output with a task axis, none otherwise."""
    if ndim <= 4:
        return itertools.permutations(range(ndim))
    if ndim == 5 and task_axis:
        return ((0,) + axes for axes in itertools.permutations(range(1, 5)))
    return ()


def _permutation_found(axes, axis_names):
    """Diagnosis "permuted" for ``axes``, with the layouts when the case names its axes."""
    ndim = len(axes)
    what = "if transposed" if ndim == 2 else "with its axes permuted"
    message = (f"matches {what} (axes {', '.join(map(str, axes))}): "
               f"numpy.transpose(theirs, {axes}) is within tolerance")
    details = {"axes": list(axes)}
    if axis_names is not None:
        theirs_names = [None] * ndim
        for j, a in enumerate(axes):
            theirs_names[a] = axis_names[j]
        message += "; " + _layout_hint(axis_names, theirs_names)
        details.update(case_axes=list(axis_names), theirs_axes=theirs_names)
    return Diagnosis("permuted", message, details)


def _layout_hint(case_names, theirs_names):
    """What a permutation of a parameter's axes means, in the layouts of common libraries."""
    if "task" in theirs_names and theirs_names[0] != "task":
        return (f"theirs has the task axis at position {theirs_names.index('task')}; the case "
                "puts it first")
    case_axes = [n for n in case_names if n != "task"]
    theirs_axes = [n for n in theirs_names if n != "task"]
    if case_axes == ["in", "out"] and theirs_axes == ["out", "in"]:
        return ("torch nn.Linear stores (out, in); refmeta's dense weights are (in, out), "
                "y = x @ w + b: save linear.weight.T")
    if case_axes == ["O", "I", "H", "W"]:
        layout = "".join(theirs_axes)
        known = {"HWIO": " (haiku, flax and TensorFlow)", "OHWI": " (channels-last)"}
        return (f"theirs is {layout}{known.get(layout, '')}; refmeta's conv kernels are OIHW, as "
                "PyTorch's Conv2d")
    if case_axes == ["k", "in", "out"] and theirs_axes == ["out", "in", "k"]:
        return ("torch Conv1d stores (out, in, k); refmeta's causal_conv1d weights are "
                "(k, in, out): save conv.weight.permute(2, 1, 0)")
    return f"theirs is ({', '.join(theirs_axes)}), the case's is ({', '.join(case_axes)})"


def _reshaped(reference, theirs, rtol, atol):
    """Diagnosis "reshaped": as many numbers as the reference, in another shape."""
    if theirs.size != reference.size or not passes(reference, theirs.reshape(reference.shape),
                                                    rtol, atol):
        return None
    unit_axes = [n for n in theirs.shape if n != 1] == [n for n in reference.shape if n != 1]
    return Diagnosis("reshaped", f"the same numbers in another shape: numpy.reshape(theirs, "
                     f"{reference.shape}) is within tolerance"
                     + ("; an axis of length 1 dropped or added (keepdims, squeeze)" if unit_axes
                        else ""), {"shape": list(reference.shape)})
