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
to the task-batched params is every task's own gradient, so (1) is one ``grad`` call
for the whole meta-batch.  ``looped`` wraps a one-task loss into the same interface
for models that cannot batch.

Checks.  ``init``, ``init_state``, ``loss``, ``meta_gradient``, ``step``, ``adapt``
and ``predict`` check their inputs once (``refmeta.checks``); the equations below
them (``inner_update``, ``adapt_trajectory``, ``task_query_losses``) do not.  The model's
loss is held to its contract where it is called (real floats, one per task), and each
entry point reads once whether its results are finite: if not, it names the first NaN or
inf the model made (a support loss or an inner update at inner step j, the query loss, a
meta-gradient) and, in ``step``, the Adam step, which is not taken.

``adapt`` and ``predict`` keep only the current θ_i^(j), so their memory does not grow with
``steps``; ``adapt_trajectory`` keeps every step, for those who ask for it.
"""

import functools
import itertools
from dataclasses import dataclass, fields
from typing import Optional

import autograd.numpy as anp
from autograd import grad, value_and_grad
from autograd.tracer import getval

from refmeta import checks, contract
from refmeta.nn import losses, models, optimizers, trees

TASK_REDUCTIONS = ("mean", "sum")
REDUCTIONS = ("mean", "sum")
CLASSIFICATION_REDUCTIONS = REDUCTIONS + ("n_way_times_mean",)
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
        checks.choice("task_reduction", self.task_reduction, TASK_REDUCTIONS)
        allowed = REDUCTIONS if self.n_way is None else CLASSIFICATION_REDUCTIONS
        checks.choice("inner_reduction", self.inner_reduction, allowed)
        checks.choice("query_reduction", self.query_reduction, allowed)

    def conventions(self):
        """Every field, as a JSON-able dict (the model by its name); reference cases record it."""
        return dict({f.name: getattr(self, f.name) for f in fields(self)}, model=self.model.name)


# ----- the front door: checks once, then the math below -----
def init(rng, config):
    """θ from ``config.model.init``: a dict of host float64 arrays."""
    checks.generator(rng)
    checks.instance("config", config, MAMLConfig)
    return checks.model_params("config.model.init(rng)", config.model.init(rng))


def init_state(params, config):
    """Adam's state for the outer update (zero moments, step 0)."""
    _check_params(params, config)
    return optimizers.adam_init(params)


def loss(params, episode, config):
    """The meta-objective (2) on a meta-batch (T, n, ...): query losses after ``inner_steps``."""
    episode = _check(params, episode, config)
    value = _loss(params, episode, config)
    _check_finite("maml.loss", (value,), params, episode, config, config.inner_steps, "loss")
    return value


def meta_gradient(params, episode, config):
    """∇_θ of (2): exact (3) through all k steps, or FOMAML's if config.first_order."""
    episode = _check(params, episode, config)
    grads = grad(_loss)(params, episode, config)
    _check_finite("maml.meta_gradient", (grads,), params, episode, config, config.inner_steps,
                  "loss", grads)
    return grads


def step(params, state, episode, config):
    """One meta-training step, Adam on (2) (Algorithm 2, line 10).

    Returns:
        Step(new params, new Adam state, the meta-loss (2) at ``params``); start from
        ``init_state(params, config)``.
    """
    episode = _check(params, episode, config)
    checks.adam_state("state", state, checks.model_shapes(config.model))
    value, grads = value_and_grad(_loss)(params, episode, config)
    _check_finite(f"maml.step (Adam step {state.step + 1}, not taken)", (value, grads), params,
                  episode, config, config.inner_steps, "loss", grads)
    new_params, new_state = optimizers.adam_update(params, grads, state, lr=config.meta_lr,
                                                   check=False)
    return contract.Step(new_params, new_state, value)


def adapt(params, episode, config, *, steps=None):
    """θ_i^(k) for every task (leaves (T, ...)): (1) on the support sets, ``steps`` times
    (default ``config.test_inner_steps``: this is where meta-test adaptation happens)."""
    episode = _check(params, episode, config)
    steps = _test_steps(steps, config)
    adapted = _adapt(params, episode, config, steps)
    _check_finite("maml.adapt", (adapted,), params, episode, config, steps)
    return adapted


def predict(params, episode, config, *, steps=None):
    """f_{θ_i^(k)}(query_x) for every task: the model's outputs after ``adapt``."""
    episode = _check(params, episode, config)
    steps = _test_steps(steps, config)
    outputs = config.model.apply(_adapt(params, episode, config, steps), episode.query_x)
    _check_finite("maml.predict", (outputs,), params, episode, config, steps, "apply")
    return outputs


def _check_params(params, config):
    checks.instance("config", config, MAMLConfig)
    return checks.params(params, checks.model_shapes(config.model))


