"""Checks of what a user's function returned and of a door's results: a model's params, losses
and outputs by kind and shape (no device read), params templates, finiteness read once and the
first NaN or inf named; sizes refused before they are allocated."""

import functools
import itertools
import os

import autograd.numpy as anp
import numpy as np
from autograd.tracer import getval

from refmeta.checks.arrays import NotFinite, float_array, tree_shapes
from refmeta.device import backend


# ----- what a user's function returned -----
def model_params(what, tree):
    """What ``what`` (a model's init) returned must be params: a dict of floating-point arrays
    (empty for an embedding without params, the identity).  Returns it."""
    if not isinstance(tree, dict):
        raise TypeError(f"{what} must return the params, a dict of floating-point arrays; "
                        f"got {type(tree).__name__}")
    for name in sorted(tree):
        float_array(f"{what}[{name!r}]", tree[name])
    return tree


def model_losses(what, losses, n_tasks):
    """A model's loss as ``contract.Model`` promises it: real floating-point, one loss per task,
    shape (n_tasks,).  Kind and shape only, no device read: it runs at every inner step."""
    raw = getval(losses)
    dtype = getattr(raw, "dtype", None)
    if dtype is None or not np.issubdtype(dtype, np.floating):
        raise TypeError(f"{what} must return real floating-point losses, one per task; got "
                        f"{'dtype ' + str(dtype) if dtype is not None else type(raw).__name__}")
    if tuple(np.shape(raw)) != (n_tasks,):
        raise ValueError(f"{what} must return one loss per task, shape ({n_tasks},); "
                         f"got {tuple(np.shape(raw))}")
    return losses


def model_outputs(what, outputs, lead):
    """A model's outputs for inputs whose leading axes (…, n) are ``lead``: a real floating-point
    array (*lead, d), one vector per example (an embedding).  Kind and shape only."""
    raw = getval(outputs)
    dtype = getattr(raw, "dtype", None)
    if dtype is None or not np.issubdtype(dtype, np.floating):
        raise TypeError(f"{what} must return a real floating-point array; got "
                        f"{'dtype ' + str(dtype) if dtype is not None else type(raw).__name__}")
    got = tuple(np.shape(raw))
    if len(got) != len(lead) + 1 or got[:-1] != tuple(lead) or got[-1] == 0:
        raise ValueError(f"{what} must return one vector per example, shape "
                         f"({', '.join(map(str, lead))}, d) with d >= 1; got {got}")
    return outputs


def embedding(what, apply, lead_ndim):
    """``apply(params, x)`` with its outputs held to ``model_outputs``: x (..., n, ...) ->
    (..., n, d), the first ``lead_ndim`` axes of x (up to n) leading the output."""
    return lambda params, x: model_outputs(what, apply(params, x), anp.shape(x)[:lead_ndim])


def scalar_output(what, value):
    """What ``what`` returned must be a real scalar: a float, or a 0-d floating-point array."""
    raw = getval(value)
    floating = isinstance(raw, float) or (hasattr(raw, "dtype") and
                                          np.issubdtype(raw.dtype, np.floating))
    if not floating:
        raise TypeError(f"{what} must return a real scalar (a float); got "
                        f"{'dtype ' + str(raw.dtype) if hasattr(raw, 'dtype') else type(raw).__name__}")
    if np.ndim(raw) != 0:
        raise ValueError(f"{what} must return a real scalar (a float); got shape {np.shape(raw)}")
    return value


@functools.lru_cache(maxsize=128)
def model_shapes(model):
    """The template of a ``contract.Model``'s params, computed once per model (MAML and Reptile:
    their configs change step sizes from step to step, their params follow the model alone)."""
    params_ = model.init(np.random.default_rng(0))
    return tree_shapes(model_params(f"the model {model.name!r}: init(rng)", params_))


@functools.lru_cache(maxsize=128)
def init_shapes(init, config):
    """The template of ``init(rng, config)``'s params, computed once per (init, config)."""
    return tree_shapes(init(np.random.default_rng(0), config))


# ----- a door's results -----
def all_finite(*values):
    """Whether every entry of ``values`` (arrays, numbers, dicts of them) is finite: one
    reduction per array, combined on the device, then one explicit read (``bool``)."""
    leaves = [leaf for value in values for leaf in
              (getval(value).values() if isinstance(getval(value), dict) else (value,))]
    return bool(functools.reduce(lambda a, b: a & b,
                                 (np.all(np.isfinite(getval(leaf))) for leaf in leaves)))


def first_non_finite(where, quantities):
    """Raise NotFinite naming the first ``(what, value)`` of ``quantities`` that holds NaN or
    inf.  The failure path of a door whose results ``all_finite`` refused: ``quantities`` (a
    generator) recomputes them in order, and each is read as it comes."""
    for what, value in quantities:
        if not all_finite(value):
            raise NotFinite(f"{where}: {what} {_first_non_finite_text(value)}")
    raise NotFinite(f"{where}: a result holds NaN or inf")


def finite_results(where, results, recompute=None):
    """A door's results [(what, value)]: one read (``all_finite``) that they are finite; if they
    are not, NotFinite naming the first NaN or inf among ``recompute()`` (the intermediate
    (what, value), recomputed in the order they are made), then ``results``."""
    if not all_finite(*(value for _, value in results)):
        first_non_finite(where, itertools.chain(recompute() if recompute else (), results))


def _first_non_finite_text(value):
    """"is nan", or "holds inf at [0, 2]": the failure path's explicit host read of one array
    (of a dict's first non-finite leaf, named)."""
    value = getval(value)
    if isinstance(value, dict):
        name = next(name for name in sorted(value) if not all_finite(value[name]))
        return f"[{name!r}] {_first_non_finite_text(value[name])}"
    host = np.asarray(backend.to_host(value))
    if host.ndim == 0:
        return f"is {host.item()}"
    index = tuple(int(i) for i in np.argwhere(~np.isfinite(host))[0])
    return f"holds {host[index]} at [{', '.join(map(str, index))}]"


# ----- memory -----
def memory_limit():
    """The bytes this process may use at most: the smaller of the machine's memory and the
    address-space limit (``ulimit -v``, RLIMIT_AS); None where neither is known."""
    limits = []
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):          # no sysconf (Windows)
        pass
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            limits.append(soft)
    except (ImportError, ValueError, OSError):
        pass
    return min(limits) if limits else None


def fits(option, what, nbytes, at_least=False):
    """Refuse, before allocating, ``nbytes`` for ``what`` (a lower bound with ``at_least``) that
    exceed ``memory_limit()``; the message names the option that asked and the size it needs."""
    limit = memory_limit()
    if limit is not None and nbytes > limit:
        raise ValueError(f"{option}: {what} would need {'at least ' if at_least else ''}"
                         f"{_bytes(nbytes)}; this process may use at most {_bytes(limit)}")
    return nbytes


def _bytes(n):
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}" if unit != "bytes" else f"{int(n)} bytes"
        n /= 1024
