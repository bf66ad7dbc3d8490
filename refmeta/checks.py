"""The input checks, in one place: every public entry point of refmeta validates through these.

A check either returns quietly (some return the value they checked, normalised) or raises

    TypeError    the value has the wrong kind: a string where a number belongs, float labels
    ValueError   the kind is right but the value is not: out of range, NaN, the wrong shape

with a message that names the argument, says what was expected and what was given.

Checks read device arrays only through explicit scalar reads (``bool(...)``, ``int(...)``)
or one explicit ``backend.to_host`` of a label array, as CuPy allows; nothing here copies
a float array to the host.  Under autograd, the values are read with ``getval``.

    choice, boolean, integer, number, positive, nonnegative, probability   scalars and names
    specs, increasing_integers, shots                            a tuple of (kind, sizes…) specs, of sizes
    plain_fields                                                 a Config's fields as Python values
    instance, generator, model_with_loss                         a Config, an explicit rng, a Model
    function, scalar                                             a callable; a real number (or 0-d array)
    finite, float_array, labels, class_counts                    arrays (NotFinite: NaN or inf)
    indices                                                      integer positions into an axis
    nonnegative_array, example_shape                             arrays: sizes, signs, image shapes
    finite_tree                                                  a dict of finite arrays (gradients)
    params, tree_shapes, init_shapes, model_shapes               a params tree against its template
    running_stats, bn_state_for_mode, adam_state                 running BN statistics, Adam's (step, m, v)
    episode, episode_shots                                       an Episode, with the N-way K-shot arithmetic
    model_params, model_losses, model_outputs, embedding,        what a user's function returned
    scalar_output
    all_finite, first_non_finite                                 a door's results: one read, then why
    memory_limit, fits                                           sizes refused before they are allocated

A user's model is checked on what it returns, where it returns it: its kind and shape (no
device read) at the call, and the finiteness of a door's results once (``all_finite``, one
explicit ``bool`` read); only when that fails does the door look for the first NaN or inf
(``first_non_finite``), to name it.
"""

import dataclasses
import functools
import math
import numbers
import os
from typing import Optional

import autograd.numpy as anp
import numpy as np
from autograd.tracer import getval

from refmeta.device import backend


# ----- scalars and names -----
def choice(name, value, allowed):
    """``value`` must be one of ``allowed`` (a tuple of names)."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def boolean(name, value):
    """``value`` must be True or False (not 0, 1 or a string)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def integer(name, value, minimum=None, maximum=None):
    """An int (numpy ints count, bools do not) in [minimum, maximum]; returns it as int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer{_range_text(minimum, maximum)}; "
                        f"got {_given(value)}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an integer{_range_text(minimum, maximum)}; "
                         f"got {_given(value)}")
    return int(value)


def number(name, value, low=None, high=None, low_open=False, high_open=False):
    """A finite real number (not a bool) in the interval low..high; returns it as float.

    ``low_open`` / ``high_open`` exclude the end point: ``number("lr", x, low=0, low_open=True)``
    is x > 0.
    """
    interval = _interval_text(low, high, low_open, high_open)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number{interval}; got {_given(value)}")
    try:
        value = float(value)
    except OverflowError:                       # an int beyond float's range, 10**400
        raise ValueError(f"{name} must be a finite number{interval}; got {_given(value)}") from None
    inside = math.isfinite(value)
    if inside and low is not None:
        inside = value > low if low_open else value >= low
    if inside and high is not None:
        inside = value < high if high_open else value <= high
    if not inside:
        raise ValueError(f"{name} must be a finite number{interval}; got {value!r}")
    return value


def positive(name, value):
    """A finite number > 0: a step size, an epsilon, a clip norm."""
    return number(name, value, low=0.0, low_open=True)


def nonnegative(name, value):
    """A finite number >= 0: a learning rate (0 freezes the step)."""
    return number(name, value, low=0.0)


def probability(name, value, high_open=False):
    """A finite number in [0, 1] ([0, 1) with ``high_open``): momentum, Adam's β."""
    return number(name, value, low=0.0, high=1.0, high_open=high_open)


def specs(name, value, forms):
    """A tuple of specs (kind, size, …), ``forms[kind]`` naming the sizes, each an integer >= 1:
    SNAIL's blocks, forms {"attention": ("key_size", "value_size"), "tc": ("filters",)}."""
    instance(name, value, tuple)
    allowed = " or ".join(f"({kind!r}, {', '.join(sizes)})" for kind, sizes in forms.items())
    for j, spec in enumerate(value):
        kind = spec[0] if isinstance(spec, tuple) and spec and isinstance(spec[0], str) else None
        if kind not in forms or len(spec) != 1 + len(forms[kind]):
            raise ValueError(f"{name}[{j}] must be {allowed}; got {spec!r}")
        for size_name, size in zip(forms[kind], spec[1:]):
            integer(f"{name}[{j}] {size_name}", size, minimum=1)
    return value