def _check(params, episode, config):
    _check_params(params, config)
    return checks.episode(episode, n_way=config.n_way, task_axis=True)


def _test_steps(steps, config):
    return config.test_inner_steps if steps is None else checks.integer("steps", steps, minimum=0)


def _check_finite(where, results, params, episode, config, steps, final=None, grads=None):
    """One read: are ``results`` (a tuple) finite?  If not, recompute (1)–(2) and name the first
    NaN or inf: a support loss, an inner update, then ``final`` ("loss" or "apply") on the
    query sets, then ``grads``."""
    if not checks.all_finite(*results):
        named_grads = ((f"the meta-gradient for {name!r}", grads[name])
                       for name in sorted(grads or {}))
        checks.first_non_finite(where, itertools.chain(
            _quantities(params, episode, config, steps, final), named_grads))


def _quantities(params, episode, config, steps, final):
    """(name, value) of what (1) and ``final`` compute, in the order they compute it."""
    theta = trees.broadcast_tasks(params, anp.shape(episode.support_x)[0])
    for j in range(1, steps + 1):
        yield (f"config.model.loss on the support sets at inner step {j}",
               config.model.loss(theta, episode.support_x, episode.support_y, config.inner_reduction))
        theta = inner_update(theta, episode.support_x, episode.support_y, config)
        yield from ((f"the inner update θ − α∇L^S of {name!r} at inner step {j}", theta[name])
                    for name in sorted(theta))
    after = f"on the query sets after {steps} inner step(s)"
    if final == "loss":
        yield (f"config.model.loss {after}",
               config.model.loss(theta, episode.query_x, episode.query_y, config.query_reduction))
    if final == "apply":
        yield f"config.model.apply {after}", config.model.apply(theta, episode.query_x)


# ----- the paper's equations (no checks) -----
def inner_update(params, support_x, support_y, config):
    """One inner step (1) for every task: θ_i − α ∇L_i^S(θ_i).

    Args:
        params: tree whose leaves carry the task axis, (T, ...).
        support_x, support_y: (T, n_support, ...).
    """
    total_support_loss = lambda p: anp.sum(_task_losses(p, support_x, support_y,
                                                        config.inner_reduction, config))
    grads = grad(total_support_loss)(params)
    if config.first_order:
        grads = {name: getval(g) for name, g in grads.items()}  # ∇L_i^S held constant
    return {name: params[name] - config.inner_lr * grads[name] if _adapts(name, config)
            else params[name] for name in sorted(params)}


def adapt_trajectory(params, support_x, support_y, config, steps=None):
    """[θ^(0), θ^(1), …, θ^(steps)] for every task; steps defaults to config.inner_steps."""
    trajectory = [params]
    for _ in range(config.inner_steps if steps is None else steps):
        trajectory.append(inner_update(trajectory[-1], support_x, support_y, config))
    return trajectory


def task_query_losses(params, episode, config, steps=None):
    """L_i^Q(θ_i^(k)) for every task in the meta-batch, shape (T,)."""
    adapted = _adapt(params, episode, config, config.inner_steps if steps is None else steps)
    return _task_losses(adapted, episode.query_x, episode.query_y, config.query_reduction, config)


def looped(loss_fn):
    """Wrap a one-task loss (params, x (n, ...), y, reduction) -> scalar into the per-task
    interface of ``Model.loss`` by a Python loop over the task axis.  Same numbers, no
    vectorisation."""
    def task_losses(params, x, y, reduction):
        return anp.stack([loss_fn(trees.take_task(params, t), x[t], y[t], reduction)
                          for t in range(anp.shape(x)[0])])
    return task_losses


def _loss(params, episode, config):
    """(2): the query losses after k inner steps, reduced over tasks."""
    task_losses = task_query_losses(params, episode, config)
    return anp.mean(task_losses) if config.task_reduction == "mean" else anp.sum(task_losses)


def _adapt(params, episode, config, steps):
    """θ_i^(steps) for every task of the meta-batch, from the shared θ, keeping only the current
    θ_i^(j) (differentiated through, autograd keeps what its backward pass needs)."""
    task_params = trees.broadcast_tasks(params, anp.shape(episode.support_x)[0])
    for _ in range(steps):
        task_params = inner_update(task_params, episode.support_x, episode.support_y, config)
    return task_params


def _task_losses(params, x, y, reduction, config):
    """config.model.loss, held to the contract: real floats, one loss per task (T,)."""
    return checks.model_losses("config.model.loss(params, x, y, reduction)",
                               config.model.loss(params, x, y, reduction), anp.shape(x)[0])


def _adapts(name, config):
    return config.adapt_bn or not name.startswith("bn")
