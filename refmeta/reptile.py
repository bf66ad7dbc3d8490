"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

Paper: Section 3, Algorithm 1 (serial) and Algorithm 2 (batched).

Symbols
    φ (θ)    params             meta-parameters
    ε        meta_step_size     outer step size (the paper anneals it linearly to 0)
    k        inner_steps        inner optimiser steps per task
             inner_lr           inner optimiser step size (SGD or Adam)
    φ̃_i      the params after k inner steps on task i: φ̃_i = U_i^k(φ)

Serial (Algorithm 1), one task at a time:

    φ ← φ + ε (φ̃ − φ)                                                        (1)

Batched (Algorithm 2), n tasks adapted from the same φ:

    φ ← φ + ε · (1/n) Σ_i (φ̃_i − φ)        task_reduction = "mean" (the paper)   (2)
    φ ← φ + ε · Σ_i (φ̃_i − φ)              task_reduction = "sum"  (the seed text)

Identity (Section 5): with k = 1 SGD step, φ̃_i − φ = −α ∇L_i(φ), so Reptile's update
is −ε α ∇L_i(φ): a step of joint training on the task's loss.

Inner loop.  U_i^k is k steps of SGD or of Adam (the paper's Omniglot setup:
Adam with β1 = 0, lr 1e-3, 5 steps on mini-batches of 10) on task i's support set.
Mini-batches are explicit inputs, ``batch_indices`` (T, k, b), so the random
draws are part of the data; ``sample_inner_batches`` draws them the way the
authors' code does (shuffle, cut into batches, reshuffle when used up).
``batch_indices=None`` takes every step on the whole support set.

Conventions recorded by ``ReptileConfig.conventions``: task_reduction,
inner_reduction (over the examples of a mini-batch), the inner optimiser and its
settings, and that the inner optimiser's state starts from zero for every task
(the authors' TensorFlow code restores only the model's variables between tasks,
so its Adam moments carry over; refmeta resets them).

