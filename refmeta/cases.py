"""Reference cases: refmeta's numbers on fixed inputs, written down for other implementations.

A case is a pair of files, ``<id>.json`` (what to compute) and ``<id>.npz`` (the numbers);
docs/reference-cases.md is the full description of the format.  ``refmeta cases export DIR``
writes them, ``refmeta verify CASE.json THEIRS.npz`` (``refmeta.verify``) checks another
implementation's outputs against them.

The registry.  ``CASES`` maps a case id to a *builder*: a function of no arguments
(bind settings with ``functools.partial``) that returns a dict with exactly these keys:

    algorithm        str, e.g. "MAML"
    description      str, one paragraph
    seed             int: every random draw comes from numpy.random.default_rng(seed)
    model            JSON-able description complete enough to rebuild the network
                     (``layers.mlp_describe`` / ``layers.conv4_describe``)
    loss             JSON-able: the per-example loss and what its labels/targets are
    conventions      JSON-able: every convention REFERENCE-NOTES lists; the ones that do not
                     apply say "not applicable: <why>" rather than being left out
    hyperparameters  JSON-able: step sizes, step counts, sizes
    procedure        list of str: the computation, step by step, in terms of the array names
    inputs           {name: Array(value, meaning)}: params, data and the random draws made
    outputs          {name: Array(value, meaning, rtol=None, atol=None)}: what to reproduce

Array names use "/" to group (``params/conv0.w``, ``meta_gradient/conv0.w``).  Values are host
numpy arrays; integer arrays (labels, indices) are stored as float64 holding exact integers
and marked ``integer_valued``.  Tolerances left at None get ``default_tolerance``.  A builder
must be deterministic: two calls give the same bits (tests/test_cases.py checks every case).
Adding a case is one more entry in ``CASES``.
"""

import functools
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from typing import NamedTuple

import numpy as np
from autograd import value_and_grad

import refmeta
from refmeta import (layers, losses, maml, matching, metanet, metanet_parts, optimizers, protonet,
                     reptile, snail, tasks, trees)

FORMAT = "refmeta.case/1"
BUILDER_KEYS = ("algorithm", "description", "seed", "model", "loss", "conventions",
                "hyperparameters", "procedure", "inputs", "outputs")
# REFERENCE-NOTES' list of conventions every case records (a value, or "not applicable: why")
REQUIRED_CONVENTIONS = ("task_reduction", "inner_reduction", "query_reduction", "inner_steps",
                        "test_inner_steps", "first_order", "batch_norm", "adapt_bn", "sinusoid",
                        "rotations", "distance", "inner_optimizer_state")
RTOL = 1e-10          # see default_tolerance and docs/reference-cases.md, "Tolerances"
ATOL_FACTOR = 1e-10
NOT_APPLICABLE = "not applicable: "


class Array(NamedTuple):
    """One input or output of a case: a host array and what it means."""
    value: object
    meaning: str
    rtol: float = None
    atol: float = None


def default_tolerance(scale):
    """(rtol, atol) = (1e-10, 1e-10 · scale rounded up to a power of ten).

    ``scale`` is the largest |value| in the output's group: every output whose name shares the
    part before the first "/" (all of ``meta_gradient/...``), or the output alone.  An element
    passes when |theirs − reference| ≤ atol + rtol·|reference|.  atol covers entries that are
    small because terms cancelled (a conv bias before batch norm has a meta-gradient of pure
    rounding noise): their rounding error scales with the terms, i.e. with the group's
    magnitude, not with the entry's.
    """
    if not scale > 0.0:
        return RTOL, ATOL_FACTOR
    return RTOL, 10.0 ** math.ceil(math.log10(ATOL_FACTOR * scale))


# ----- shared pieces of the builders -----
def _tree_arrays(prefix, tree, meaning):
    """{prefix/name: Array} for every leaf of a params tree."""
    return {f"{prefix}/{name}": Array(np.asarray(tree[name]), meaning) for name in sorted(tree)}


def _sinusoid_data(rng, family, n_tasks, n_points):
    """Host (amplitude (T,), phase (T,), [x (T, n, 1), y (T, n, 1)] per entry of n_points)."""
    amplitude, phase = tasks.sample_sinusoid_tasks(rng, family, n_tasks)
    arrays = []
    for n in n_points:
        x = rng.uniform(*family.x_range, size=(n_tasks, n, 1))
        arrays.append((x, tasks.sinusoid(x, amplitude[:, None, None], phase[:, None, None],
                                         family.phase_sign)))
    return amplitude, phase, arrays


def _sinusoid_conventions(family):
    return {"sinusoid": family.describe(),
            "batch_norm": NOT_APPLICABLE + "the MLP has no batch norm",
            "rotations": NOT_APPLICABLE + "regression, no images",
            "distance": NOT_APPLICABLE + "no metric-based classifier"}


MSE_LOSS = {"type": "mse", "per_example": "mean over the output dimension of (prediction − y)^2",
            "reduction_over_examples": "see conventions"}
CE_LOSS = {"type": "cross_entropy", "per_example": "−log softmax(logits)[label]",
           "labels": "integers 0..n_way−1 stored as float64 (support_y, query_y)",
           "reduction_over_examples": "see conventions; n_way_times_mean = n_way × mean"}
ADAM_META = {"meta_optimizer": "adam", "adam_b1": 0.9, "adam_b2": 0.999, "adam_eps": 1e-8,
             "adam_state": "fresh: zero moments, step 1 is the first"}

MAML_PROCEDURE = [
    "For each task t: θ_t^(0) = params (every params/<name>).",
    "For j = 0..inner_steps−1: support_loss[t, j] = L(θ_t^(j); support_x[t], support_y[t]) "
    "reduced over examples by conventions.inner_reduction; θ_t^(j+1) = θ_t^(j) − inner_lr · "
    "∇L, for every parameter except those whose name starts with 'bn' when "
    "conventions.adapt_bn is false (they stay θ_t^(0)); adapted_step{j+1}/<name>[t] = θ_t^(j+1).",
    "query_loss[t] = L(θ_t^(inner_steps); query_x[t], query_y[t]) reduced by "
    "conventions.query_reduction.",
    "meta_loss = mean over t of query_loss (conventions.task_reduction; 'sum' would be the sum).",
    "meta_gradient/<name> = ∂ meta_loss / ∂ params/<name>, differentiating through every inner "
    "step (second order) or, if conventions.first_order, with every inner gradient ∇L held "
    "constant (so each step's Jacobian is the identity).",
    "updated/<name> = one Adam step from a fresh state: g = meta_gradient, m = (1−b1) g, "
    "v = (1−b2) g², updated = params − meta_lr · (m / (1−b1)) / (sqrt(v / (1−b2)) + eps).",
]


