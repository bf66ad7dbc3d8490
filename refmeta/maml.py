"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017), exact and first order.

Paper: Section 2.2, Algorithm 1 (supervised: Algorithm 2), Section 5.1 (sinusoid).

Symbols
    θ        params             meta-parameters (a dict tree)
    α        inner_lr           inner-loop step size
    k        inner_steps        inner gradient steps at meta-training
             test_inner_steps   inner gradient steps at meta-test
    β        meta_lr            outer (Adam) step size
    L_i^S    support loss of task i, reduced over examples by ``inner_reduction``
    L_i^Q    query loss of task i, reduced over examples by ``query_reduction``

Inner loop, for each task i (Algorithm 2, line 7, repeated k times):

    θ_i^(0) = θ,      θ_i^(j+1) = θ_i^(j) − α ∇L_i^S(θ_i^(j))                     (1)

Meta-objective (Section 2.2, Eq. 1 written with one step; the paper sums over tasks):

    L(θ) = Σ_i L_i^Q(θ − α ∇L_i^S(θ))        and in general  L(θ) = Σ_i L_i^Q(θ_i^(k))    (2)

``task_reduction`` chooses Σ_i (the paper's equation) or (1/T) Σ_i (the authors'
code); the two differ exactly by the factor T.

Meta-gradient.  With H_j = ∇²L_i^S(θ_i^(j)) the chain rule through (1) gives

    ∇_θ L_i^Q(θ_i^(k)) = (I − αH_0)(I − αH_1)…(I − αH_{k−1}) ∇L_i^Q(θ_i^(k))           (3)

autograd forms (3) exactly by differentiating through all k steps: that is
second-order MAML.  ``first_order=True`` treats each ∇L_i^S as a constant, so
every (I − αH_j) becomes I and the meta-gradient is ∇L_i^Q(θ_i^(k)) (FOMAML,
Section 5.2).

