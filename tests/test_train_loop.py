"""The demos' one training loop (refmeta/demos/train.py), on MAML's real ``step``: where the curve's
points fall and what they hold, the time budget, the best checkpoint, SIGINT and SIGTERM in the
middle of training, divergence as one line, and the schedules."""

import math
import os
import signal
import types
from dataclasses import replace

import numpy as np
import pytest

from helpers import tiny_mlp_model
from refmeta import maml
from refmeta.data import tasks
from refmeta.demos import train

CONFIG = maml.MAMLConfig(model=tiny_mlp_model(hidden=8), inner_lr=0.05, meta_lr=0.01)
FAMILY = tasks.SinusoidFamily()


class Recorder:
    """MAML's step on fresh sinusoid batches (seeded), remembering what each step returned and
    was given; ``at`` maps a step number (1, 2, …) to something to do before it runs."""

    def __init__(self, seed=0, config=CONFIG, at=None):
        self.rng, self.config, self.at = np.random.default_rng(seed), config, at or {}
        self.losses, self.after, self.given = [], {0: None}, []

    def start(self):
        params = maml.init(np.random.default_rng(99), self.config)
        self.after[0] = params
        return params, maml.init_state(params, self.config)

    def __call__(self, params, state, **values):
        self.given.append(values)
        self.at.get(len(self.losses) + 1, lambda: None)()
        episode = tasks.sample_sinusoid_episode(self.rng, FAMILY, 2, 5, 5)
        taken = maml.step(params, state, episode, replace(self.config, **values))
        self.losses.append(float(taken.loss))
        self.after[len(self.losses)] = taken.params
        return taken


def validation(params, state):
    """The query loss of three fixed tasks: a validation check on the same draw every time."""
    episode = tasks.sample_sinusoid_episode(np.random.default_rng(7), FAMILY, 3, 5, 20)
    return {"validation": float(maml.loss(params, episode, CONFIG)), "by": {"first": 1.0}}


def run(plan, step=None, check=validation, **kwargs):
    step = step or Recorder()
    params, state = step.start()
    return step, train.train(step, params, state, plan, check, **kwargs)


def test_curve_points_fall_at_0_every_check_every_and_where_training_ends():
    step, trained = run(train.Plan(10, 3))
    curve = trained.curve
    assert curve["iteration"] == [0, 3, 6, 9, 10] and trained.iterations == 10
    assert trained.stopped == "iterations"
    assert math.isnan(curve["train_loss"][0])
    windows = [step.losses[0:3], step.losses[3:6], step.losses[6:9], step.losses[9:10]]
    np.testing.assert_allclose(curve["train_loss"][1:], [np.mean(w) for w in windows], rtol=1e-15)
    assert curve["by"] == {"first": [1.0] * 5}                       # a dict of values, key by key
    assert sorted(curve) == ["by", "iteration", "seconds", "train_loss", "validation"]


def test_each_check_sees_the_params_of_its_point_and_the_loop_adds_nothing_to_the_steps():
    step, trained = run(train.Plan(6, 2))
    for point, value in zip(trained.curve["iteration"], trained.curve["validation"]):
        assert value == validation(step.after[point], None)["validation"]
    plain = Recorder()                       # the same steps, called by hand: the same path twice
    params, state = plain.start()
    for _ in range(6):
        params, state, _ = plain(params, state)
    assert all(np.array_equal(params[k], trained.params[k]) for k in params)
    assert trained.state.optimizer.step == state.optimizer.step == 6


def test_no_step_begins_after_the_time_budget(monkeypatch):
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(train, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))

    def tick():
        clock.now += 1.0                     # each step takes one second of the loop's clock
    seen = []
    step = Recorder(at={n: tick for n in range(1, 100)})
    _, trained = run(train.Plan(100, 10, max_seconds=4.5), step,
                     schedule=lambda progress: seen.append(progress) or {})
    assert trained.stopped == "time budget" and trained.iterations == 5      # began at 0, 1, 2, 3, 4 s
    assert trained.curve["iteration"] == [0, 5] and trained.curve["seconds"] == [0.0, 5.0]
    # the fraction of training done is the larger of the two: here the time
    assert [p.iteration for p in seen] == [0, 0, 1, 2, 3, 4]
    np.testing.assert_allclose([p.fraction for p in seen[1:]], [0, 1 / 4.5, 2 / 4.5, 3 / 4.5, 4 / 4.5],
                               rtol=1e-15)


