"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

Paper: Section 3, Algorithm 1 (serial) and Algorithm 2 (batched).

Symbols
    φ (θ)    params             meta-parameters
    ε        meta_step_size     outer step size (the paper anneals it linearly to 0)
    k        inner_steps        inner optimiser steps per task at meta-training
             test_inner_steps   inner optimiser steps at meta-test (``adapt``, ``predict``)
             inner_lr           inner optimiser step size (SGD or Adam)
    L_i      task i's loss on (a mini-batch of) its support set, reduced by ``inner_reduction``
    φ̃_i      the params after k inner steps on task i: φ̃_i = U_i^k(φ)

Serial (Algorithm 1), one task at a time (``variant="serial"``):

    φ ← φ + ε (φ̃ − φ)                                                        (1)

Batched (Algorithm 2), n tasks adapted from the same φ (``variant="batched"``):

    φ ← φ + ε · (1/n) Σ_i (φ̃_i − φ)        task_reduction = "mean" (the paper)   (2)
    φ ← φ + ε · Σ_i (φ̃_i − φ)              task_reduction = "sum"  (a plain sum)

Identity (Section 5): with k = 1 SGD step, φ̃_i − φ = −α ∇L_i(φ), so Reptile's update
is −ε α ∇L_i(φ): a step of joint training on the task's loss.

Inner loop.  U_i^k is k steps of SGD or of Adam (the paper's Omniglot setup:
Adam with β1 = 0, lr 1e-3, 5 steps on mini-batches of 10; 50 steps at evaluation)
on task i's support set.  Mini-batches are explicit inputs, ``batch_indices``
(T, k, b), so the random draws are part of the data; ``refmeta.data.inner_batches``
draws them the way the authors' code does (shuffle, cut into batches, reshuffle when used
up).  ``batch_indices=None`` takes every step on the whole support set.

Reptile descends no objective of its own.  ``loss`` reports the query loss after k
full-support inner steps, reduced over tasks (``task_reduction``); ``step`` returns the
support loss at the φ it starts from, on the batch of the first inner step, reduced
over tasks: the batched update computes it anyway (its first inner step), the serial
one by one more forward pass.