def maml_outputs(params, episode, loss_fn, config):
    """Every MAML output of a case, as {name: Array}, from host params and a host Episode."""
    n_tasks = episode.support_x.shape[0]
    trajectory = maml.adapt_trajectory(trees.broadcast_tasks(params, n_tasks), episode.support_x,
                                       episode.support_y, loss_fn, config)
    support = [loss_fn(trajectory[j], episode.support_x, episode.support_y, config.inner_reduction)
               for j in range(config.inner_steps)]
    query = loss_fn(trajectory[-1], episode.query_x, episode.query_y, config.query_reduction)
    meta_loss, meta_gradient = value_and_grad(maml.meta_loss)(params, episode, loss_fn, config)
    updated, _ = optimizers.adam_update(params, meta_gradient, optimizers.adam_init(params),
                                        lr=config.meta_lr, b1=0.9, b2=0.999, eps=1e-8)
    outputs = {"support_loss": Array(np.stack(support, axis=1), "(T, inner_steps): support "
                                     "loss of task t before inner step j"),
               "query_loss": Array(np.asarray(query), "(T,): query loss after the inner steps"),
               "meta_loss": Array(np.asarray(meta_loss), "(): query losses reduced over tasks")}
    for j in range(1, config.inner_steps + 1):
        outputs.update(_tree_arrays(f"adapted_step{j}", trajectory[j],
                                    f"(T, ...): every task's params after inner step {j}"))
    outputs.update(_tree_arrays("meta_gradient", meta_gradient, "∂ meta_loss / ∂ params"))
    gradient_atol = default_tolerance(_group_scales(outputs)["meta_gradient"])[1]
    updated_atol = default_tolerance(max(np.max(np.abs(u)) for u in updated.values()))[1]
    for name in sorted(updated):
        atol = max(updated_atol, _adam_step_atol(meta_gradient[name], gradient_atol, config.meta_lr))
        outputs[f"updated/{name}"] = Array(np.asarray(updated[name]),
                                           "params after one Adam meta-step", atol=atol)
    return outputs


def _adam_step_atol(gradient, gradient_atol, lr, eps=1e-8):
    """The meta-gradient's atol carried through Adam's first step u = θ − lr·g / (|g| + eps).

    ∂u/∂g = lr·eps / (|g| + eps)² is largest (lr/eps = 1e5) where |g| is smallest: a gradient
    at rounding level (a conv bias ahead of batch norm, exactly 0 in exact arithmetic) makes
    its updated value rounding noise times 1e5.  Exact zeros (a ReLU unit dead on every
    example) are left out: they are 0 in any implementation.  Rounded up to a power of ten.
    """
    nonzero = np.abs(gradient)[np.asarray(gradient) != 0]   # exact zeros (dead ReLUs) stay 0
    if nonzero.size == 0:
        return 0.0
    slope = lr * eps / (float(np.min(nonzero)) + eps) ** 2
    return 10.0 ** math.ceil(math.log10(slope * gradient_atol))


def _maml_case(description, seed, model, loss, config, extra_conventions, hyperparameters, inputs,
               params, episode, loss_fn):
    conventions = dict(config.conventions(), **extra_conventions,
                       test_inner_steps_note="not used: this case takes no test-time steps",
                       inner_optimizer_state=NOT_APPLICABLE + "the inner loop is plain gradient "
                       "descent, which has no state")
    return {"algorithm": "MAML", "description": description, "seed": seed, "model": model,
            "loss": loss, "conventions": conventions,
            "hyperparameters": dict(hyperparameters, inner_lr=config.inner_lr,
                                    inner_steps=config.inner_steps, meta_lr=config.meta_lr,
                                    **ADAM_META),
            "procedure": MAML_PROCEDURE, "inputs": inputs,
            "outputs": maml_outputs(params, episode, loss_fn, config)}


# ----- the builders -----
def maml_sinusoid_case(inner_steps, first_order, seed=0, n_tasks=5, n_support=10, n_query=10):
    """MAML on the paper's sinusoid setup (MLP 1-40-40-1, ReLU, MSE, α = 0.01)."""
    rng, family, sizes = np.random.default_rng(seed), tasks.SinusoidFamily(), (1, 40, 40, 1)
    params = layers.mlp_init(rng, sizes)
    amplitude, phase, [(support_x, support_y), (query_x, query_y)] = _sinusoid_data(
        rng, family, n_tasks, (n_support, n_query))
    config = maml.MAMLConfig(inner_lr=0.01, inner_steps=inner_steps, first_order=first_order)
    inputs = dict(_tree_arrays("params", params, "the meta-parameters θ"),
                  support_x=Array(support_x, "(T, K, 1) support inputs x ~ U[x_range]"),
                  support_y=Array(support_y, "(T, K, 1) support targets A·sin(x − φ)"),
                  query_x=Array(query_x, "(T, n_query, 1) query inputs"),
                  query_y=Array(query_y, "(T, n_query, 1) query targets"),
                  amplitude=Array(amplitude, "(T,) task amplitudes A (already in the targets)"),
                  phase=Array(phase, "(T,) task phases φ (already in the targets)"))
    order = "first" if first_order else "second"
    return _maml_case(
        f"{order}-order MAML, {inner_steps} inner step{'s' * (inner_steps != 1)}, on {n_tasks} "
        "sinusoid tasks "
        f"(K = {n_support} support, {n_query} query points each): losses, adapted params, "
        "meta-gradient and one Adam meta-step.", seed, layers.mlp_describe(sizes), MSE_LOSS, config,
        _sinusoid_conventions(family),
        {"n_tasks": n_tasks, "n_support": n_support, "n_query": n_query}, inputs, params,
        tasks.Episode(support_x, support_y, query_x, query_y),
        losses.model_loss(layers.mlp_apply, losses.mse))


