"""Kinks: where a layer's derivative jumps, and how far its inputs stay from them.

A reference case must not hinge on a kink whose input is zero up to rounding: an
implementation that differs from refmeta only by rounding would fall on the other side and
get other gradients.  The layers with a kink report their inputs here, and a case builder
(``refmeta.cases``) records, for every call, the *margin*: the smallest distance of an input
from the kink, divided by the scale of the values, the largest |value| of that call's array
(rounding errors grow with it, not with the small entry).

    relu      the kink at x = 0                  distance |x|; exact zeros left out (below)
    max_pool  a window's largest input vs its    distance largest − second largest; windows
              runner-up (a tie)                  whose largest input is 0 left out (below)
    switch    |g| at the threshold t             distance ||g| − t|, scale max(max |g|, t)
              (MetaNet's log(max(|g|, e^−p)) and clip(e^p g, ±1) both switch there)
    floor     v at its floor t (‖z‖² ≥ eps²)     distance |v − t|, scale max(max v, t)

What is left out, and counted: an input that is *exactly* 0 is not zero up to rounding, it
is 0 in every implementation, where relu′(0) = 0 (PyTorch's, JAX's) decides.  In the cases
such zeros come from a convolution without bias over a window of dead units, where nothing
reads the derivative; likewise a max-pool window whose largest input is 0 holds dead units'
outputs only (a pool follows a ReLU in every network here).  tests/test_well_posed.py
checks both claims: every case gives the same outputs with relu′(0) = 1 and with ties sent
to the last maximum.  Smooth functions written with max or min (σ, softmax's max shift) are
not kinks; neither is a kink that is only evaluated, never differentiated through, since
the value is continuous there (Adam's |g|).

Watching costs one test of an empty list unless a ``recording()`` block is open, and only
the case builders open one.  The layers' math does not change.
"""

import contextlib

import numpy as np
from autograd.tracer import getval

_open = []   # the margin lists of the recording() blocks now open


@contextlib.contextmanager
def recording():
    """``with recording() as found:`` collects (kind, margin, left out) for every kink passed
    inside: the call's margin and how many inputs (windows) it left out."""
    found = []
    _open.append(found)
    try:
        yield found
    finally:
        _open.remove(found)


def relu(x):
    """ReLU's input x (any shape) passes the kink at 0."""
    if _open:
        x = np.abs(getval(x))
        exact = x == 0
        _record("relu", np.where(exact, np.inf, x).min(), x.max(), int(exact.sum()))


def max_pool(x, rounding="floor"):
    """Max-pool's input x (..., H, W), 2×2 windows with stride 2: the tie between the largest
    and the second largest of a window.  "ceil" windows at an odd edge hold 2 or 1 inputs."""
    if not _open:
        return
    x = getval(x)
    scale = np.abs(x).max()
    if rounding == "ceil":                                  # odd edges padded with −inf: no tie
        x = _pad_odd_edges(x)
    height, width = 2 * (x.shape[-2] // 2), 2 * (x.shape[-1] // 2)
    windows = np.stack([x[..., i:height:2, j:width:2] for i in range(2) for j in range(2)])
    ordered = np.sort(windows, axis=0)                      # (4, ..., H', W'), ascending
    dead = ordered[3] == 0
    _record("max_pool", np.where(dead, np.inf, ordered[3] - ordered[2]).min(), scale,
            int(dead.sum()))


def switch(g, threshold):
    """|g| passes a switch at ``threshold`` (> 0)."""
    if _open:
        g = np.abs(getval(g))
        _record("switch", np.abs(g - threshold).min(), max(float(g.max()), threshold))


def floor(v, threshold):
    """v (≥ 0) passes its floor ``threshold`` (> 0): max(v, threshold)."""
    if _open:
        v = getval(v)
        _record("floor", np.abs(v - threshold).min(), max(float(v.max()), threshold))


def _record(kind, distance, scale, left_out=0):
    """Append (kind, distance / scale, left_out) to every open recording; distance and scale
    are 0-d arrays or numbers, read here explicitly.  Everything left out: margin inf."""
    distance, scale = float(distance), float(scale)
    margin = distance / scale if scale > 0 else float("inf")
    for found in _open:
        found.append((kind, margin, left_out))


def _pad_odd_edges(x):
    if x.shape[-2] % 2:
        x = np.concatenate([x, np.full_like(x[..., -1:, :], -np.inf)], axis=-2)
    if x.shape[-1] % 2:
        x = np.concatenate([x, np.full_like(x[..., :, -1:], -np.inf)], axis=-1)
    return x
