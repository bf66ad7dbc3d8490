"""One training loop for every demo: the algorithm's ``step``, and the bookkeeping of a run.

    trained = train.train(step, params, state, plan, check, schedule=None, select=None)

    step(params, state, **schedule(progress)) -> contract.Step
        one step: the demo draws its episode and calls its algorithm's ``step``; the scheduled
        values are the Config fields it replaces for this step (``meta_lr``, ``meta_step_size``)
    check(params, state) -> {name: number, or {name: number}}
        the validation check, on a draw that is the same every time (the demo's)
    schedule(Progress(iteration, fraction)) -> {name: value}
        what changes as training goes: a learning-rate schedule, Reptile's annealed ε
    select = (name, "min" or "max")
        keep the best checkpoint by check's ``name``

The loop owns what every demo's run needs around the step:
- the progress bar (``refmeta.progress``): the window's training loss and the last check;
- the learning curve: at iteration 0, every ``plan.check_every`` iterations and where training
  stops, the mean training loss since the last point (NaN at 0), check's values, the scheduled
  values of the last step and the seconds since training began;
- the time budget ``plan.max_seconds``, checks included: no step begins after it; the
  schedule's fraction of training done (``Progress``) counts the steps' seconds against it;
- the best checkpoint: the params and State at the curve point whose check value is best (the
  first of equals; NaN is never best), chosen on the validation check;
- SIGINT and SIGTERM: the first ends training after the step in progress, as the budget does,
  with one line on stderr, and the demo goes on to test and write what it trained.  The
  handlers that were there go back at once, so a second signal acts as before (Ctrl-C's
  KeyboardInterrupt, the command line's Terminated, or the end of the process); every file is
  still whole, as ``refmeta.disk`` holds both signals while it writes one;
- divergence: NaN or inf in a step (its loss, the new params, or a NotFinite the algorithm
  raised) or in a check raises ``Diverged``, whose message is the one line the command line
  prints, "MAML training diverged at step 3: …; lower --inner-lr (now 1e+300)", before any
  file of the run is written.

The loop lives with the demos, not in ``refmeta``: it holds no equation and names command-line
options, and a user's own loop is the contract itself, ``params, state, loss = step(params,
state, episode, config)`` (docs/architecture.md, "One training loop for the demos").
"""

import contextlib
import math
import signal
import sys
import threading
import time
from typing import Any, NamedTuple

import numpy as np

from refmeta import checks
from refmeta.progress import progress as progress_bar

EXIT_DIVERGED = 1
SIGNALS = (signal.SIGINT, signal.SIGTERM)
SIGNAL_NAMES = tuple(signum.name for signum in SIGNALS)
STOPS = ("iterations", "time budget") + SIGNAL_NAMES          # why training ended: Trained.stopped


class Diverged(Exception):
    """Training produced NaN or inf; the message is the one line the command line prints."""


class Plan(NamedTuple):
    """How long to train, how often to check, and the words for it."""
    iterations: int                 # steps at most
    check_every: int                # a curve point every this many steps
    max_seconds: float = math.inf   # the time budget, checks included
    what: str = "training"          # the run, in the bar and the messages: "MAML (first order)"
    lower: str = ""                 # the options to lower should it diverge (``lower``)
    unit: str = "iteration"         # what a step is called: the curve's counter ("episode")
    check_name: str = "validation"  # what the check is called in messages ("held-out check")


class Progress(NamedTuple):
    """Where training is as a step begins: ``iteration`` steps taken, and the ``fraction`` of
    training done, min(1, max(iteration / iterations, the budget's fraction)).  The budget's
    fraction is the seconds the steps have taken, of the budget the checks have left them:
    step seconds / (max_seconds − check seconds).  It is 0 at the first step, however long the
    check at iteration 0 took, and the fraction is iteration / iterations exactly as long as
    the steps keep ahead of the budget's pace (each taking less than its share of it): such a
    run's schedule, and the run, do not depend on the clock."""
    iteration: int
    fraction: float


class Checkpoint(NamedTuple):
    """The params and State at a curve point, and its check value."""
    iteration: int
    params: dict
    state: Any
    value: float


class Trained(NamedTuple):
    """What ``train`` returns.  curve: {unit, "train_loss", check's names, the schedule's
    names, "seconds": one entry per point}; best: the selected Checkpoint (None without
    ``select``); seconds: training's wall time, of which check_seconds checking; stopped: why it
    ended, one of STOPS."""
    params: dict
    state: Any
    curve: dict
    best: Checkpoint
    iterations: int
    seconds: float
    check_seconds: float
    stopped: str


def lower(*options):
    """"--inner-lr (now 1e+300) or --meta-lr (now 0.001)" from (option, value) pairs."""
    return " or ".join(f"{option} (now {value:g})" for option, value in options)