def maml_conv4_case(first_order, seed=0, n_tasks=2, n_way=5, k_shot=1, n_query=2, hidden=8,
                    image_size=28, inner_steps=2):
    """MAML's Omniglot network (stride-2 conv4, transductive BN with offset only), small."""
    rng = np.random.default_rng(seed)
    params = layers.conv4_init(rng, 1, n_way, hidden, "stride", "offset", image_size)
    params = dict(params, **{f"bn{i}.offset": rng.uniform(-0.1, 0.1, hidden) for i in range(4)})
    shape = (n_tasks, n_way, 1, 1, image_size, image_size)
    prototypes = rng.uniform(0.0, 1.0, shape)                 # one random "character" per class
    support_x = (prototypes + 0.1 * rng.standard_normal((n_tasks, n_way, k_shot) + shape[3:]))
    query_x = (prototypes + 0.1 * rng.standard_normal((n_tasks, n_way, n_query) + shape[3:]))
    support_x = support_x.reshape((n_tasks, n_way * k_shot) + shape[3:])
    query_x = query_x.reshape((n_tasks, n_way * n_query) + shape[3:])
    support_y = np.repeat(np.arange(n_way), k_shot)[None].repeat(n_tasks, axis=0)
    query_y = np.repeat(np.arange(n_way), n_query)[None].repeat(n_tasks, axis=0)
    order = np.stack([rng.permutation(n_way * n_query) for _ in range(n_tasks)])  # shuffle queries
    query_x, query_y = np.take_along_axis(query_x, order[:, :, None, None, None], 1), \
        np.take_along_axis(query_y, order, 1)
    config = maml.MAMLConfig(inner_lr=0.4, inner_steps=inner_steps, first_order=first_order,
                             inner_reduction="n_way_times_mean")
    inputs = dict(_tree_arrays("params", params, "the meta-parameters θ (bn offsets drawn "
                                                 "U(±0.1) so that they matter)"),
                  support_x=Array(support_x, "(T, N·K, 1, H, W) support images"),
                  support_y=Array(support_y, "(T, N·K) support labels 0..N−1"),
                  query_x=Array(query_x, "(T, N·n_query, 1, H, W) query images"),
                  query_y=Array(query_y, "(T, N·n_query) query labels 0..N−1"))
    model = layers.conv4_describe(1, n_way, hidden, "stride", "offset", "transductive", 1e-3,
                                  image_size)
    conventions = {"batch_norm": "transductive: the statistics of the batch at hand (support "
                                 "or query, per task), in every pass; offset only, eps 1e-3",
                   "sinusoid": NOT_APPLICABLE + "classification",
                   "rotations": NOT_APPLICABLE + "synthetic images, no rotation classes",
                   "distance": NOT_APPLICABLE + "no metric-based classifier"}
    loss_fn = losses.model_loss(lambda p, x: layers.conv4_apply(p, x, variant="stride"),
                                losses.cross_entropy)
    mode = "first" if first_order else "second"
    return _maml_case(
        f"{mode}-order MAML, {inner_steps} inner steps, on {n_tasks} synthetic {n_way}-way "
        f"{k_shot}-shot tasks with MAML's Omniglot conv net (stride 2, transductive batch norm, "
        f"{hidden} filters, {image_size}×{image_size} images).", seed, model, CE_LOSS, config,
        conventions, {"n_tasks": n_tasks, "n_way": n_way, "k_shot": k_shot, "n_query": n_query},
        inputs, params, tasks.Episode(support_x, support_y, query_x, query_y), loss_fn)


REPTILE_PROCEDURE = [
    "Inner loop of task t from φ: Adam (conventions.adam_b1/b2/eps, inner_lr) on the support "
    "mini-batches; at step j (0-based) the batch is support_x[t, batch_indices[t, j]], "
    "support_y[t, batch_indices[t, j]]; inner_loss[t, j] is its loss (reduced over the batch by "
    "conventions.inner_reduction) at the params before the step. Adam starts fresh for every "
    "task: m = v = 0, step count 1 "
    "at the first step; m ← b1 m + (1−b1) g, v ← b2 v + (1−b2) g², "
    "θ ← θ − inner_lr · (m / (1−b1^step)) / (sqrt(v / (1−b2^step)) + eps).",
    "adapted_step{j}/<name>[t] = task t's params after j inner steps (j = 1..inner_steps).",
]
REPTILE_MODES = {
    "serial": "Algorithm 1 over the tasks in order: φ_0 = params; task t adapts from φ_t "
              "(task_start/<name>[t] = φ_t) to φ̃_t; φ_{t+1} = φ_t + meta_step_size · (φ̃_t − φ_t); "
              "updated = φ_T.",
    "batched": "Algorithm 2: every task adapts from params to φ̃_t; updated = params + "
               "meta_step_size · mean_t (φ̃_t − params) (conventions.task_reduction).",
}


def reptile_sinusoid_case(mode, seed=0, n_tasks=3, n_support=20, inner_steps=5, batch_size=8):
    """Reptile (serial or batched) with an inner Adam on Reptile's sine (x + b, b ∈ [0, 2π])."""
    rng, sizes = np.random.default_rng(seed), (1, 40, 40, 1)
    family = tasks.SinusoidFamily(phase_range=(0.0, 2 * math.pi), phase_sign=1)
    params = layers.mlp_init(rng, sizes)
    amplitude, phase, [(support_x, support_y)] = _sinusoid_data(rng, family, n_tasks, (n_support,))
    batch_indices = reptile.sample_inner_batches(rng, n_tasks, n_support, inner_steps, batch_size)
    config = reptile.ReptileConfig(inner_lr=0.01, inner_steps=inner_steps, inner_optimizer="adam",
                                   adam_b1=0.0, meta_step_size=0.5)
    loss_fn = losses.model_loss(lambda p, x: layers.mlp_apply(p, x, activation="tanh"), losses.mse)
    starts, adapted, inner_losses, phi = [], [], [], params
    for t in range(n_tasks):
        start = phi if mode == "serial" else params
        x, y, idx = support_x[t:t + 1], support_y[t:t + 1], batch_indices[t:t + 1]
        trajectory = reptile.adapt(trees.broadcast_tasks(start, 1), x, y, loss_fn, config, idx)
        inner_losses.append([loss_fn(trajectory[j], x[:, idx[0, j]], y[:, idx[0, j]], "mean")[0]
                             for j in range(inner_steps)])
        starts.append(start)
        adapted.append([trees.take_task(p, 0) for p in trajectory[1:]])
        phi = trees.interpolate(start, adapted[-1][-1], config.meta_step_size)
    step = reptile.serial_step if mode == "serial" else reptile.batched_step
    updated = step(params, tasks.Episode(support_x, support_y, support_x, support_y), loss_fn,
                   config, batch_indices)
    stack = lambda trees_: {k: np.stack([tree[k] for tree in trees_]) for k in sorted(params)}
    outputs = {"inner_loss": Array(np.array(inner_losses), "(T, inner_steps): mini-batch loss "
                                                            "of task t before inner step j")}
    if mode == "serial":
        outputs.update(_tree_arrays("task_start", stack(starts), "(T, ...): φ_t, the params "
                                                                 "task t starts from"))
    for j in range(inner_steps):
        outputs.update(_tree_arrays(f"adapted_step{j + 1}", stack([a[j] for a in adapted]),
                                    f"(T, ...): every task's params after inner step {j + 1}"))
    outputs.update(_tree_arrays("updated", updated, "params after the Reptile update"))
    inputs = dict(_tree_arrays("params", params, "the meta-parameters φ"),
                  support_x=Array(support_x, "(T, n, 1) inputs x ~ U[x_range]"),
                  support_y=Array(support_y, "(T, n, 1) targets A·sin(x + b)"),
                  batch_indices=Array(batch_indices, "(T, inner_steps, batch) rows of support_x "
                                                     "in each inner mini-batch"),
                  amplitude=Array(amplitude, "(T,) task amplitudes A (already in the targets)"),
                  phase=Array(phase, "(T,) task phases b (already in the targets)"))
    return {"algorithm": "Reptile", "seed": seed, "model": layers.mlp_describe(sizes, "tanh"),
            "description": f"{mode} Reptile on {n_tasks} sine tasks, {inner_steps} inner Adam "
                           f"steps on mini-batches of {batch_size} of {n_support} points.",
            "loss": MSE_LOSS, "procedure": REPTILE_PROCEDURE + [REPTILE_MODES[mode]],
            "conventions": dict(config.conventions(), reptile_mode=mode,
                                first_order=NOT_APPLICABLE + "Reptile takes no meta-gradient",
                                query_reduction=NOT_APPLICABLE + "Reptile has no query loss",
                                test_inner_steps=NOT_APPLICABLE + "no test-time adaptation here",
                                adapt_bn=NOT_APPLICABLE + "the MLP has no batch norm",
                                **_sinusoid_conventions(family)),
            "hyperparameters": {"inner_lr": config.inner_lr, "inner_steps": inner_steps,
                                "meta_step_size": config.meta_step_size, "n_tasks": n_tasks,
                                "n_support": n_support, "batch_size": batch_size},
            "inputs": inputs, "outputs": outputs}


