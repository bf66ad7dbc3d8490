"""Checks of episodes: labels in 0..N−1 (the one host copy of a label array), every class in
every task (the N-way K-shot arithmetic), and whole Episodes."""

import autograd.numpy as anp
import numpy as np
from autograd.tracer import getval

from refmeta.checks.arrays import finite
from refmeta.checks.values import _some, integer
from refmeta.contract import Episode
from refmeta.device import backend


def labels(name, y, n_way, shape=None):
    """Integer class labels in 0..n_way−1 (and of ``shape``, if given); returns them on the host.

    This is the one host copy of a label array that an entry point makes.
    """
    raw = getval(y)
    if not hasattr(raw, "dtype") or not np.issubdtype(raw.dtype, np.integer):
        raise TypeError(f"{name}: class labels must be integers; got "
                        f"{getattr(raw, 'dtype', type(raw).__name__)}")
    if shape is not None and tuple(raw.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}; got {tuple(raw.shape)}")
    host = np.asarray(backend.to_host(raw))
    if host.size and (host.min() < 0 or host.max() >= n_way):
        raise ValueError(f"{name}: labels must be in 0..{n_way - 1} (n_way={n_way}); got values from "
                         f"{host.min()} to {host.max()}")
    return host


def class_counts(name, host_labels, n_way, k_shot=None):
    """Every class must appear in every task of ``host_labels`` (..., n): at least once, or
    exactly ``k_shot`` times when given (an N-way K-shot support set).  Costs O(the labels):
    a set of n labels that cannot hold N classes is refused before anything is counted."""
    n = host_labels.shape[-1]
    if k_shot is None and n < n_way:
        raise ValueError(f"{name}: every class 0..{n_way - 1} needs at least one example, "
                         f"{n_way} in all; a task has {n}")
    if k_shot is not None and n != n_way * k_shot:
        raise ValueError(f"{name}: a {n_way}-way {k_shot}-shot set has N·K = {n_way * k_shot} "
                         f"examples; a task has {n}")
    tasks = host_labels.reshape(-1, n)                                       # (T, n), N ≤ n
    offsets = n_way * np.arange(len(tasks))[:, None]
    counts = np.bincount((tasks + offsets).ravel(), minlength=len(tasks) * n_way)
    counts = counts.reshape(host_labels.shape[:-1] + (n_way,))               # (..., N)
    if k_shot is None and not (counts > 0).all():
        missing = sorted(set(np.nonzero(counts == 0)[-1].tolist()))
        raise ValueError(f"{name}: every class 0..{n_way - 1} needs at least one example; "
                         f"classes {_some(missing)} have none")
    if k_shot is not None and not (counts == k_shot).all():
        raise ValueError(f"{name}: a {n_way}-way {k_shot}-shot set has each class exactly "
                         f"{k_shot} time(s); got counts {counts.reshape(-1, n_way)[0].tolist()}"
                         f"{' (first task)' if counts.ndim > 1 else ''}")


# ----- episodes -----
def episode(ep, n_way=None, k_shot=None, max_task_axes=None):
    """Check an Episode; returns it as ``refmeta.contract.Episode``.

    Args:
        ep: an Episode, or any 4-sequence (support_x, support_y, query_x, query_y).
        n_way: None for regression (y float (..., n, d_out)); else labels (..., n) in 0..N−1,
            and every class present in every task's support set.
        k_shot: if given, the support set is N-way K-shot: N·K examples, each class K times.
        max_task_axes: 0: one task (n, ...); 1: that or a meta-batch (T, n, ...), T >= 1;
            None: any number of leading task axes.
    Every field is finite; support and query share the task axes and per-example shapes, and
    neither is empty.
    """
    if not isinstance(ep, tuple) or len(ep) != 4:
        raise TypeError(f"expected an Episode (support_x, support_y, query_x, query_y); "
                        f"got {type(ep).__name__}")
    ep = Episode(*ep)
    if n_way is not None:
        integer("n_way", n_way, minimum=2)
    if k_shot is not None:
        integer("k_shot", k_shot, minimum=1)
    layouts, support_labels = {}, None
    for which in ("support", "query"):
        x, y = getattr(ep, f"{which}_x"), getattr(ep, f"{which}_y")
        finite(f"{which}_x", x)
        if n_way is None:
            finite(f"{which}_y", y)
            if anp.ndim(y) < 2 or anp.ndim(x) != anp.ndim(y) or anp.shape(x)[:-1] != anp.shape(y)[:-1]:
                raise ValueError(f"{which}: regression needs x (..., n, d_in) and y (..., n, d_out) "
                                 f"with the same leading axes; got x {anp.shape(x)}, y {anp.shape(y)}")
            example_axis = anp.ndim(y) - 2
        else:
            if anp.ndim(getval(y)) < 1 or anp.shape(x)[:anp.ndim(y)] != anp.shape(y):
                raise ValueError(f"{which}: expected labels (..., n) matching the leading axes of "
                                 f"{which}_x; got {which}_x {anp.shape(x)}, {which}_y {anp.shape(y)}")
            host = labels(f"{which}_y", y, n_way)
            support_labels = host if which == "support" else support_labels
            example_axis = anp.ndim(y) - 1
        if anp.shape(x)[example_axis] == 0:
            raise ValueError(f"the {which} set is empty: {which}_x has shape {anp.shape(x)}")
        layouts[which] = (anp.shape(x)[:example_axis], anp.shape(x)[example_axis + 1:],
                          anp.shape(y)[example_axis + 1:])
    if layouts["support"] != layouts["query"]:
        raise ValueError(f"support and query disagree: support_x {anp.shape(ep.support_x)} / "
                         f"support_y {anp.shape(ep.support_y)} vs query_x {anp.shape(ep.query_x)} / "
                         f"query_y {anp.shape(ep.query_y)}; the task axes and per-example shapes "
                         f"must match, only n may differ")
    task_axes = layouts["support"][0]
    if max_task_axes is not None and len(task_axes) > max_task_axes:
        expected = "one task, support_x (n, ...)" + ("" if max_task_axes == 0 else ", or a "
                                                      "meta-batch with one task axis, (T, n, ...)")
        raise ValueError(f"expected {expected}; got support_x {anp.shape(ep.support_x)}")
    if 0 in task_axes:
        raise ValueError(f"the episode holds no task (T = 0): support_x {anp.shape(ep.support_x)} "
                         f"has a task axis of length 0")
    if n_way is not None:
        if k_shot is not None and anp.shape(ep.support_y)[-1] != n_way * k_shot:
            raise ValueError(f"a {n_way}-way {k_shot}-shot support set has N·K = {n_way * k_shot} "
                             f"examples; got {anp.shape(ep.support_y)[-1]}")
        class_counts("support_y", support_labels, n_way, k_shot)
    return ep