# ----- schedules: scheduled values from Progress -----
def halved_every(initial, every, progress):
    """initial · 0.5^⌊i / every⌋ at step i (``every`` 0: never halved)."""
    return initial * 0.5 ** (progress.iteration // every) if every else initial


def linear(initial, final, progress):
    """initial + (final − initial) · f, f the fraction of training done."""
    return initial + (final - initial) * progress.fraction


def unless_stopped(plan, trained):
    """``plan``, or no iterations when ``trained`` was stopped by a signal: a run asked to stop
    trains nothing more (the demos that train two networks, one after the other)."""
    return plan._replace(iterations=0) if trained.stopped in SIGNAL_NAMES else plan


# ----- the loop -----
def train(step, params, state, plan, check, schedule=None, select=None):
    """Train by ``step`` under ``plan`` (module docstring); returns Trained."""
    _check(plan, select)
    schedule = schedule or (lambda progress: {})
    run, values = _Run(plan, check, select), schedule(Progress(0, 0.0))
    bar = progress_bar(range(plan.iterations), total=plan.iterations, desc=plan.what)
    with _stop_requests() as signals:
        try:
            run.point(params, state, values, bar)
            for iteration in bar:
                seconds = run.seconds()
                stopped = _signal_name(signals) or ("time budget" if seconds > plan.max_seconds else None)
                if stopped:
                    break
                values = schedule(Progress(iteration, run.fraction()))
                started = time.perf_counter()
                with _watch(iteration + 1, plan, "training"):
                    params, state, loss = step(params, state, **values)
                    _finite(loss, params)
                run.took(loss, time.perf_counter() - started)
                if run.done % plan.check_every == 0 or run.done == plan.iterations:
                    run.point(params, state, values, bar)
            else:
                stopped = _signal_name(signals) or "iterations"
            if run.curve[plan.unit][-1] != run.done:         # the point where training stopped
                run.point(params, state, values, bar)
        finally:
            bar.close()
    if stopped in SIGNAL_NAMES:
        print(f"{plan.what}: {stopped} after {run.done} of {plan.iterations} {plan.unit}s: training "
              "ends there, as at the time budget, and the run goes on with what it trained (a second "
              "signal stops it at once)", file=sys.stderr)
    return Trained(params, state, run.curve, run.best, run.done, run.seconds(), run.check_seconds,
                   stopped)


class _Run:
    """What the loop keeps as it goes: steps done, the window of their losses, the curve, the
    best checkpoint, the clock (the seconds of the steps and of the checks apart)."""

    def __init__(self, plan, check, select):
        self.plan, self.check, self.select, self.begin = plan, check, select, time.perf_counter()
        self.done, self.window, self.curve, self.best = 0, [], {}, None
        self.step_seconds = self.check_seconds = 0.0

    def seconds(self):
        return time.perf_counter() - self.begin

    def fraction(self):
        """Progress.fraction before the next step: of the iterations, or of the budget."""
        left = self.plan.max_seconds - self.check_seconds          # the budget the checks left
        budget = self.step_seconds / left if left > 0 else 1.0
        return min(1.0, max(self.done / self.plan.iterations, budget))

    def took(self, loss, seconds):
        self.done += 1
        self.step_seconds += seconds
        self.window.append(float(loss))

    def point(self, params, state, values, bar):
        """A curve point at ``done``: check(params, state), the window's mean loss, ``values``."""
        started = time.perf_counter()
        with _watch(self.done, self.plan, self.plan.check_name):
            checked = self.check(params, state)
        self.check_seconds += time.perf_counter() - started
        point = {self.plan.unit: self.done,
                 "train_loss": float(np.mean(self.window)) if self.window else math.nan,
                 **checked, **values, "seconds": self.seconds()}
        _append(self.curve, point)
        self.window = []
        if self.select and (self.best is None or _better(point[self.select[0]], self.best.value,
                                                          self.select[1])):
            self.best = Checkpoint(self.done, params, state, point[self.select[0]])
        shown = {"loss": point["train_loss"], **{k: v for k, v in checked.items() if isinstance(v, float)}}
        best = {} if self.best is None else {"best": f"{self.best.value:.4g}@{self.best.iteration}"}
        bar.set_postfix(**{k: f"{v:.4g}" for k, v in shown.items() if math.isfinite(v)}, **best)


def _better(value, best, direction):
    """Whether ``value`` beats ``best`` ("min": smaller, "max": larger); NaN never does."""
    return value < best if direction == "min" else value > best


def _append(curve, point):
    """Each value of ``point`` appended to its list in ``curve``; a dict value, key by key."""
    for key, value in point.items():
        if isinstance(value, dict):
            _append(curve.setdefault(key, {}), value)
        else:
            curve.setdefault(key, []).append(value)


def _check(plan, select):
    checks.instance("plan", plan, Plan)
    checks.integer("plan.iterations", plan.iterations, minimum=0)
    checks.integer("plan.check_every", plan.check_every, minimum=1)
    if not plan.max_seconds > 0:
        raise ValueError(f"plan.max_seconds must be > 0; got {plan.max_seconds}")
    if select is not None:
        checks.choice("the direction of select", select[1], ("min", "max"))


@contextlib.contextmanager
def _watch(step_number, plan, what):
    """Inside, checks.NotFinite becomes Diverged naming the run, ``what``, the step and the options."""
    try:
        yield
    except checks.NotFinite as error:
        options = f"; lower {plan.lower}" if plan.lower else ""
        raise Diverged(f"{plan.what} {what} diverged at step {step_number}: {error}{options}") from None


def _finite(loss, params):
    """checks.NotFinite unless the step's ``loss`` and every leaf of ``params`` are finite."""
    if not math.isfinite(float(loss)):
        raise checks.NotFinite(f"the training loss is {float(loss)}")
    checks.finite_tree("params", params)


@contextlib.contextmanager
def _stop_requests():
    """Inside, in the main thread, the first SIGINT or SIGTERM is noted in the yielded list and
    the handlers that were there go back at once; a signal that was ignored stays ignored."""
    noted, previous = [], {}
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return

    def restore():
        while previous:
            signum, handler = previous.popitem()
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def note(signum, frame):
        noted.append(signum)
        restore()

    for signum in SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, note)
    try:
        yield noted
    finally:
        restore()


def _signal_name(noted):
    return signal.Signals(noted[0]).name if noted else None