# ----- metric-based learners: Prototypical Networks and Matching Networks -----
METRIC_CONVENTIONS = {
    "task_reduction": NOT_APPLICABLE + "one task",
    "inner_reduction": NOT_APPLICABLE + "no inner loop",
    "query_reduction": "mean over the query points",
    "inner_steps": NOT_APPLICABLE + "no inner loop", "test_inner_steps": NOT_APPLICABLE + "no inner loop",
    "first_order": NOT_APPLICABLE + "no inner loop", "adapt_bn": NOT_APPLICABLE + "no inner loop",
    "inner_optimizer_state": NOT_APPLICABLE + "no inner loop",
    "batch_norm": "transductive: support and query go through the net in one call (support first), "
                  "so the statistics are over all N·K + n_query images; offset and scale, eps 1e-5",
    "sinusoid": NOT_APPLICABLE + "classification",
    "rotations": NOT_APPLICABLE + "synthetic images, no rotation classes"}
METRIC_EMBED_PROCEDURE = [
    "z = conv4(params, concatenate(support_x, query_x)) in one call (max-pool variant, "
    "transductive batch norm over all the images); embeddings/support = z[:N·K], "
    "embeddings/query = z[N·K:].  Matching Networks: the net's params are params/embed.<name>."]
METRIC_UPDATE_PROCEDURE = [
    "gradient/<name> = ∂ loss / ∂ params/<name>.",
    "updated/<name> = params/<name> − lr · gradient/<name>: one plain gradient step.  (Adam's first "
    "step, lr·g/(|g| + eps), would turn the rounding noise in the gradients that are exactly 0 in "
    "exact arithmetic, such as a conv bias ahead of batch norm, into differences of up to lr/eps = "
    "1e5 times that noise.)"]


def _metric_episode(rng, n_way, k_shot, n_query, image_size):
    """Host (support_x (N·K, 1, s, s), support_y, query_x (N·n_query, ...), query_y): one random
    "character" per class plus noise; the queries are shuffled."""
    characters = rng.uniform(0.0, 1.0, (n_way, 1, 1, image_size, image_size))
    draw = lambda n: (characters + 0.1 * rng.standard_normal((n_way, n, 1, image_size, image_size))
                      ).reshape((n_way * n, 1, image_size, image_size))
    support_x, query_x = draw(k_shot), draw(n_query)
    order = rng.permutation(n_way * n_query)
    return (support_x, np.repeat(np.arange(n_way), k_shot), query_x[order],
            np.repeat(np.arange(n_way), n_query)[order])


def _metric_case(algorithm, description, seed, model, conventions, hyperparameters, procedure,
                 params, episode, loss_fn, outputs):
    """The shared tail: inputs, loss, gradient and one gradient step (lr 0.01) on every parameter."""
    lr = 0.01
    loss, gradient = value_and_grad(loss_fn)(params)
    updated = optimizers.sgd_update(params, gradient, lr)
    outputs = dict(outputs, loss=Array(np.asarray(loss), "(): mean over queries of −log p(y | x)"))
    outputs.update(_tree_arrays("gradient", gradient, "∂ loss / ∂ params"))
    outputs.update(_tree_arrays("updated", updated, "params after one gradient step of lr"))
    inputs = dict(_tree_arrays("params", params, "the parameters"),
                  support_x=Array(episode.support_x, "(N·K, 1, H, W) support images, class-major"),
                  support_y=Array(episode.support_y, "(N·K,) support labels 0..N−1"),
                  query_x=Array(episode.query_x, "(n_query, 1, H, W) query images, shuffled"),
                  query_y=Array(episode.query_y, "(n_query,) query labels 0..N−1"))
    loss_description = {"type": "negative log-likelihood", "per_example": "−log p(y | x) of the "
                        "true class", "labels": "integers 0..n_way−1 stored as float64"}
    return {"algorithm": algorithm, "description": description, "seed": seed, "model": model,
            "loss": loss_description, "conventions": dict(METRIC_CONVENTIONS, **conventions),
            "hyperparameters": dict(hyperparameters, lr=lr, optimizer="one plain gradient step"),
            "procedure": METRIC_EMBED_PROCEDURE + procedure + METRIC_UPDATE_PROCEDURE,
            "inputs": inputs, "outputs": outputs}


def protonet_case(distance="sqeuclidean", seed=0, n_way=3, k_shot=2, n_query=4, hidden=8, image_size=28):
    """A ProtoNet (conv4 with max-pool) on one fixed tiny episode."""
    rng = np.random.default_rng(seed)
    params = protonet.conv4_embedding_init(rng, hidden=hidden, image_size=image_size)
    params = dict(params, **{f"bn{i}.{k}": v + rng.uniform(-0.1, 0.1, hidden) for i in range(4)
                             for k, v in (("offset", 0.0), ("scale", 1.0))})
    episode = tasks.Episode(*_metric_episode(rng, n_way, k_shot, n_query, image_size))
    config, embed = protonet.ProtoNetConfig(distance=distance), protonet.conv4_embedding()
    z_support, z_query = protonet.embed_episode(params, episode, embed)
    prototypes = protonet.prototypes(z_support, episode.support_y, n_way)
    distances = protonet.pairwise_distance(z_query, prototypes, distance)
    outputs = {"embeddings/support": Array(z_support, "(N·K, d) f(support_x)"),
               "embeddings/query": Array(z_query, "(n_query, d) f(query_x)"),
               "prototypes": Array(prototypes, "(N, d) class means of embeddings/support"),
               "distances": Array(distances, f"(n_query, N) {distance} distance query-prototype"),
               "log_probabilities": Array(protonet.log_probabilities(
                   z_support, episode.support_y, z_query, n_way, distance), "(n_query, N) log p(k | x)")}
    procedure = ["prototypes[k] = mean of embeddings/support over the rows with support_y = k.",
                 f"distances[q, k] = d(embeddings/query[q], prototypes[k]), d = {distance} "
                 "(sqeuclidean ‖a−b‖², euclidean ‖a−b‖, cosine 1 − aᵀb/(‖a‖‖b‖)).",
                 "log_probabilities = log_softmax(−distances) over k.",
                 "loss = mean over q of −log_probabilities[q, query_y[q]]."]
    return _metric_case(
        "Prototypical Networks", f"A ProtoNet ({distance} distance, conv4 with max-pool, {hidden} "
        f"filters, {image_size}×{image_size}) on one synthetic {n_way}-way {k_shot}-shot episode with "
        f"{n_query} queries: embeddings, prototypes, distances, log-probabilities, loss, gradient and "
        "one gradient step.", seed,
        layers.conv4_describe(1, None, hidden, "maxpool", "both", "transductive", 1e-5, image_size),
        config.conventions(), {"n_way": n_way, "k_shot": k_shot, "n_query": n_query},
        procedure, params, episode, lambda p: protonet.episode_loss(p, episode, embed, n_way, config),
        outputs)