Conventions (all in ``MAMLConfig``, all recorded by ``MAMLConfig.conventions``):
    task_reduction    "mean" (default: the authors' code) or "sum" (the paper's Eq. 1)
    inner_reduction   "mean" (default), "sum", or "n_way_times_mean" (the authors'
                      classification code: N × mean cross-entropy)
    query_reduction   "mean" (default) or "sum"
    adapt_bn          False (default, the authors' code): params whose name starts
                      with "bn" are meta-learned but held fixed in the inner loop.
    Batch-norm mode belongs to the model's loss function (see ``refmeta.nn.layers``).

Vectorisation.  The meta-batch carries a leading task axis T.  ``meta_loss``
gives every parameter that axis (``trees.broadcast_tasks``) and runs all tasks
through one call of the model.  Because Σ_i L_i^S(θ_i) couples no two tasks,
its gradient with respect to the task-batched params is every task's own
gradient, so (1) is one ``grad`` call for the whole meta-batch.  ``looped``
wraps a one-task loss into the same interface for models that cannot batch.
"""

from dataclasses import asdict, dataclass
import math

import autograd.numpy as anp
from autograd import grad, value_and_grad
from autograd.tracer import getval

from refmeta.nn import optimizers, trees

TASK_REDUCTIONS = ("mean", "sum")
INNER_REDUCTIONS = ("mean", "sum", "n_way_times_mean")


@dataclass(frozen=True)
class MAMLConfig:
    """Hyperparameters and conventions; defaults are the paper's sinusoid setup."""
    inner_lr: float = 0.01
    inner_steps: int = 1
    test_inner_steps: int = 10
    first_order: bool = False
    task_reduction: str = "mean"
    inner_reduction: str = "mean"
    query_reduction: str = "mean"
    adapt_bn: bool = False
    meta_lr: float = 1e-3

    def __post_init__(self):
        for name in ("inner_lr", "meta_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number; got {value!r}")
        for name in ("inner_steps", "test_inner_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0; got {value!r}")
        _check_choice("task_reduction", self.task_reduction, TASK_REDUCTIONS)
        _check_choice("inner_reduction", self.inner_reduction, INNER_REDUCTIONS)
        _check_choice("query_reduction", self.query_reduction, INNER_REDUCTIONS)
        for name in ("first_order", "adapt_bn"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False; got {getattr(self, name)!r}")

    def conventions(self):
        """Every field, as a JSON-able dict (reference cases record it whole)."""
        return asdict(self)


def inner_update(params, support_x, support_y, loss_fn, config):
    """One inner step (1) for every task: θ_i − α ∇L_i^S(θ_i).

    Args:
        params: tree whose leaves carry the task axis, (T, ...).
        support_x, support_y: (T, n_support, ...).
        loss_fn: (params, x, y, reduction) -> per-task losses (T,).
    """
    total_support_loss = lambda p: anp.sum(loss_fn(p, support_x, support_y, config.inner_reduction))
    grads = grad(total_support_loss)(params)
    if config.first_order:
        grads = {name: getval(g) for name, g in grads.items()}  # ∇L_i^S held constant
    return {name: params[name] - config.inner_lr * grads[name] if _adapts(name, config)
            else params[name] for name in sorted(params)}


def adapt_trajectory(params, support_x, support_y, loss_fn, config, steps=None):
    """[θ^(0), θ^(1), …, θ^(steps)] for every task; steps defaults to config.inner_steps."""
    steps = config.inner_steps if steps is None else _check_steps(steps)
    trajectory = [params]
    for _ in range(steps):
        trajectory.append(inner_update(trajectory[-1], support_x, support_y, loss_fn, config))
    return trajectory


def adapt(params, support_x, support_y, loss_fn, config, steps=None):
    """θ_i^(k): the task-adapted params after ``steps`` inner steps (1)."""
    return adapt_trajectory(params, support_x, support_y, loss_fn, config, steps)[-1]


def task_query_losses(params, episode, loss_fn, config, steps=None):
    """L_i^Q(θ_i^(k)) for every task in the meta-batch, shape (T,)."""
    n_tasks = _n_tasks(episode)
    task_params = trees.broadcast_tasks(params, n_tasks)
    adapted = adapt(task_params, episode.support_x, episode.support_y, loss_fn, config, steps)
    losses = loss_fn(adapted, episode.query_x, episode.query_y, config.query_reduction)
    if anp.shape(losses) != (n_tasks,):
        raise ValueError(f"loss_fn must return one loss per task, shape ({n_tasks},); "
                         f"got {anp.shape(losses)}")
    return losses


def meta_loss(params, episode, loss_fn, config):
    """The meta-objective (2): the query losses after k inner steps, reduced over tasks."""
    losses = task_query_losses(params, episode, loss_fn, config)
    return anp.mean(losses) if config.task_reduction == "mean" else anp.sum(losses)


def meta_gradient(params, episode, loss_fn, config):
    """∇_θ of (2): exact (3) through all k steps, or FOMAML's if config.first_order."""
    return grad(meta_loss)(params, episode, loss_fn, config)


def meta_step(params, opt_state, episode, loss_fn, config):
    """One meta-training step with Adam (Algorithm 2, line 10).

    Returns:
        (new_params, new_opt_state, meta_loss_value); start with
        ``opt_state = optimizers.adam_init(params)``.
    """
    loss, grads = value_and_grad(meta_loss)(params, episode, loss_fn, config)
    new_params, new_state = optimizers.adam_update(params, grads, opt_state, lr=config.meta_lr)
    return new_params, new_state, loss


def looped(loss_fn):
    """Wrap a one-task loss (params, x (n, ...), y, reduction) -> scalar into the per-task
    interface by a Python loop over the task axis.  Same numbers, no vectorisation."""
    def task_losses(params, x, y, reduction):
        return anp.stack([loss_fn(trees.take_task(params, t), x[t], y[t], reduction)
                          for t in range(anp.shape(x)[0])])
    return task_losses


def _adapts(name, config):
    return config.adapt_bn or not name.startswith("bn")


def _n_tasks(episode):
    shape = anp.shape(episode.support_x)
    if len(shape) < 2 or anp.shape(episode.query_x)[:1] != shape[:1]:
        raise ValueError("MAML takes a meta-batch: support_x and query_x need the same leading "
                         f"task axis; got {shape} and {anp.shape(episode.query_x)}")
    return shape[0]


def _check_steps(steps):
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0; got {steps!r}")
    return steps


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}")
