"""Checks of arrays and params trees: floating-point and finite arrays, index arrays, a params
tree against its template, running batch-norm statistics, Adam's state and the training State.

Device arrays are read only through explicit scalar reads (``bool(...)``, ``int(...)``); under
autograd, values are read with ``getval``."""

import functools

import autograd.numpy as anp
import numpy as np
from autograd.tracer import getval

from refmeta.checks.values import instance, integer
from refmeta.contract import State


def float_array(name, x):
    """``x`` must be a floating-point array (NumPy, CuPy or the strict stand-in)."""
    raw = getval(x)
    if not hasattr(raw, "dtype") or not hasattr(raw, "shape"):
        raise TypeError(f"{name} must be a floating-point array; got {type(raw).__name__}")
    if not np.issubdtype(raw.dtype, np.floating):
        raise TypeError(f"{name} must be a floating-point array; got dtype {raw.dtype}")
    return x


class NotFinite(ValueError):
    """A value that holds NaN or inf (``finite``, ``finite_tree``); a demo names it as divergence."""


def finite(name, x):
    """``x`` must be a floating-point array with no NaN or inf (one reduction on its device);
    NotFinite (a ValueError) otherwise."""
    float_array(name, x)
    if not bool(np.all(np.isfinite(getval(x)))):
        raise NotFinite(f"{name} contains NaN or inf")
    return x


def finite_tree(name, tree):
    """``tree`` must be a non-empty dict of finite floating-point arrays; one device read for
    the whole tree, and on failure the message names the leaf (``name['leaf']``)."""
    given, tree = tree, getval(tree)                # under autograd a DictBox: read its dict
    if not isinstance(tree, dict):
        raise TypeError(f"{name} must be a dict of arrays; got {type(tree).__name__}")
    if not tree:
        raise ValueError(f"{name} is an empty tree")
    for leaf in sorted(tree):
        float_array(f"{name}[{leaf!r}]", tree[leaf])
    every = functools.reduce(lambda a, b: a & b, (np.all(np.isfinite(getval(tree[leaf])))
                                                  for leaf in sorted(tree)))
    if not bool(every):
        for leaf in sorted(tree):
            finite(f"{name}[{leaf!r}]", tree[leaf])
    return given


def indices(name, idx, size, shape):
    """An integer array of ``shape`` (an entry None takes any length) with every value in
    0..size−1: positions along an axis of length ``size`` (Reptile's mini-batch indices).
    Reads its minimum and maximum as two explicit scalar reads; returns ``idx`` unchanged."""
    raw = getval(idx)
    if not hasattr(raw, "dtype") or not np.issubdtype(raw.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array; got "
                        f"{getattr(raw, 'dtype', type(raw).__name__)}")
    expected = tuple("any" if n is None else n for n in shape)
    if len(raw.shape) != len(shape) or any(n is not None and n != got
                                           for n, got in zip(shape, raw.shape)):
        raise ValueError(f"{name} must have shape ({', '.join(map(str, expected))}); "
                         f"got {tuple(raw.shape)}")
    if raw.size and (int(raw.min()) < 0 or int(raw.max()) >= size):
        raise ValueError(f"{name} must lie in 0..{size - 1}; got values from {int(raw.min())} "
                         f"to {int(raw.max())}")
    return idx


def nonnegative_array(name, x):
    """``x`` must be a finite floating-point array with every entry >= 0 (a variance)."""
    finite(name, x)
    if not bool(np.all(getval(x) >= 0)):
        raise ValueError(f"{name} must be >= 0 everywhere (a variance); got a negative entry")
    return x


def example_shape(name, x, example_axis, shape):
    """Each example of ``x`` (the axes after ``example_axis``) must have ``shape``, e.g. the
    (C, H, W) images a network was built for."""
    got = tuple(anp.shape(x)[example_axis + 1:])
    if got != tuple(shape):
        raise ValueError(f"{name}: each example must have shape {tuple(shape)}; got {got} "
                         f"({name} has shape {tuple(anp.shape(x))})")
    return x