def _lstm_layers(name, d, recurrent):
    return [{"type": "dense", "role": f"LSTM {name}: input to gates (i, f, g, o)", "in_features": d,
             "out_features": 4 * d, "weight": f"{name}.w_x", "bias": f"{name}.b",
             "weight_layout": "(in, out): x @ w + b"},
            {"type": "dense", "role": f"LSTM {name}: recurrent input to gates, no bias",
             "in_features": recurrent, "out_features": 4 * d, "weight": f"{name}.w_h", "bias": None,
             "weight_layout": "(in, out): h @ w"},
            {"type": "lstm_gates", "role": f"LSTM {name}", "gate_order": "i, f, g, o",
             "update": "c' = σ(f) c + σ(i) tanh(g); h' = σ(o) tanh(c')"}]


def matching_case(fce, seed=0, n_way=3, k_shot=2, n_query=4, hidden=8, image_size=28, read_steps=3):
    """A Matching Network (conv4 with max-pool as f′ = g′, cosine attention), with or without FCE."""
    rng = np.random.default_rng(seed)
    config = matching.MatchingConfig(fce=fce, read_steps=read_steps)
    params = matching.init(rng, lambda r: protonet.conv4_embedding_init(r, hidden, 1, image_size), hidden,
                           config)
    params = dict(params, **{f"embed.bn{i}.{k}": v + rng.uniform(-0.1, 0.1, hidden) for i in range(4)
                             for k, v in (("offset", 0.0), ("scale", 1.0))})
    episode = tasks.Episode(*_metric_episode(rng, n_way, k_shot, n_query, image_size))
    embed = protonet.conv4_embedding()
    g_prime, f_prime = matching.base_embeddings(params, episode, embed, config)
    g, f = matching.full_context_embeddings(params, g_prime, f_prime, config)
    outputs = {"embeddings/support": Array(g_prime, "(N·K, d) g′(support_x)"),
               "embeddings/query": Array(f_prime, "(n_query, d) f′(query_x)"),
               "attention": Array(matching.attention(f, g), "(n_query, N·K) a(x̂_q, x_i)"),
               "log_probabilities": Array(matching.class_log_probabilities(f, g, episode.support_y, n_way),
                                          "(n_query, N) log p(k | x̂)")}
    net = layers.conv4_describe(1, None, hidden, "maxpool", "both", "transductive", 1e-5, image_size)
    conv_layers = [{k: (f"embed.{v}" if k in ("weight", "bias", "offset", "scale") and v else v)
                    for k, v in layer.items()} for layer in net["layers"]]
    procedure = ["g = g′ = embeddings/support and f = f′ = embeddings/query without FCE."]
    if fce:
        outputs.update({"fce/support": Array(g, "(N·K, d) g(x_i, S) (Appendix A.2)"),
                        "fce/query": Array(f, "(n_query, d) f(x̂, S) (Appendix A.1)")})
        procedure = [
            "fce/support: h⃗_i, c⃗_i = LSTM_fw(g′_i, h⃗_{i−1}, c⃗_{i−1}) for i = 1..N·K in the support "
            "order, h⃗_0 = c⃗_0 = 0; h⃖_i, c⃖_i = LSTM_bw(g′_i, h⃖_{i+1}, c⃖_{i+1}) for i = N·K..1, "
            "starting from 0; g_i = h⃗_i + h⃖_i + g′_i.",
            f"fce/query, per query: h_0 = f′, c_0 = 0; for k = 1..{read_steps}: "
            "r = Σ_i softmax_i(h_{k−1}ᵀ g_i) g_i; ĥ, c_k = LSTM_att(f′, concatenate(h_{k−1}, r), c_{k−1}); "
            f"h_k = ĥ + f′; f = h_{read_steps}.",
            "LSTM(x, h, c): gates = x @ w_x + h @ w_h + b split as (i, f, g, o); "
            "c' = σ(f) c + σ(i) tanh(g); h' = σ(o) tanh(c')."]
        conv_layers += sum((_lstm_layers(f"fce.{name}", hidden, r) for name, r in
                            (("fw", hidden), ("bw", hidden), ("att", 2 * hidden))), [])
    procedure += ["attention[q, i] = softmax_i(cos(f_q, g_i)), cos(a, b) = aᵀb / (‖a‖ ‖b‖).",
                  "log_probabilities[q, k] = log Σ_{i: support_y[i] = k} attention[q, i], computed as "
                  "logsumexp_{i in k} cos(f_q, g_i) − logsumexp_i cos(f_q, g_i).",
                  "loss = mean over q of −log_probabilities[q, query_y[q]]."]
    model = {"model": "matching_network", "embedding": net, "fce": fce, "read_steps": read_steps if fce else None,
             "layers": conv_layers, "dtype": "float64",
             "init": "conv as layers.conv4_init; LSTM w_x, w_h, b ~ U(±1/sqrt(d))"}
    return _metric_case(
        "Matching Networks", f"A Matching Network ({'with FCE, K = ' + str(read_steps) if fce else 'without FCE'}"
        f", cosine attention, conv4 with max-pool shared by f′ and g′, {hidden} filters) on one synthetic "
        f"{n_way}-way {k_shot}-shot episode with {n_query} queries: embeddings, attention, log-probabilities, "
        "loss, gradient and one gradient step.", seed, model,
        config.conventions(), {"n_way": n_way, "k_shot": k_shot, "n_query": n_query, "read_steps": read_steps},
        procedure, params, episode, lambda p: matching.episode_loss(p, episode, embed, n_way, config), outputs)