Conventions (``ReptileConfig.conventions`` records them): every field, and that the
inner optimiser's state starts from zero for every task, where the authors' TensorFlow
code (it restores only the model's variables between tasks) and learn2learn's Reptile
example (it reloads the previous task's optimiser state) carry Adam's moments over.

Tasks are vectorised like MAML's: params get a leading task axis and one ``grad`` call
serves every task, since Σ_i L_i couples no two tasks.  One task alone, support_x (n, ...),
is a meta-batch of T = 1 (``batch_indices`` (k, b) then), and ``adapt`` and ``predict`` return
it without the task axis.  The training state is empty, State(None, {}): the update keeps
none, and a model that declares running batch-norm statistics (``contract.Model.batch_norm``)
is refused, as no pass of (1) or (2) is the one to track them from; a batch norm in the model
normalises by the batch at hand, as in the authors' code.  A non-finite result is named as MAML's is, with the task in a serial step.  ``adapt``
and ``predict`` keep only the current φ^(j); ``adapt_trajectory`` keeps all.
"""

from dataclasses import dataclass
from typing import Optional

import autograd.numpy as anp
from autograd import value_and_grad

from refmeta import checks, contract, door
from refmeta.data.inner_batches import mini_batch
from refmeta.nn import optimizers, trees

INNER_OPTIMIZERS = ("sgd", "adam")
VARIANTS = ("batched", "serial")
INNER_OPTIMIZER_STATE = ("reset for every task (the authors' code and learn2learn's example "
                         "carry Adam's moments over from task to task)")


@dataclass(frozen=True)
class ReptileConfig:
    """Hyperparameters and conventions; defaults are the paper's Omniglot setup (Appendix A).

    ``model`` (a ``contract.Model`` with a loss) has no default.  ``n_way`` None: regression;
    an int N: classification, labels in 0..N−1.
    """
    model: contract.Model
    n_way: Optional[int] = None
    inner_lr: float = 1e-3
    inner_steps: int = 5
    test_inner_steps: int = 50
    inner_optimizer: str = "adam"
    adam_b1: float = 0.0
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    inner_reduction: str = "mean"
    meta_step_size: float = 1.0
    task_reduction: str = "mean"
    variant: str = "batched"

    def __post_init__(self):
        checks.plain_fields(self)
        checks.model_with_loss("model", self.model, "Reptile", keeps_statistics=False)
        if self.n_way is not None:
            checks.integer("n_way", self.n_way, minimum=2)
        for name in ("inner_lr", "meta_step_size"):
            checks.nonnegative(name, getattr(self, name))
        for name in ("inner_steps", "test_inner_steps"):
            checks.integer(name, getattr(self, name), minimum=0)
        for name in ("adam_b1", "adam_b2"):
            checks.probability(name, getattr(self, name), high_open=True)
        checks.positive("adam_eps", self.adam_eps)
        checks.choice("inner_optimizer", self.inner_optimizer, INNER_OPTIMIZERS)
        checks.choice("inner_reduction", self.inner_reduction, door.example_reductions(self.n_way))
        checks.choice("task_reduction", self.task_reduction, contract.TASK_REDUCTIONS)
        checks.choice("variant", self.variant, VARIANTS)

    def conventions(self):
        """Every field (the model by its name) plus the inner-state convention, JSON-able."""
        return door.conventions(self, inner_optimizer_state=INNER_OPTIMIZER_STATE)


# ----- the front door: checks once, then the math below -----
def init(rng, config):
    """φ from ``config.model.init``: a dict of host float64 arrays."""
    return door.init_params(rng, config, ReptileConfig)


def init_state(params, config):
    """State(None, {}): the Reptile update keeps no state (a fresh inner optimiser serves every
    task, and no running statistics are kept)."""
    _check(params, None, config)
    return door.init_state(params, optimizer=False)


def loss(params, episode, config, *, state=None):
    """The query loss after ``inner_steps`` inner steps on the whole support set, reduced over
    the query examples by ``inner_reduction`` and over tasks by ``task_reduction``."""
    episode, _, _ = _check(params, episode, config, state)
    adapted = _adapt(params, episode, config, config.inner_steps)
    total = _total_loss(adapted, episode.query_x, episode.query_y, config)
    value = _reduce_total(total, episode, config)
    checks.finite_results("reptile.loss", [("config.model.loss on the query sets", value)],
                          _explain(params, episode, config, config.inner_steps))
    return value


def step(params, state, episode, config, *, batch_indices=None):
    """One Reptile update, (1) serial or (2) batched as ``config.variant`` says: Step(new φ, the
    empty State, the task-reduced support loss at φ on the first inner step's batch)."""
    episode, batch_indices, _ = _check(params, episode, config, state, True, batch_indices,
                                       config.inner_steps)
    update = serial_step if config.variant == "serial" else batched_step
    new_params, start_loss = update(params, episode, config, batch_indices)
    checks.finite_results("reptile.step (not taken)",
                          [("the loss", start_loss), ("the new params", new_params)],
                          _explain(params, episode, config, config.inner_steps, batch_indices,
                                   config.variant == "serial"))
    return contract.Step(new_params, state, start_loss)


def adapt(params, episode, config, *, steps=None, batch_indices=None):
    """φ̃_i for every task (leaves (T, ...)) after ``steps`` inner steps (default
    ``config.test_inner_steps``) on its support set, mini-batched by ``batch_indices``."""
    steps = config.test_inner_steps if steps is None else checks.integer("steps", steps, minimum=0)
    episode, batch_indices, single = _check(params, episode, config, None, False, batch_indices, steps)
    adapted = _adapt(params, episode, config, steps, batch_indices)
    checks.finite_results("reptile.adapt", [("φ̃", adapted)],
                          _explain(params, episode, config, steps, batch_indices))
    return trees.take_task(adapted, 0) if single else adapted


def predict(params, episode, config, *, steps=None, batch_indices=None, state=None):
    """f_{φ̃_i}(query_x) for every task: the model's outputs after ``adapt``."""
    steps = config.test_inner_steps if steps is None else checks.integer("steps", steps, minimum=0)
    episode, batch_indices, single = _check(params, episode, config, state, False, batch_indices, steps)
    outputs = config.model.apply(_adapt(params, episode, config, steps, batch_indices), episode.query_x)
    checks.finite_results("reptile.predict", [("config.model.apply on the query sets", outputs)],
                          _explain(params, episode, config, steps, batch_indices))
    return outputs[0] if single else outputs


def _check(params, episode, config, state=None, step=False, batch_indices=None, steps=0):
    """The door: the config, params against the model's template, the empty State (``step``),
    the episode with a task axis (``door.as_meta_batch``), the mini-batches (T, steps, b);
    returns (episode, batch_indices, whether the episode had no task axis)."""
    checks.instance("config", config, ReptileConfig)
    checks.params(params, checks.model_shapes(config.model))
    if episode is None:
        return None, None, False
    checks.training_state(state, params, {}, step, adam=False)
    episode, single = door.as_meta_batch(checks.episode(episode, n_way=config.n_way, max_task_axes=1),
                                         config.n_way)
    if batch_indices is not None:
        batch_indices = batch_indices[None] if single else batch_indices
        n_tasks, n_support = anp.shape(episode.support_x)[:2]
        checks.indices("batch_indices", batch_indices, n_support, (n_tasks, steps, None))
        checks.integer("the mini-batch size, batch_indices.shape[2]",
                       anp.shape(batch_indices)[2], minimum=1)
    return episode, batch_indices, single


def _explain(params, episode, config, steps, batch_indices=None, serial=False):
    """The failure path: (name, value) of each support loss, gradient and inner update, in the
    order U^steps makes them: every task at once from φ, or (``serial``) task by task from the
    φ the last one left."""
    def quantities(params=params):
        n_tasks = anp.shape(episode.support_x)[0]
        for group in ([slice(t, t + 1) for t in range(n_tasks)] if serial else [slice(None)]):
            of = f" of task {group.start}" if serial else ""
            loss = "config.model.loss on the support set" + (of if serial else "s, Σ_i,")
            indices = None if batch_indices is None else batch_indices[group]
            phi = trees.broadcast_tasks(params, len(range(n_tasks)[group]))
            for j, (total, grads, phi) in enumerate(_inner_steps(
                    phi, episode.support_x[group], episode.support_y[group], config, steps, indices), 1):
                yield f"{loss} at inner step {j}", total
                yield from ((f"its gradient for {name!r} at inner step {j}{of}", grads[name])
                            for name in sorted(grads))
                yield from ((f"the inner update of {name!r} at inner step {j}{of}", phi[name])
                            for name in sorted(phi))
            if serial:
                params = trees.interpolate(params, trees.take_task(phi, 0), config.meta_step_size)
    return quantities


def _total_loss(params, x, y, config):
    """Σ_i L_i of config.model.loss, held to the contract: real floats, one loss per task (T,)."""
    return anp.sum(checks.model_losses("config.model.loss(params, x, y, reduction)",
                                       config.model.loss(params, x, y, config.inner_reduction),
                                       anp.shape(x)[0]))


# ----- the paper's update rules (no checks) -----
def batched_step(params, episode, config, batch_indices=None):
    """Algorithm 2, update (2): adapt every task from φ, then move φ toward the results.
    Returns (new φ, the task-reduced loss at φ of the first inner step's batch)."""
    adapted, start_total = _inner_loop(_per_task(params, episode), episode.support_x,
                                       episode.support_y, config, config.inner_steps, batch_indices)
    differences = {name: adapted[name] - params[name] for name in sorted(params)}  # (T, ...)
    new_params = {name: params[name] + config.meta_step_size * door.reduce_tasks(
        differences[name], config.task_reduction, axis=0) for name in sorted(params)}
    return new_params, _reduce_total(start_total, episode, config)


def serial_step(params, episode, config, batch_indices=None):
    """Algorithm 1, update (1), applied to the meta-batch's tasks one after another.
    Returns (new φ, the task-reduced loss at the starting φ of the first inner step's batch)."""
    x, y = mini_batch(episode.support_x, episode.support_y,
                       batch_indices if config.inner_steps else None, 0)   # the first batch
    start_loss = _reduce_total(_total_loss(_per_task(params, episode), x, y, config), episode, config)
    for t in range(anp.shape(episode.support_x)[0]):
        one = slice(t, t + 1)
        task_indices = None if batch_indices is None else batch_indices[one]
        adapted = _inner_loop(trees.broadcast_tasks(params, 1), episode.support_x[one],
                              episode.support_y[one], config, config.inner_steps, task_indices)[0]
        params = trees.interpolate(params, trees.take_task(adapted, 0), config.meta_step_size)
    return params, start_loss


def adapt_trajectory(params, support_x, support_y, config, steps=None, batch_indices=None):
    """[φ^(0), φ^(1), …, φ^(steps)] (default ``config.inner_steps``) for every task, from
    params with a task axis (T, ...), on support_x, support_y (T, n, ...) mini-batched by
    ``batch_indices`` (T, steps, b) (None: the whole support set at every step)."""
    steps = config.inner_steps if steps is None else steps
    return _inner_loop(params, support_x, support_y, config, steps, batch_indices, keep=True)[0]


def _inner_loop(params, support_x, support_y, config, steps, batch_indices=None, keep=False):
    """U^steps from task-batched params: (φ^(steps), or with ``keep`` [φ^(0), …, φ^(steps)];
    Σ_i L_i(φ^(0)) on the first batch, or on the whole support set if steps = 0)."""
    trajectory, first_total = [params], None
    for total, _, params in _inner_steps(params, support_x, support_y, config, steps, batch_indices):
        if keep:
            trajectory.append(params)
        first_total = total if first_total is None else first_total
    if first_total is None:
        first_total = _total_loss(params, support_x, support_y, config)
    return (trajectory if keep else params), first_total


def _inner_steps(params, support_x, support_y, config, steps, batch_indices=None):
    """U one step at a time: yields (Σ_i L_i(φ^(j)) on step j's batch, its gradient, φ^(j+1)).
    The inner optimiser starts fresh (Adam: m = v = 0) for every call, i.e. for every task."""
    state = optimizers.adam_init(params) if config.inner_optimizer == "adam" else None
    for j in range(steps):
        x, y = mini_batch(support_x, support_y, batch_indices, j)
        total, grads = value_and_grad(_total_loss)(params, x, y, config)
        if config.inner_optimizer == "sgd":
            params = optimizers.sgd_update(params, grads, config.inner_lr, check=False)
        else:
            params, state = optimizers.adam_update(
                params, grads, state, lr=config.inner_lr, b1=config.adam_b1,
                b2=config.adam_b2, eps=config.adam_eps, check=False)
        yield total, grads, params


def _reduce_total(total, episode, config):
    """Σ_i L_i -> the task reduction: Σ_i, or (1/T) Σ_i."""
    return total / anp.shape(episode.support_x)[0] if config.task_reduction == "mean" else total


def _adapt(params, episode, config, steps, batch_indices=None):
    """φ̃_i = U_i^steps(φ) for every task of the meta-batch, from the shared φ."""
    return _inner_loop(_per_task(params, episode), episode.support_x, episode.support_y, config,
                       steps, batch_indices)[0]


def _per_task(params, episode):
    return trees.broadcast_tasks(params, anp.shape(episode.support_x)[0])