# ----- params trees -----
def params(tree, expected, what="params"):
    """``tree`` must be a dict with exactly the keys of ``expected`` ({name: shape}), each a
    finite floating-point array of that shape.  Names the missing, extra or wrong entry."""
    given, tree = tree, getval(tree)                # under autograd a DictBox: read its dict
    if not isinstance(tree, dict):
        raise TypeError(f"{what} must be a dict of arrays; got {type(tree).__name__}")
    if not tree:
        raise ValueError(f"{what} is empty; build it with the algorithm's init")
    missing, extra = sorted(set(expected) - set(tree)), sorted(set(tree) - set(expected))
    if missing or extra:
        raise ValueError(f"{what} do not match the model: missing {missing}, unexpected {extra}; "
                         f"expected the keys {sorted(expected)}")
    for name in sorted(expected):
        finite(f"{what}[{name!r}]", tree[name])
        if tuple(anp.shape(tree[name])) != tuple(expected[name]):
            raise ValueError(f"{what}[{name!r}] must have shape {tuple(expected[name])}; "
                             f"got {tuple(anp.shape(tree[name]))}")
    return given


def tree_shapes(tree):
    """{name: shape} of a params tree: the template ``params`` checks against."""
    return {name: tuple(np.shape(value)) for name, value in tree.items()}


def running_stats(tree, expected, what="bn_state"):
    """Running batch-norm statistics against their template {"….mean", "….var": shape}: the
    keys and shapes of ``params``, finite, and every variance >= 0."""
    params(tree, expected, what)
    for name in sorted(expected):
        if name.endswith("var"):
            nonnegative_array(f"{what}[{name!r}]", getval(tree)[name])
    return tree


def adam_state(name, state, expected):
    """Adam's state (step, m, v) for params of template ``expected``: a step count >= 0 and
    moment trees with the params' keys and shapes, finite, with v >= 0."""
    if not all(hasattr(state, field) for field in ("step", "m", "v")):
        raise TypeError(f"{name} must be Adam's state (step, m, v); got {type(state).__name__}")
    integer(f"{name}.step", state.step, minimum=0)
    params(state.m, expected, f"{name}.m")
    params(state.v, expected, f"{name}.v")
    for leaf in sorted(expected):
        nonnegative_array(f"{name}.v[{leaf!r}]", state.v[leaf])
    return state


def training_state(given, params_, bn, step=False, adam=True, bn_mode="transductive",
                   what="state"):
    """A ``contract.State`` for ``params_`` and the running statistics ``bn`` (host arrays, named
    as state.bn names them; {} where none are kept); returns it.  ``step``: the State a step
    updates, whose optimizer is Adam's state for params_ (``adam``) or None.  Else the State of
    ``loss`` or ``predict``: None unless batch norm in ``bn_mode`` "running" reads state.bn, and
    its optimizer not read."""
    if given is None and not step:
        if bn_mode == "running":
            raise ValueError(f"{what} is required: batch norm in mode 'running' normalises by "
                             f"{what}.bn, the running statistics step tracks; got None")
        return None
    instance(what, given, State)
    if step and adam:
        adam_state(f"{what}.optimizer", given.optimizer, tree_shapes(params_))
    elif step and given.optimizer is not None:
        raise TypeError(f"{what}.optimizer must be None (this update keeps no optimizer state); "
                        f"got {type(given.optimizer).__name__}")
    if bn:
        running_stats(given.bn, tree_shapes(bn), f"{what}.bn")
    elif not isinstance(given.bn, dict) or given.bn:
        raise ValueError(f"{what}.bn must be {{}}: no batch-norm statistics are kept here; got "
                         f"{sorted(given.bn) if isinstance(given.bn, dict) else type(given.bn).__name__}")
    return given