# ----- Meta Networks -----
METANET_PROCEDURE = [
    "Networks b (params/base.<name>) and u (params/rep.<name>) as model.learner; m and d as model.m, "
    "model.d; pre(g) = (log(max(|g|, e^-p)) / p, clip(e^p g, -1, 1)) per coordinate, p = "
    "conventions.preprocess_p.",
    "meta_info/task/<name>[t] = ∂/∂Q_<name> of the mean cross-entropy of u's slow head "
    "(relu(f Q_fc1) Q_out) on support chunk t (T = representation_chunks chunks of consecutive "
    "support examples), for u's augmented layers (every conv block and fc1).",
    "meta_info/example/<name>[i] = ∂/∂W_<name> of the cross-entropy of b's slow network on support "
    "example i alone, for every layer of b.",
    "task_fast_weights/<name> = d(pre(meta_info/task/<name>[0..T-1])): the LSTM run over t, per coordinate.",
    "memory/<name>[i] = m(pre(meta_info/example/<name>[i])), per coordinate.",
    "support_representations = u(Q, Q*, support_x), query_representations = u(Q, Q*, query_x).",
    "attention[q, i] = r_q·R_i / sqrt(|r_q|² |R_i|² + attention_eps).",
    "read/<name>[q] = Σ_i softmax_i(attention[q])_i memory/<name>[i].",
    "logits[q] = b(W, read[q], query_x[q]) with layer augmentation.",
    "loss = Σ_q −log softmax(logits[q])[query_y[q]] (conventions.query_reduction).",
    "gradient/<name> = ∂ loss / ∂ params/<name>: through the gradients meta_info if "
    "conventions.second_order, else with meta_info held constant.",
    "updated/<name> = params/<name> − 0.01 · gradient/<name>: one plain gradient step (the demo "
    "takes Adam with global-norm clipping)."]


def metanet_case(second_order, seed=0, n_way=3, n_query=4, hidden=3, image_size=8, n_blocks=3, chunks=3):
    """Meta Networks (every layer augmented, as MetaNetFull) on one fixed tiny 1-shot episode."""
    rng = np.random.default_rng(seed)
    config = metanet.MetaNetConfig(second_order=second_order, representation_chunks=chunks)
    params = metanet.init(rng, hidden=hidden, n_blocks=n_blocks, n_way=n_way)
    support_x, support_y, query_x, query_y = _metric_episode(rng, n_way, 1, n_query, image_size)
    episode = tasks.Episode(support_x, support_y, query_x, query_y)
    out = metanet.episode_outputs(params, support_x, support_y, query_x, config)
    loss, gradient = value_and_grad(metanet.episode_loss)(params, episode, config)
    outputs = {**_tree_arrays("meta_info/task", out["meta_info"]["task"], "(T, ...) ∇_Q L_t (3)"),
               **_tree_arrays("meta_info/example", out["meta_info"]["example"], "(N, ...) ∇_W L_i (10)"),
               **_tree_arrays("task_fast_weights", out["task_fast_weights"], "Q* (4)"),
               **_tree_arrays("memory", out["memory"], "(N, ...) M, slot i = W*_i (1)"),
               **_tree_arrays("read", out["read"], "(n_query, ...) softmax(a_q)ᵀ M (8)"),
               "support_representations": Array(out["support_representations"], "(N, F) R (5)"),
               "query_representations": Array(out["query_representations"], "(n_query, F) r_q"),
               "attention": Array(out["attention"], "(n_query, N) cosine a_q (7)"),
               "logits": Array(out["logits"], "(n_query, N) b(W, W*_q, x_q) (11)"),
               "loss": Array(np.asarray(loss), "() L_train")}
    outputs.update(_tree_arrays("gradient", gradient, "∂ loss / ∂ params"))
    outputs.update(_tree_arrays("updated", optimizers.sgd_update(params, gradient, 0.01), "one step of 0.01"))
    base, rep = metanet.learner(params, "base"), metanet.learner(params, "rep")
    model = metanet_parts.describe(1, hidden, n_blocks, n_way, metanet.fast_layers(base, config, True),
                                   metanet.fast_layers(rep, config, False))
    conventions = dict(config.conventions(), first_order=not second_order,
                       batch_norm="none: b and u have no batch norm (the authors' MetaNetFull)",
                       distance="cosine attention over representations, softmax over support examples",
                       rotations=NOT_APPLICABLE + "synthetic images",
                       sinusoid=NOT_APPLICABLE + "classification",
                       **{k: NOT_APPLICABLE + "no inner loop: fast weights are generated, not stepped"
                          for k in ("task_reduction", "inner_reduction", "inner_steps", "test_inner_steps",
                                    "adapt_bn", "inner_optimizer_state")})
    inputs = dict(_tree_arrays("params", params, "θ = {W, Q, Z, G}"),
                  support_x=Array(support_x, "(N, 1, H, W) support images, one per class"),
                  support_y=Array(support_y, "(N,) support labels 0..N−1"),
                  query_x=Array(query_x, "(n_query, 1, H, W) query images, shuffled"),
                  query_y=Array(query_y, "(n_query,) query labels 0..N−1"))
    return {"algorithm": "Meta Networks", "seed": seed, "model": model,
            "description": f"MetaNet ({'second' if second_order else 'first'} order in the meta-information "
                           f"gradients, every layer fast, {n_blocks} conv blocks × {hidden} filters, "
                           f"{image_size}×{image_size}) on one synthetic {n_way}-way 1-shot episode with "
                           f"{n_query} queries: gradients, fast weights, memory, attention read, logits, "
                           "loss, gradient and one gradient step.",
            "loss": {"type": "cross-entropy", "per_example": "−log softmax(logits)[y]",
                     "labels": "integers 0..n_way−1 stored as float64"},
            "conventions": conventions, "procedure": METANET_PROCEDURE,
            "hyperparameters": {"n_way": n_way, "k_shot": 1, "n_query": n_query, "lr": 0.01,
                                "representation_chunks": chunks},
            "inputs": inputs, "outputs": outputs}


# ----- SNAIL -----
SNAIL_PROCEDURE = [
    "z = embed(concatenate(support_x, query_x)): the conv4 layers of model.layers (max-pool variant, "
    "transductive batch norm over all N·K + n_query images), flatten, then the dense layer "
    "embed.out; embeddings/support = z[:N·K], embeddings/query = z[N·K:].",
    "sequences[q] (T = N·K + 1 steps, d + N channels): step t < N·K is [embeddings/support[t], "
    "one_hot(support_y[t], N)], the last step is [embeddings/query[q], 0 … 0] (the label slot zero).",
    "Then model.layers from 'block0' on, per query sequence, time-major (T, C): causal_conv1d "
    "y_t = b + Σ_j x_{t−(k−1−j)·dilation} @ w[j] (x_s = 0 for s < 0; w[k−1] reads step t itself); "
    "a DenseBlock concatenates tanh(filter) ⊙ sigmoid(gate) onto its input; an AttentionBlock "
    "concatenates P @ values onto its input, P = softmax over keys s ≤ t of queries_t · keys_s / "
    "√key_size (entries s > t exactly 0).  blocks/block{j} is the output of block j, "
    "attention/block{j} its P.",
    "logits = blocks/block{last} @ out.w + out.b at every step; log_probabilities = "
    "log_softmax(logits[:, T−1]) (the query step); loss = mean over q of "
    "−log_probabilities[q, query_y[q]]."]