def increasing_integers(name, value, minimum=None):
    """A non-empty tuple of integers (each >= minimum), strictly increasing: SNAIL's train_shots."""
    instance(name, value, tuple)
    if not value:
        raise ValueError(f"{name} must hold at least one integer; got ()")
    for j, item in enumerate(value):
        integer(f"{name}[{j}]", item, minimum=minimum)
    if any(later <= earlier for earlier, later in zip(value, value[1:])):
        raise ValueError(f"{name} must be strictly increasing; got {value}")
    return value


def shots(k_shot, train_shots):
    """SNAIL's Ks: exactly one of ``k_shot`` (an integer >= 1) and ``train_shots`` (a strictly
    increasing tuple of them) is given, the other None; returns the tuple of Ks."""
    if (k_shot is None) == (train_shots is None):
        raise ValueError(f"give k_shot (one K) or train_shots (several), the other None; got "
                         f"k_shot={k_shot!r} and train_shots={train_shots!r}")
    if k_shot is not None:
        return (integer("k_shot", k_shot, minimum=1),)
    return increasing_integers("train_shots", train_shots, minimum=1)


def instance(name, value, kind):
    """``value`` must be a ``kind`` (a Config class, numpy.random.Generator, ...; or a tuple of them)."""
    if not isinstance(value, kind):
        kinds = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise TypeError(f"{name} must be a {kinds}; got {type(value).__name__}")
    return value


def plain_fields(config):
    """Store a frozen dataclass's fields as plain Python values; its ``__post_init__`` calls this
    first.  A numpy scalar becomes an int, float or bool (inside tuples too), and an int given
    for a float field a float (one too large for a float stays, for ``number`` to refuse): so
    ``n_way=np.int8(64)`` computes in Python ints, an np.float32 rate in float64, and
    ``conventions()`` is JSON."""
    for field in dataclasses.fields(config):
        value = _plain(getattr(config, field.name))
        floating = field.type in (float, Optional[float])
        if floating and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                pass
        object.__setattr__(config, field.name, value)
    return config


def _plain(value):
    if isinstance(value, (np.number, np.bool_)) and not isinstance(value, np.longdouble):
        return value.item()
    return tuple(_plain(v) for v in value) if type(value) is tuple else value


def function(name, value):
    """``value`` must be callable: a model's function, the f a gradient check differentiates."""
    if not callable(value):
        raise TypeError(f"{name} must be a function; got {type(value).__name__}")
    return value


def scalar(name, value):
    """A real number (not a bool), or a 0-d real floating-point array of one (on any device, or
    traced by autograd): a step size or an interpolation weight.  Returns it unchanged."""
    raw = getval(value)
    if isinstance(raw, numbers.Real) and not isinstance(raw, (bool, np.bool_)):
        return value
    if hasattr(raw, "dtype") and np.ndim(raw) == 0 and np.issubdtype(raw.dtype, np.floating):
        return value
    raise TypeError(f"{name} must be a real number; got {_given(raw)}")


def model_with_loss(name, model, algorithm):
    """A ``contract.Model`` that has a loss (MAML's and Reptile's network; an embedding has none)."""
    from refmeta.contract import Model
    instance(name, model, Model)
    if model.loss is None:
        raise ValueError(f"{name} {model.name!r} has no loss (an embedding?); {algorithm} needs "
                         f"{name}.loss(params, x, y, reduction)")
    return model


def generator(rng):
    """An explicit ``numpy.random.Generator``: refmeta draws from nothing else."""
    return instance("rng", rng, np.random.Generator)


# ----- arrays -----
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
    if not bool(anp.all(anp.isfinite(getval(x)))):
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
    every = functools.reduce(lambda a, b: a & b, (anp.all(anp.isfinite(getval(tree[leaf])))
                                                  for leaf in sorted(tree)))
    if not bool(every):
        for leaf in sorted(tree):
            finite(f"{name}[{leaf!r}]", tree[leaf])
    return given


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
    if not bool(anp.all(getval(x) >= 0)):
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


def running_stats(tree, expected, what="bn_state"):
    """Running batch-norm statistics against their template {"….mean", "….var": shape}: the
    keys and shapes of ``params``, finite, and every variance >= 0."""
    params(tree, expected, what)
    for name in sorted(expected):
        if name.endswith("var"):
            nonnegative_array(f"{what}[{name!r}]", getval(tree)[name])
    return tree


def bn_state_for_mode(bn_state, bn_mode, expected, what="bn_state"):
    """Running statistics given exactly when ``bn_mode`` is "running" (eval mode; "transductive"
    normalises by the batch's own and refuses them), then checked as ``running_stats``."""
    if (bn_state is None) != (bn_mode == "transductive"):
        raise ValueError(f"{what} is required with bn_mode 'running' and refused with "
                         f"'transductive'; got bn_mode {bn_mode!r} and {what} "
                         f"{'None' if bn_state is None else 'given'}")
    return bn_state if bn_state is None else running_stats(bn_state, expected, what)


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