Tasks are vectorised like MAML's: params get a leading task axis and one
``grad`` call serves every task, since Σ_i L_i couples no two tasks.
"""

from dataclasses import asdict, dataclass
import math

import autograd.numpy as anp
import numpy as np
from autograd import grad

from refmeta.nn import optimizers, trees

INNER_OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class ReptileConfig:
    """Hyperparameters and conventions; defaults are the paper's Omniglot setup."""
    inner_lr: float = 1e-3
    inner_steps: int = 5
    inner_optimizer: str = "adam"
    adam_b1: float = 0.0
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    inner_reduction: str = "mean"
    meta_step_size: float = 1.0
    task_reduction: str = "mean"

    def __post_init__(self):
        for name in ("inner_lr", "adam_b1", "adam_b2", "adam_eps", "meta_step_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number; got {value!r}")
        if isinstance(self.inner_steps, bool) or not isinstance(self.inner_steps, int) or self.inner_steps < 0:
            raise ValueError(f"inner_steps must be an integer >= 0; got {self.inner_steps!r}")
        for name, allowed in (("inner_optimizer", INNER_OPTIMIZERS), ("task_reduction", ("mean", "sum")),
                              ("inner_reduction", ("mean", "sum", "n_way_times_mean"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}; got {getattr(self, name)!r}")

    def conventions(self):
        """Every field plus the fixed inner-state convention, JSON-able."""
        return dict(asdict(self), inner_optimizer_state="reset for every task")


def adapt(params, support_x, support_y, loss_fn, config, batch_indices=None):
    """φ̃_i = U_i^k(φ) for every task: k inner optimiser steps from the given params.

    Args:
        params: tree whose leaves carry the task axis, (T, ...).
        support_x, support_y: (T, n, ...).
        loss_fn: (params, x, y, reduction) -> per-task losses (T,).
        batch_indices: (T, k, b) integer indices into the n support examples, or None.
    Returns:
        the list [φ^(0), φ^(1), …, φ^(k)] of task-batched params.
    """
    _check_batches(batch_indices, support_x, config)
    state = optimizers.adam_init(params) if config.inner_optimizer == "adam" else None
    trajectory = [params]
    for step in range(config.inner_steps):
        x, y = _mini_batch(support_x, support_y, batch_indices, step)
        total_loss = lambda p: anp.sum(loss_fn(p, x, y, config.inner_reduction))
        grads = grad(total_loss)(trajectory[-1])
        if config.inner_optimizer == "sgd":
            new_params = optimizers.sgd_update(trajectory[-1], grads, config.inner_lr)
        else:
            new_params, state = optimizers.adam_update(
                trajectory[-1], grads, state, lr=config.inner_lr,
                b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)
        trajectory.append(new_params)
    return trajectory


def batched_step(params, episode, loss_fn, config, batch_indices=None):
    """Algorithm 2, update (2): adapt every task from φ, then move φ toward the results."""
    n_tasks = anp.shape(episode.support_x)[0]
    adapted = adapt(trees.broadcast_tasks(params, n_tasks), episode.support_x,
                    episode.support_y, loss_fn, config, batch_indices)[-1]
    differences = {name: adapted[name] - params[name] for name in sorted(params)}  # (T, ...)
    reduce = anp.mean if config.task_reduction == "mean" else anp.sum
    return {name: params[name] + config.meta_step_size * reduce(differences[name], axis=0)
            for name in sorted(params)}


def serial_step(params, episode, loss_fn, config, batch_indices=None):
    """Algorithm 1, update (1), applied to the meta-batch's tasks one after another."""
    for t in range(anp.shape(episode.support_x)[0]):
        one = slice(t, t + 1)
        task_indices = None if batch_indices is None else batch_indices[one]
        adapted = adapt(trees.broadcast_tasks(params, 1), episode.support_x[one],
                        episode.support_y[one], loss_fn, config, task_indices)[-1]
        params = trees.interpolate(params, trees.take_task(adapted, 0), config.meta_step_size)
    return params


def sample_inner_batches(rng, n_tasks, n_examples, inner_steps, batch_size):
    """(n_tasks, inner_steps, batch_size) host indices, as the authors' code draws them.

    Each task's examples are shuffled and cut into consecutive batches; when a
    batch would run past the end, the examples are reshuffled and cutting restarts.
    """
    if not 1 <= batch_size <= n_examples:
        raise ValueError(f"batch_size must be in 1..n_examples ({n_examples}); got {batch_size}")
    out = np.empty((n_tasks, inner_steps, batch_size), dtype=np.int64)
    for t in range(n_tasks):
        order, start = rng.permutation(n_examples), 0
        for step in range(inner_steps):
            if start + batch_size > n_examples:
                order, start = rng.permutation(n_examples), 0
            out[t, step] = order[start:start + batch_size]
            start += batch_size
    return out


def _mini_batch(x, y, batch_indices, step):
    if batch_indices is None:
        return x, y
    tasks = np.arange(anp.shape(x)[0], like=batch_indices)[:, None]  # (T, 1)
    rows = batch_indices[:, step]                                     # (T, b)
    return x[tasks, rows], y[tasks, rows]


def _check_batches(batch_indices, support_x, config):
    if batch_indices is None:
        return
    expected = (anp.shape(support_x)[0], config.inner_steps)
    shape = anp.shape(batch_indices)
    if len(shape) != 3 or shape[:2] != expected:
        raise ValueError(f"batch_indices must have shape (T, inner_steps, batch) = {expected + ('b',)}; "
                         f"got {shape}")
    if not np.issubdtype(batch_indices.dtype, np.integer):
        raise TypeError(f"batch_indices must be integers; got {batch_indices.dtype}")
    n = anp.shape(support_x)[1]
    if int(batch_indices.min()) < 0 or int(batch_indices.max()) >= n:
        raise ValueError(f"batch_indices must lie in 0..{n - 1}; got {int(batch_indices.min())}"
                         f"..{int(batch_indices.max())}")