def _snail_layers(config, embedding):
    """model.layers of a SNAIL: the embedding's, then every block's as named primitive layers."""
    layers_ = [{k: (f"embed.{v}" if k in ("weight", "bias", "offset", "scale") and v else v)
                for k, v in layer.items()} for layer in embedding["layers"]]
    layers_.append({"type": "sequence", "channels": config.embedding_dim + config.n_way,
                    "computes": "one sequence per query: N·K support steps [z, one_hot(y)], then "
                                "[z_query, 0]"})
    conv = lambda name, c_in, filters, dilation: {
        "type": "causal_conv1d", "weight": f"{name}.w", "bias": f"{name}.b", "in_channels": c_in,
        "out_channels": filters, "kernel_size": config.kernel_size, "dilation": dilation,
        "weight_layout": "(k, in, out): y_t = b + Σ_j x_{t-(k-1-j)·dilation} @ w[j]; PyTorch "
                         "Conv1d weight = w.permute(2, 1, 0), left padding (k-1)·dilation"}
    channels = snail.channel_plan(config)
    for j, spec in enumerate(config.blocks):
        c_in = channels[j]
        if spec[0] == "attention":
            layers_ += [{"type": "dense", "role": f"block{j} {part}", "in_features": c_in,
                         "out_features": size, "weight": f"block{j}.{part}.w", "bias": f"block{j}.{part}.b",
                         "weight_layout": "(in, out): y = x @ w + b"}
                        for part, size in (("query", spec[1]), ("key", spec[1]), ("value", spec[2]))]
            layers_.append({"type": "causal_attention", "block": f"block{j}", "key_size": spec[1],
                            "value_size": spec[2], "output_channels": channels[j + 1],
                            "computes": "concat(x, softmax_keys(mask(q kᵀ / √key_size)) @ v)"})
            continue
        for i, dilation in enumerate(config.dilations()):
            name = f"block{j}.dense{i}"
            layers_ += [conv(f"{name}.filter", c_in, spec[1], dilation),
                        conv(f"{name}.gate", c_in, spec[1], dilation),
                        {"type": "gated_concat", "block": name, "output_channels": c_in + spec[1],
                         "computes": "concat(x, tanh(filter) ⊙ sigmoid(gate))"}]
            c_in += spec[1]
    layers_.append({"type": "dense", "role": "output, every step", "in_features": channels[-1],
                    "out_features": config.n_way, "weight": "out.w", "bias": "out.b",
                    "weight_layout": "(in, out): y = x @ w + b"})
    return layers_


def snail_case(seed=0, n_way=3, k_shot=1, n_query=2, filters=4, image_size=16):
    """SNAIL (the paper's five-block pattern at small widths) on one fixed tiny episode."""
    rng = np.random.default_rng(seed)
    config = snail.SNAILConfig(n_way=n_way, k_shot=k_shot, embedding_dim=6, embedding_filters=filters,
                               image_size=image_size, blocks=(("attention", 4, 3), ("tc", 3),
                                                              ("attention", 5, 4), ("tc", 3), ("attention", 6, 5)))
    params = snail.init(rng, config)
    params = dict(params, **{f"embed.bn{i}.{k}": v + rng.uniform(-0.1, 0.1, filters) for i in range(4)
                             for k, v in (("offset", 0.0), ("scale", 1.0))})
    support_x, support_y, query_x, query_y = _metric_episode(rng, n_way, k_shot, n_query, image_size)
    order = rng.permutation(n_way * k_shot)                              # the support in random order
    episode = tasks.Episode(support_x[order], support_y[order], query_x, query_y)
    z = snail.embed(params, np.concatenate([episode.support_x, episode.query_x]), config)
    sequences = snail.make_sequences(z[:n_way * k_shot], episode.support_y, z[n_way * k_shot:], config)
    logits, found = snail.apply(params, sequences, config, return_intermediates=True)
    outputs = {"embeddings/support": Array(z[:n_way * k_shot], "(N·K, d) embed(support_x)"),
               "embeddings/query": Array(z[n_way * k_shot:], "(n_query, d) embed(query_x)"),
               "sequences": Array(sequences, "(n_query, T, d + N) the input sequences"),
               "logits": Array(logits, "(n_query, T, N) the output layer at every step"),
               "log_probabilities": Array(losses.log_softmax(logits[:, -1]), "(n_query, N) at the query step")}
    for name, value in found.items():
        group, meaning = (("attention", "(n_query, T, T) P, rows: queries t, columns: keys s")
                          if name.endswith(".probs") else ("blocks", "(n_query, T, C) the block's output"))
        outputs[f"{group}/{name.split('.')[0]}"] = Array(value, meaning)
    embedding = layers.conv4_describe(1, config.embedding_dim, filters, "maxpool", "both", "transductive",
                                      config.bn_eps, image_size)
    model = {"model": "snail", "embedding": embedding, "layers": _snail_layers(config, embedding),
             "input_layout": "images (n, 1, H, W); sequences (n_query, T, C), time-major, channels last",
             "architecture": config.conventions(), "dtype": "float64",
             "init": "conv4 as layers.conv4_init, bn offset/scale perturbed by U(±0.1); causal_conv1d "
                     "w, b ~ U(±1/sqrt(k·in)); dense w, b ~ U(±1/sqrt(in))"}
    conventions = {"query_reduction": "mean over the queries, one sequence each",
                   "batch_norm": "transductive: support and query images through the embedding in one "
                                 "call, statistics over all of them; offset and scale, eps 1e-5",
                   "support_order": "as given in support_x (shuffled once when the case was built)",
                   "dilations": f"{config.dilations()}: 2^i for i = 1 … ⌈log₂T⌉, T = N·K + 1",
                   "distance": NOT_APPLICABLE + "SNAIL compares through learned attention, not a metric"}
    case = _metric_case(
        "SNAIL", f"SNAIL (Mishra et al. 2018) with the paper's block pattern Attn → TC → Attn → TC → Attn "
        f"at small widths, a conv4 max-pool embedding ({filters} filters, {image_size}×{image_size}) and a "
        f"linear map to d = {config.embedding_dim}, on one synthetic {n_way}-way {k_shot}-shot episode with "
        f"{n_query} queries: embeddings, sequences, every block's output, the attention weights, logits, "
        "loss, gradient and one gradient step.", seed, model, conventions,
        {"n_way": n_way, "k_shot": k_shot, "n_query": n_query, "sequence_length": config.sequence_length},
        [], params, episode, lambda p: snail.loss(p, episode, config), outputs)
    case["procedure"] = SNAIL_PROCEDURE + METRIC_UPDATE_PROCEDURE     # replaces the metric embed step
    for name, meaning in (("support_x", "(N·K, 1, H, W) support images, in the sequence's order"),
                          ("support_y", "(N·K,) support labels 0..N−1, in the sequence's order")):
        case["inputs"][name] = Array(case["inputs"][name].value, meaning)
    return case