# ----- episodes -----
def episode(ep, n_way=None, k_shot=None, task_axis=None):
    """Check an Episode; returns it as ``refmeta.contract.Episode``.

    Args:
        ep: an Episode, or any 4-sequence (support_x, support_y, query_x, query_y).
        n_way: None for regression (y float (..., n, d_out)); else labels (..., n) in 0..N−1,
            and every class present in every task's support set.
        k_shot: if given, the support set is N-way K-shot: N·K examples, each class K times.
        task_axis: True: a meta-batch (T, n, ...) with T >= 1; False: one task (n, ...);
            None: either.
    Every field is finite; support and query share the task axes and per-example shapes, and
    neither is empty.
    """
    from refmeta.contract import Episode
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
    if task_axis is True and len(task_axes) != 1:
        raise ValueError(f"expected a meta-batch with one leading task axis, support_x (T, n, ...); "
                         f"got support_x {anp.shape(ep.support_x)}")
    if 0 in task_axes:
        raise ValueError(f"the episode holds no task (T = 0): support_x {anp.shape(ep.support_x)} "
                         f"has a task axis of length 0")
    if task_axis is False and task_axes:
        raise ValueError(f"expected one task, support_x (n, ...) without a task axis; got "
                         f"support_x {anp.shape(ep.support_x)}")
    if n_way is not None:
        if k_shot is not None and anp.shape(ep.support_y)[-1] != n_way * k_shot:
            raise ValueError(f"a {n_way}-way {k_shot}-shot support set has N·K = {n_way * k_shot} "
                             f"examples; got {anp.shape(ep.support_y)[-1]}")
        class_counts("support_y", support_labels, n_way, k_shot)
    return ep


def episode_shots(ep, n_way, shots, task_axis=None):
    """``episode`` for an N-way K-shot support set whose K, read from its size N·K, is one of
    ``shots`` (each class K times); returns (the Episode, K).  Everything ``episode`` checks
    comes first; then a support size that is not N·K for a K in ``shots`` is refused."""
    integer("n_way", n_way, minimum=2)
    labels_ = getval(ep[1]) if isinstance(ep, tuple) and len(ep) == 4 else None
    n_support = anp.shape(labels_)[-1] if labels_ is not None and anp.ndim(labels_) >= 1 else 0
    k_shot = n_support // n_way if n_support % n_way == 0 and n_support // n_way in shots else None
    ep = episode(ep, n_way, k_shot, task_axis)
    if k_shot is None:
        sizes = ", ".join(str(n_way * k) for k in shots)
        raise ValueError(f"the support set must hold N·K examples, N = {n_way} and K in "
                         f"{tuple(shots)}: {sizes}; got {n_support}")
    return ep, k_shot


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


# ----- a door's results -----
def all_finite(*values):
    """Whether every entry of ``values`` (arrays, numbers, dicts of them) is finite: one
    reduction per array, combined on the device, then one explicit read (``bool``)."""
    leaves = [leaf for value in values for leaf in
              (getval(value).values() if isinstance(getval(value), dict) else (value,))]
    return bool(functools.reduce(lambda a, b: a & b,
                                 (anp.all(anp.isfinite(getval(leaf))) for leaf in leaves)))


def first_non_finite(where, quantities):
    """Raise NotFinite naming the first ``(what, value)`` of ``quantities`` that holds NaN or
    inf.  The failure path of a door whose results ``all_finite`` refused: ``quantities`` (a
    generator) recomputes them in order, and each is read as it comes."""
    for what, value in quantities:
        if not all_finite(value):
            raise NotFinite(f"{where}: {what} {_first_non_finite_text(value)}")
    raise NotFinite(f"{where}: a result holds NaN or inf")


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


def _given(value):
    """repr(value), but a short text for an integer too long to print (10**400)."""
    huge = isinstance(value, numbers.Integral) and not isinstance(value, bool) and abs(int(value)) >= 10 ** 30
    if huge:
        return f"an integer of about {int(abs(int(value)).bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _some(items, at_most=10):
    """The first ``at_most`` of a list, and how many there are in all."""
    shown = ", ".join(map(str, items[:at_most]))
    return f"[{shown}]" if len(items) <= at_most else f"[{shown}, …] ({len(items)} classes)"


def _range_text(minimum, maximum):
    if minimum is not None and maximum is not None:
        return f" in {minimum}..{maximum}"
    if minimum is not None:
        return f" >= {minimum}"
    return f" <= {maximum}" if maximum is not None else ""


def _interval_text(low, high, low_open, high_open):
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if low_open else '>='} {low:g}"
    if low is None:
        return f" {'<' if high_open else '<='} {high:g}"
    return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