def test_the_fraction_is_the_iterations_while_the_steps_keep_ahead_of_the_budget(monkeypatch):
    """Reptile's ε on Omniglot: a slow held-out check (100 s here, at iterations 0, 4 and 8) does
    not count toward the fraction, so the first step's is 0 and every step's is iteration / 10
    exactly, as long as the steps (1 s each) keep ahead of the budget's pace: a schedule that
    does not depend on the clock."""
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(train, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))

    def tick():
        clock.now += 1.0

    def slow_check(params, state):
        clock.now += 100.0
        return validation(params, state)
    seen = []
    step = Recorder(at={n: tick for n in range(1, 100)})
    _, trained = run(train.Plan(10, 4, max_seconds=400.0), step, slow_check,
                     schedule=lambda progress: seen.append(progress) or {})
    assert trained.stopped == "iterations" and trained.curve["iteration"] == [0, 4, 8, 10]
    assert [p.fraction for p in seen[1:]] == [i / 10 for i in range(10)]
    # a budget the steps fall behind: of the 400 s, the checks at 0 and 4 left 200 to the steps
    clock.now, seen[:] = 0.0, []
    step = Recorder(at={n: (lambda: setattr(clock, "now", clock.now + 40.0)) for n in range(1, 100)})
    _, trained = run(train.Plan(10, 4, max_seconds=400.0), step, slow_check,
                     schedule=lambda progress: seen.append(progress) or {})
    assert trained.stopped == "time budget" and trained.iterations == 6    # began at 100…400 s
    np.testing.assert_allclose([p.fraction for p in seen[1:]], [0, 40 / 300, 80 / 300, 120 / 300,
                                                                160 / 200, 1.0], rtol=1e-15)


def test_the_best_checkpoint_is_chosen_on_the_validation_check_not_the_last_or_the_loss():
    scripted = {0: 5.0, 2: 3.0, 4: 4.0, 6: 3.0, 8: math.nan, 10: 3.5}
    step = Recorder()

    def check(params, state):
        point = next(i for i, p in step.after.items() if p is params)
        return {"validation": scripted[point], "step": state.optimizer.step}
    _, smallest = run(train.Plan(10, 2), step, check, select=("validation", "min"))
    assert smallest.best.iteration == 2 and smallest.best.value == 3.0       # the first of equals
    assert smallest.best.params is step.after[2] and smallest.best.state.optimizer.step == 2
    assert smallest.params is step.after[10]                                 # the last, kept too
    step = Recorder()
    _, largest = run(train.Plan(10, 2), step, check, select=("validation", "max"))
    assert largest.best.iteration == 0 and largest.best.params is step.after[0]   # NaN is never best
    _, none = run(train.Plan(4, 2))
    assert none.best is None


def test_sigterm_mid_training_ends_it_after_the_step_with_one_line(capsys):
    before = signal.getsignal(signal.SIGTERM)
    step = Recorder(at={4: lambda: os.kill(os.getpid(), signal.SIGTERM)})
    _, trained = run(train.Plan(50, 3), step)
    assert trained.stopped == "SIGTERM" and trained.iterations == 4 == len(step.losses)   # step 4 whole
    assert trained.curve["iteration"] == [0, 3, 4]
    assert trained.params is step.after[4] and trained.state.optimizer.step == 4
    assert signal.getsignal(signal.SIGTERM) is before
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "training: SIGTERM after 4 of 50 iterations: training ends there, as at the time budget, "
        "and the run goes on with what it trained (a second signal stops it at once)")
    assert train.unless_stopped(train.Plan(50, 3), trained).iterations == 0
    finished = run(train.Plan(3, 3))[1]
    assert train.unless_stopped(train.Plan(50, 3), finished).iterations == 50


