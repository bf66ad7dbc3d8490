"""Checks of scalars, names and configs: a choice, a boolean, an integer or a number in a range,
an instance, an explicit rng, a callable; a Config's fields as plain Python values."""

import dataclasses
import math
import numbers
from typing import Optional

import numpy as np
from autograd.tracer import getval

from refmeta.contract import Model


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


def model_with_loss(name, model, algorithm, keeps_statistics=True):
    """A ``contract.Model`` that has a loss (MAML's and Reptile's network; an embedding has none);
    without ``keeps_statistics`` (Reptile), one that declares no running batch-norm statistics."""
    instance(name, model, Model)
    if model.loss is None:
        raise ValueError(f"{name} {model.name!r} has no loss (an embedding?); {algorithm} needs "
                         f"{name}.loss(params, x, y, reduction)")
    if not keeps_statistics and model.batch_norm is not None:
        raise ValueError(f"{name} {model.name!r} declares running batch-norm statistics ({name}."
                         f"batch_norm, a contract.BatchNorm), which {algorithm} does not keep: its "
                         "State is State(None, {}); give the Model batch_norm=None, and a batch norm "
                         "in its apply normalises by the statistics of the batch at hand")
    return model


def increasing_integers(name, value, minimum=None):
    """A non-empty tuple of integers (each >= ``minimum``), strictly increasing: SNAIL's
    train_shots.  Returns it as a tuple of ints."""
    instance(name, value, tuple)
    if not value:
        raise ValueError(f"{name} must hold at least one integer; got ()")
    value = tuple(integer(f"{name}[{j}]", item, minimum) for j, item in enumerate(value))
    if any(later <= earlier for earlier, later in zip(value, value[1:])):
        raise ValueError(f"{name} must be strictly increasing; got {value}")
    return value


def specs(name, value, forms):
    """A tuple of specs (kind, size, ...): each kind a key of ``forms`` ({kind: the names of its
    sizes}), each size an integer >= 1 (SNAIL's blocks, ``snail_blocks.BLOCK_FORMS``)."""
    instance(name, value, tuple)
    allowed = " or ".join(f"({kind!r}, {', '.join(sizes)})" for kind, sizes in forms.items())
    for j, spec in enumerate(value):
        kind = spec[0] if isinstance(spec, tuple) and spec and isinstance(spec[0], str) else None
        if kind not in forms or len(spec) != 1 + len(forms[kind]):
            raise ValueError(f"{name}[{j}] must be {allowed}; got {spec!r}")
        for size_name, size in zip(forms[kind], spec[1:]):
            integer(f"{name}[{j}] {size_name}", size, minimum=1)
    return value


def generator(rng):
    """An explicit ``numpy.random.Generator``: refmeta draws from nothing else."""
    return instance("rng", rng, np.random.Generator)


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