CASES = {
    "maml-sinusoid-k1-second-order": functools.partial(maml_sinusoid_case, 1, False),
    "maml-sinusoid-k1-first-order": functools.partial(maml_sinusoid_case, 1, True),
    "maml-sinusoid-k3-second-order": functools.partial(maml_sinusoid_case, 3, False),
    "maml-sinusoid-k3-first-order": functools.partial(maml_sinusoid_case, 3, True),
    "maml-conv4-bn-5way1shot-second-order": functools.partial(maml_conv4_case, False),
    "maml-conv4-bn-5way1shot-first-order": functools.partial(maml_conv4_case, True),
    "reptile-sinusoid-serial": functools.partial(reptile_sinusoid_case, "serial"),
    "reptile-sinusoid-batched": functools.partial(reptile_sinusoid_case, "batched"),
    "protonet-conv4-3way2shot": protonet_case,
    "matching-conv4-3way2shot": functools.partial(matching_case, False),
    "matching-conv4-3way2shot-fce": functools.partial(matching_case, True),
    "metanet-3way1shot-first-order": functools.partial(metanet_case, False),
    "metanet-3way1shot-second-order": functools.partial(metanet_case, True),
    "snail-3way1shot": snail_case,
}


# ----- building, encoding and exporting -----
class CaseError(ValueError):
    """A case that cannot be built, read or written; the message says what and where."""


def build(case_id):
    """Run the builder of ``case_id`` and check what it returned; returns the dict."""
    if case_id not in CASES:
        raise CaseError(f"unknown case {case_id!r}; known: {', '.join(CASES)}")
    case = CASES[case_id]()
    if not isinstance(case, dict) or set(case) != set(BUILDER_KEYS):
        got = sorted(case) if isinstance(case, dict) else type(case).__name__
        raise CaseError(f"builder of {case_id!r} must return a dict with keys {list(BUILDER_KEYS)};"
                        f" got {got}")
    missing = [key for key in REQUIRED_CONVENTIONS if key not in case["conventions"]]
    if missing:
        raise CaseError(f"{case_id}: conventions must record {missing} (a value, or "
                        f"\"{NOT_APPLICABLE}<why>\")")
    for kind in ("inputs", "outputs"):
        for name, array in case[kind].items():
            if not isinstance(array, Array) or not np.all(np.isfinite(array.value)):
                raise CaseError(f"{case_id}: {kind} {name!r} must be an Array of finite numbers")
    return case


def _entry(array, group_scale):
    """The JSON entry of an input (group_scale None) or of an output."""
    value = np.asarray(array.value)
    entry = {"shape": list(value.shape), "dtype": "float64", "meaning": array.meaning}
    if np.issubdtype(value.dtype, np.integer) or value.dtype == bool:
        entry["integer_valued"] = True
    if group_scale is not None:
        rtol, atol = default_tolerance(group_scale)
        entry["rtol"] = rtol if array.rtol is None else array.rtol
        entry["atol"] = atol if array.atol is None else array.atol
    return entry


def _group_scales(outputs):
    """{group: max |value| over the outputs named group/...} (a name without "/" is a group)."""
    scales = {}
    for name, array in outputs.items():
        group = name.split("/")[0]
        finite = np.abs(np.asarray(array.value, dtype=np.float64))
        finite = finite[np.isfinite(finite)]
        largest = float(finite.max()) if finite.size else 0.0
        scales[group] = max(scales.get(group, 0.0), largest)
    return scales


def encode(case_id, case):
    """(json_text, npz_bytes) of a built case; the same case gives the same bytes."""
    scales = _group_scales(case["outputs"])
    arrays = {f"{kind}/{name}": np.asarray(array.value, dtype=np.float64)
              for kind in ("inputs", "outputs") for name, array in case[kind].items()}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)          # zip entries carry a fixed 1980 timestamp: reproducible
    npz = buffer.getvalue()
    document = {"format": FORMAT, "id": case_id, "algorithm": case["algorithm"],
                "description": case["description"], "refmeta_version": refmeta.__version__,
                "seed": case["seed"], "npz_sha256": hashlib.sha256(npz).hexdigest(),
                **{key: case[key] for key in ("model", "loss", "conventions", "hyperparameters",
                                              "procedure")},
                "inputs": {name: _entry(a, None) for name, a in case["inputs"].items()},
                "outputs": {name: _entry(a, scales[name.split("/")[0]])
                            for name, a in case["outputs"].items()}}
    return json.dumps(document, indent=1, ensure_ascii=False, allow_nan=False) + "\n", npz


def describe_cases():
    """One line per case: its id, algorithm and description, for ``refmeta cases list``."""
    width = max(len(case_id) for case_id in CASES)
    lines = []
    for case_id in CASES:
        case = build(case_id)
        lines.append(f"{case_id.ljust(width)}  {case['algorithm']}: {case['description']}")
    return "\n".join(lines)


def export(directory, case_ids=None, report=None):
    """Write ``<id>.json`` + ``<id>.npz`` for each case (default: all) into ``directory``.

    Every case is built and written into a staging folder inside ``directory`` first; then,
    per case, any old JSON is removed, the NPZ moved in and the JSON moved in last
    (os.replace).  The JSON is the case's commit record, and it names its NPZ's sha256: an
    interrupted export leaves whole cases, old or new, and at most an NPZ without a JSON,
    which is no case.  ``report(case_id)`` is called as each case is built.
    Raises CaseError for an unknown id or a directory that cannot be written.
    """
    case_ids = list(CASES) if case_ids is None else list(case_ids)
    unknown = [case_id for case_id in case_ids if case_id not in CASES]
    if unknown:
        raise CaseError(f"unknown case(s) {', '.join(map(repr, unknown))}; known: {', '.join(CASES)}")
    try:
        os.makedirs(directory, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".refmeta-export-", dir=directory)
    except OSError as error:
        raise CaseError(f"cannot write cases to {directory!r}: {error.strerror or error}") from None
    try:
        for case_id in case_ids:
            if report is not None:
                report(case_id)
            text, npz = encode(case_id, build(case_id))
            _write(os.path.join(staging, case_id + ".npz"), npz)
            _write(os.path.join(staging, case_id + ".json"), text.encode("utf-8"))
        for case_id in case_ids:
            target = os.path.join(directory, case_id)
            if os.path.lexists(target + ".json"):
                os.remove(target + ".json")
            os.replace(os.path.join(staging, case_id + ".npz"), target + ".npz")
            os.replace(os.path.join(staging, case_id + ".json"), target + ".json")
    except OSError as error:
        raise CaseError(f"cannot write cases to {directory!r}: {error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [os.path.join(directory, case_id + ".json") for case_id in case_ids]


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