class Terminated(BaseException):
    pass


def test_a_second_signal_acts_at_once_through_the_handler_that_was_there():
    def terminate(signum, frame):            # as the command line's: SIGTERM raises
        raise Terminated
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        twice = lambda: [os.kill(os.getpid(), signal.SIGTERM) for _ in range(2)]
        with pytest.raises(Terminated):
            run(train.Plan(50, 3), Recorder(at={2: twice}))
        assert signal.getsignal(signal.SIGTERM) is terminate
        with pytest.raises(KeyboardInterrupt):                      # Ctrl-C twice: Python's own
            run(train.Plan(50, 3), Recorder(at={2: lambda: [os.kill(os.getpid(), signal.SIGINT)
                                                            for _ in range(2)]}))
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _, trained = run(train.Plan(6, 3), Recorder(at={2: lambda: os.kill(os.getpid(), signal.SIGINT)}))
        assert trained.stopped == "iterations" and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")             # the overflow itself
def test_a_diverging_step_is_one_line_naming_the_step_what_and_the_options():
    huge = replace(CONFIG, inner_lr=1e300)
    with pytest.raises(train.Diverged) as raised:
        run(train.Plan(10, 5, what="MAML", lower=train.lower(("--inner-lr", 1e300))), Recorder(config=huge))
    message = str(raised.value)
    assert "\n" not in message and message.startswith("MAML training diverged at step 1: maml.step ")
    assert message.endswith("; lower --inner-lr (now 1e+300)")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_diverging_check_is_one_line_naming_the_check_and_its_point():
    episode = tasks.sample_sinusoid_episode(np.random.default_rng(7), FAMILY, 3, 5, 20)

    def check(params, state):               # adaptation on held-out tasks at a step size that overflows
        return {"loss": float(maml.loss(params, episode, replace(CONFIG, inner_lr=1e300)))}
    with pytest.raises(train.Diverged, match=r"^MAML held-out check diverged at step 0: maml\.loss: .+; "
                                             r"lower --inner-lr \(now 1e\+300\)$"):
        run(train.Plan(10, 5, what="MAML", lower=train.lower(("--inner-lr", 1e300)),
                       check_name="held-out check"), check=check)


def test_the_schedule_reaches_each_step_and_the_curve_records_the_last_steps_value():
    step = Recorder()
    _, trained = run(train.Plan(10, 5), step,
                     schedule=lambda progress: {"meta_lr": train.linear(0.01, 0.0, progress)})
    given = [values["meta_lr"] for values in step.given]
    np.testing.assert_allclose(given, [0.01 * (1 - i / 10) for i in range(10)], rtol=1e-12)
    np.testing.assert_allclose(trained.curve["meta_lr"], [0.01, 0.01 * (1 - 4 / 10), 0.01 * (1 - 9 / 10)],
                               rtol=1e-12)
    halved = [train.halved_every(1e-3, 2, train.Progress(i, 0.0)) for i in range(5)]
    assert halved == [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4]
    assert {train.halved_every(1e-3, 0, train.Progress(i, 0.0)) for i in (0, 1000, 10 ** 6)} == {1e-3}


def test_no_iterations_is_the_init_checked_once():
    step, trained = run(train.Plan(0, 5), select=("validation", "min"))
    assert trained.curve["iteration"] == [0] and trained.iterations == 0 and step.losses == []
    assert trained.best.iteration == 0 and trained.params is step.after[0]


@pytest.mark.parametrize("plan, select, message", [
    (train.Plan(-1, 5), None, "plan.iterations"),
    (train.Plan(10, 0), None, "plan.check_every"),
    (train.Plan(10, 5, max_seconds=0.0), None, "plan.max_seconds must be > 0; got 0.0"),
    (train.Plan(10, 5), ("validation", "lowest"), "direction of select"),
])
def test_a_bad_plan_is_refused_before_training(plan, select, message):
    step = Recorder()
    with pytest.raises(ValueError, match=message):
        run(plan, step, select=select)
    assert step.losses == []
