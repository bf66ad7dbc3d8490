"""Training that diverges stops with one line: at which step, what became NaN or inf, and which
options to lower.  Every demo's training loop wraps its step so:

    with divergence.watch(step_number, divergence.lower(("--inner-lr", args.inner_lr))):
        params, state, loss = maml.step(params, state, episode, config)
        divergence.check(loss, params)

``watch`` turns a ``checks.NotFinite`` raised inside (by ``check``, or by the algorithm's own
checks of its params and gradients) into ``Diverged``.  ``refmeta demo NAME`` and
``python demos/NAME.py`` print a Diverged as one line and exit with status 1, before any file
of the run is written.
"""

import contextlib
import math

from refmeta import checks

EXIT_DIVERGED = 1


class Diverged(Exception):
    """Training produced NaN or inf; the message is the one line the command line prints."""


def lower(*options):
    """"--inner-lr (now 1e+300) or --meta-lr (now 0.001)" from (option, value) pairs."""
    return " or ".join(f"{option} (now {value:g})" for option, value in options)


@contextlib.contextmanager
def watch(step_number, options, what="training"):
    """Inside, checks.NotFinite becomes Diverged naming ``what``, the step and ``options``."""
    try:
        yield
    except checks.NotFinite as error:
        raise Diverged(f"{what} diverged at step {step_number}: {error}; lower {options}") from None


def check(loss, params):
    """checks.NotFinite unless the step's ``loss`` and every leaf of ``params`` are finite."""
    if not math.isfinite(float(loss)):
        raise checks.NotFinite(f"the training loss is {float(loss)}")
    checks.finite_tree("params", params)
