"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017), exact and first order.

Paper: Section 2.2, Algorithm 1 (supervised: Algorithm 2), Section 5.1 (sinusoid).

Symbols
    θ        params             meta-parameters (a dict tree)
    f_θ      model              a ``contract.Model``: ``model.apply`` is f_θ, ``model.loss`` is L
    α        inner_lr           inner-loop step size
    k        inner_steps        inner gradient steps at meta-training (``loss``, ``step``)
             test_inner_steps   inner gradient steps at meta-test (``adapt``, ``predict``)
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
Section 5.2).  ``step`` is Algorithm 2, line 10, with Adam (β = meta_lr).

Meta-test (Section 5.1: 10 steps on a new sinusoid).  ``adapt`` runs (1) for
``test_inner_steps`` steps (or ``steps``) on each task's support set and returns
θ_i^(k) with its task axis; ``predict`` is f applied to the query inputs with them.

Conventions (all in ``MAMLConfig``, all recorded by ``MAMLConfig.conventions``):
    task_reduction    "mean" (default: the authors' code) or "sum" (the paper's Eq. 1)
    inner_reduction   "mean" (default), "sum", or, with ``n_way`` set, "n_way_times_mean"
                      (the authors' classification code: N × mean cross-entropy)
    query_reduction   the same choices
    adapt_bn          False (default, the authors' code): params whose name starts
                      with "bn" are meta-learned but held fixed in the inner loop.
    Batch-norm mode belongs to the model's loss function (see ``refmeta.nn.layers``).

Vectorisation.  The meta-batch carries a leading task axis T.  ``loss`` gives every
parameter that axis (``trees.broadcast_tasks``) and runs all tasks through one call
of the model.  Because Σ_i L_i^S(θ_i) couples no two tasks, its gradient with respect
to the task-batched params is every task's own gradient, so (1) is one gradient call
for the whole meta-batch.  ``looped`` wraps a one-task loss into the same interface
for models that cannot batch.  Gradients with respect to the params tree are
``trees.grad``: autograd's ``grad`` with each leaf traced as a variable of its own,
which spares the second derivative a dozen recorded dict operations per leaf.

One task alone, support_x (n, ...), is a meta-batch of T = 1; ``adapt`` and ``predict`` then
return it without the task axis.  ``adapt`` and ``predict`` keep only the current θ_i^(j), so
their memory does not grow with ``steps``; ``adapt_trajectory`` keeps every step.

Batch norm inside ``config.model`` normalises by the statistics of the batch at hand, support
or query set, per task (the authors' code).  A model that keeps running statistics
(``contract.BatchNorm``) has them in state.bn: ``step`` tracks those of the query pass at
θ_i^(k), the pass (2) reads, and ``predict`` in the mode "running" normalises that pass by
them; the inner loop and ``loss`` keep the batch's statistics.  A failure to be finite is
named at the support loss or inner update of inner step j, the query loss, or a meta-gradient.
"""

import functools
from dataclasses import dataclass
from typing import Optional

import autograd.numpy as anp
from autograd.tracer import getval

from refmeta import checks, contract, door
from refmeta.nn import losses, models, optimizers, trees

SINUSOID_MLP = contract.supervised(functools.partial(models.mlp_init, sizes=(1, 40, 40, 1)),
                                   models.mlp_apply, functools.partial(losses.mse, check=False),
                                   "mlp 1-40-40-1 relu, mse")


@dataclass(frozen=True)
class MAMLConfig:
    """Hyperparameters and conventions; defaults are the paper's sinusoid setup (Section 5.1).

    ``n_way`` None: regression (y float (T, n, d)); an int N: classification, labels in 0..N−1.
    """
    model: contract.Model = SINUSOID_MLP
    n_way: Optional[int] = None
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
        checks.plain_fields(self)
        checks.model_with_loss("model", self.model, "MAML")
        if self.n_way is not None:
            checks.integer("n_way", self.n_way, minimum=2)
        for name in ("inner_lr", "meta_lr"):
            checks.nonnegative(name, getattr(self, name))
        for name in ("inner_steps", "test_inner_steps"):
            checks.integer(name, getattr(self, name), minimum=0)
        for name in ("first_order", "adapt_bn"):
            checks.boolean(name, getattr(self, name))
        checks.choice("task_reduction", self.task_reduction, contract.TASK_REDUCTIONS)
        for name in ("inner_reduction", "query_reduction"):
            checks.choice(name, getattr(self, name), door.example_reductions(self.n_way))

    def conventions(self):
        """Every field, as a JSON-able dict (the model by its name); reference cases record it."""
        return door.conventions(self)


# ----- the front door: checks once, then the math below -----
def init(rng, config):
    """θ from ``config.model.init``: a dict of host float64 arrays."""
    return door.init_params(rng, config, MAMLConfig)


def init_state(params, config):
    """State: Adam's zero moments and step 0 for the outer update; the model's running BN
    statistics where it keeps them (``Model.batch_norm``), else {}."""
    _check(params, None, config)
    return door.init_state(params, door.bn_statistics(config.model))


def loss(params, episode, config, *, state=None):
    """The meta-objective (2) on a meta-batch (T, n, ...): query losses after ``inner_steps``."""
    episode, _ = _check(params, episode, config, state)
    value = _loss(params, episode, config)
    checks.finite_results("maml.loss", [("the meta-loss", value)],
                          _explain(params, episode, config, config.inner_steps, "loss"))
    return value


def meta_gradient(params, episode, config):
    """∇_θ of (2): exact (3) through all k steps, or FOMAML's if config.first_order."""
    episode, _ = _check(params, episode, config)
    grads = trees.grad(_loss)(params, episode, config)
    checks.finite_results("maml.meta_gradient", [(f"the meta-gradient for {name!r}", grads[name])
                                                 for name in sorted(grads)],
                          _explain(params, episode, config, config.inner_steps, "loss"))
    return grads


def step(params, state, episode, config):
    """One meta-training step, Adam on (2) (Algorithm 2, line 10): Step(new params, new State,
    the meta-loss (2) at ``params``); start from ``init_state(params, config)``."""
    episode, _ = _check(params, episode, config, state, step=True)
    objective = lambda p, moments: _loss(p, episode, config, moments)
    return door.step("maml.step", ("the meta-loss", "the meta-gradient"), objective, params, state,
                     config.meta_lr, _explain(params, episode, config, config.inner_steps, "loss"),
                     door.bn_momentum(config.model))


def adapt(params, episode, config, *, steps=None):
    """θ_i^(k) for every task (leaves (T, ...)): (1) on the support sets, ``steps`` times
    (default ``config.test_inner_steps``: this is where meta-test adaptation happens)."""
    episode, single = _check(params, episode, config)
    steps = _test_steps(steps, config)
    adapted = _adapt(params, episode, config, steps)
    checks.finite_results("maml.adapt", [("θ_i^(k)", adapted)],
                          _explain(params, episode, config, steps))
    return trees.take_task(adapted, 0) if single else adapted


def predict(params, episode, config, *, steps=None, state=None):
    """f_{θ_i^(k)}(query_x) for every task: the model's outputs after ``adapt``."""
    episode, single = _check(params, episode, config, state)
    steps = _test_steps(steps, config)
    running = door.running(state, door.bn_mode(config.model))
    outputs = door.apply_model(config.model, _adapt(params, episode, config, steps), episode.query_x,
                               running)
    checks.finite_results("maml.predict", [("the outputs", outputs)],
                          _explain(params, episode, config, steps, "apply", running))
    return outputs[0] if single else outputs


def _check(params, episode, config, state=None, step=False):
    """The door: the config, params against the model's template, the State (required by
    ``step``, and by a batch norm in mode "running"), and the episode, returned with a task
    axis (``door.as_meta_batch``) and whether it had none."""
    checks.instance("config", config, MAMLConfig)
    checks.params(params, checks.model_shapes(config.model))
    if episode is not None:                                  # loss, predict, step: their State
        checks.training_state(state, params, door.bn_statistics(config.model), step,
                              bn_mode=door.bn_mode(config.model))
    if episode is not None:
        episode = checks.episode(episode, n_way=config.n_way, max_task_axes=1)
        return door.as_meta_batch(episode, config.n_way)


def _test_steps(steps, config):
    return config.test_inner_steps if steps is None else checks.integer("steps", steps, minimum=0)


def _task_losses(params, x, y, reduction, config):
    """config.model.loss, held to the contract: real floats, one loss per task (T,)."""
    return checks.model_losses("config.model.loss(params, x, y, reduction)",
                               config.model.loss(params, x, y, reduction), anp.shape(x)[0])


def _explain(params, episode, config, steps, final=None, running=None):
    """The failure path: (name, value) of what (1) and ``final`` ("loss" or "apply") compute,
    recomputed in the order they compute it."""
    def quantities():
        theta = trees.broadcast_tasks(params, anp.shape(episode.support_x)[0])
        for j in range(1, steps + 1):
            yield (f"config.model.loss on the support sets at inner step {j}", config.model.loss(
                theta, episode.support_x, episode.support_y, config.inner_reduction))
            theta = inner_update(theta, episode.support_x, episode.support_y, config)
            yield from ((f"the inner update θ − α∇L^S of {name!r} at inner step {j}", theta[name])
                        for name in sorted(theta))
        after = f"on the query sets after {steps} inner step(s)"
        if final == "loss":
            yield (f"config.model.loss {after}",
                   config.model.loss(theta, episode.query_x, episode.query_y, config.query_reduction))
        if final == "apply":
            yield (f"config.model.apply {after}",
                   door.apply_model(config.model, theta, episode.query_x, running))
    return quantities


# ----- the paper's equations (no checks) -----
def inner_update(params, support_x, support_y, config):
    """One inner step (1) for every task: θ_i − α ∇L_i^S(θ_i).

    Args:
        params: tree whose leaves carry the task axis, (T, ...).
        support_x, support_y: (T, n_support, ...).
    """
    total_support_loss = lambda p: anp.sum(_task_losses(p, support_x, support_y,
                                                        config.inner_reduction, config))
    grads = trees.grad(total_support_loss)(params)
    if config.first_order:
        grads = {name: getval(g) for name, g in grads.items()}  # ∇L_i^S held constant
    return {name: optimizers.descend(params[name], grads[name], config.inner_lr)  # θ − α g
            if _adapts(name, config) else params[name] for name in sorted(params)}


def adapt_trajectory(params, support_x, support_y, config, steps=None):
    """[θ^(0), θ^(1), …, θ^(steps)] for every task; steps defaults to config.inner_steps."""
    trajectory = [params]
    for _ in range(config.inner_steps if steps is None else steps):
        trajectory.append(inner_update(trajectory[-1], support_x, support_y, config))
    return trajectory


def looped(loss_fn):
    """Wrap a one-task loss (params, x (n, ...), y, reduction) -> scalar into the per-task
    interface of ``Model.loss`` by a Python loop over the task axis.  Same numbers, no
    vectorisation."""
    def task_losses(params, x, y, reduction):
        return anp.stack([loss_fn(trees.take_task(params, t), x[t], y[t], reduction)
                          for t in range(anp.shape(x)[0])])
    return task_losses


def _loss(params, episode, config, moments=None):
    """(2): the query losses after k inner steps, reduced over tasks; with ``moments``, the
    query pass's batch-norm moments at θ_i^(k) too (bookkeeping, not differentiated)."""
    adapted = _adapt(params, episode, config, config.inner_steps)
    if moments is not None and config.model.batch_norm is not None:
        door.apply_model(config.model, {k: getval(v) for k, v in adapted.items()}, episode.query_x,
                         None, moments)
    task_losses = _task_losses(adapted, episode.query_x, episode.query_y, config.query_reduction,
                               config)                                                   # (T,)
    return door.reduce_tasks(task_losses, config.task_reduction)


def _adapt(params, episode, config, steps):
    """θ_i^(steps) for every task of the meta-batch, from the shared θ, keeping only the current
    θ_i^(j) (differentiated through, autograd keeps what its backward pass needs)."""
    task_params = trees.broadcast_tasks(params, anp.shape(episode.support_x)[0])
    for _ in range(steps):
        task_params = inner_update(task_params, episode.support_x, episode.support_y, config)
    return task_params


def _adapts(name, config):
    return config.adapt_bn or not name.startswith("bn")
