"""The reference cases of the optimization-based learners: MAML (sinusoid and conv4 with batch
norm, first and second order) and Reptile (serial and batched)."""

import functools
import math

import numpy as np
from autograd import value_and_grad

from refmeta import contract, maml, reptile
from refmeta.data import inner_batches, tasks
from refmeta.nn import losses, models, optimizers, trees
from refmeta.cases.parts import (ADAM_META, CE_LOSS, CONV_BIAS_BEFORE_BN, MSE_LOSS, NOISE_FACTOR,
                                 NOT_APPLICABLE, Array, Recipe, default_tolerance, group_scales, host,
                                 power_of_ten_above, query_counts, tree_arrays, values_under,
                                 with_layouts)


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


def _mlp_model(sizes, activation):
    """The MLP of ``models.mlp_apply`` with the MSE loss, as MAML and Reptile take it."""
    return contract.supervised(functools.partial(models.mlp_init, sizes=sizes),
                               functools.partial(models.mlp_apply, activation=activation),
                               functools.partial(losses.mse, check=False),
                               f"mlp {'-'.join(map(str, sizes))} {activation}, mse")


def maml_outputs(values, config, zero_because=None):
    """Every MAML output of a case, as {name: Array} on the host, from the case's input values
    (host or device): params/<name>, support_x, support_y, query_x, query_y.

    ``zero_because`` {param name: why}: the params whose meta-gradient is 0 in exact arithmetic.
    """
    zero_because = zero_because or {}
    params = values_under(values, "params")
    episode = tasks.Episode(*(values[k] for k in ("support_x", "support_y", "query_x", "query_y")))
    n_tasks, loss_fn = episode.support_x.shape[0], config.model.loss
    trajectory = maml.adapt_trajectory(trees.broadcast_tasks(params, n_tasks), episode.support_x,
                                       episode.support_y, config)
    support = [loss_fn(trajectory[j], episode.support_x, episode.support_y, config.inner_reduction)
               for j in range(config.inner_steps)]
    query = loss_fn(trajectory[-1], episode.query_x, episode.query_y, config.query_reduction)
    meta_loss, meta_gradient = value_and_grad(maml.loss)(params, episode, config)
    updated, _ = optimizers.adam_update(params, meta_gradient, optimizers.adam_init(params),
                                        lr=config.meta_lr, b1=0.9, b2=0.999, eps=1e-8)
    trajectory, support, query, meta_loss, meta_gradient, updated = host(
        (trajectory, support, query, meta_loss, meta_gradient, updated))
    outputs = {"support_loss": Array(np.stack(support, axis=1), "(T, inner_steps): support "
                                     "loss of task t before inner step j"),
               "query_loss": Array(np.asarray(query), "(T,): query loss after the inner steps"),
               "meta_loss": Array(np.asarray(meta_loss), "(): query losses reduced over tasks")}
    for j in range(1, config.inner_steps + 1):
        outputs.update(tree_arrays(f"adapted_step{j}", trajectory[j],
                                    f"(T, ...): every task's params after inner step {j}"))
    outputs.update(tree_arrays("meta_gradient", meta_gradient, "∂ meta_loss / ∂ params",
                               zero_because))
    gradient_scale = group_scales(outputs)["meta_gradient"]
    gradient_atol = default_tolerance(gradient_scale)[1]
    updated_atol = default_tolerance(max(np.max(np.abs(u)) for u in updated.values()))[1]
    for name in sorted(updated):
        step_atol = (_adam_noise_atol(gradient_scale, config.meta_lr) if name in zero_because
                     else _adam_step_atol(meta_gradient[name], gradient_atol, config.meta_lr))
        atol = max(updated_atol, step_atol)
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


def _adam_noise_atol(gradient_scale, lr, eps=1e-8):
    """Adam's first step on a meta-gradient that is 0 in exact arithmetic (a conv bias ahead of
    batch norm): the rounding noise n, at most NOISE_FACTOR × the meta-gradient group's scale
    (measured: ~1e-15 of it), moves the parameter by lr·n / (n + eps) ≤ lr·n / eps.  Rounded up
    to a power of ten: 1e-7 in the conv cases, still failing a relative error of 1e-6 in the
    smallest of those parameters (0.11).  (``_adam_step_atol``'s rule would allow 1e-5.)"""
    return power_of_ten_above(lr * NOISE_FACTOR * gradient_scale / eps)


def _maml_case(description, seed, model, loss, config, extra_conventions, hyperparameters, inputs,
               zero_because=None):
    conventions = dict(config.conventions(), **extra_conventions,
                       test_inner_steps_note="not used: this case takes no test-time steps",
                       inner_optimizer_state=NOT_APPLICABLE + "the inner loop is plain gradient "
                       "descent, which has no state")
    model = dict(model, layers=with_layouts(model["layers"]))
    header = {"algorithm": "MAML", "description": description, "seed": seed, "model": model,
              "loss": loss, "conventions": conventions,
              "hyperparameters": dict(hyperparameters, inner_lr=config.inner_lr,
                                      inner_steps=config.inner_steps, meta_lr=config.meta_lr,
                                      **ADAM_META),
              "procedure": MAML_PROCEDURE}
    return Recipe(header, inputs, lambda values: maml_outputs(values, config, zero_because))


def maml_sinusoid_case(inner_steps, first_order, seed=0, n_tasks=5, n_support=10, n_query=10):
    """MAML on the paper's sinusoid setup (MLP 1-40-40-1, ReLU, MSE, α = 0.01)."""
    rng, family, sizes = np.random.default_rng(seed), tasks.SinusoidFamily(), (1, 40, 40, 1)
    params = models.mlp_init(rng, sizes)
    amplitude, phase, [(support_x, support_y), (query_x, query_y)] = _sinusoid_data(
        rng, family, n_tasks, (n_support, n_query))
    config = maml.MAMLConfig(_mlp_model(sizes, "relu"), inner_lr=0.01, inner_steps=inner_steps,
                             first_order=first_order)
    inputs = dict(tree_arrays("params", params, "the meta-parameters θ"),
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
        f"(K = {n_support} support and {n_query} query points per task): losses, adapted params, "
        "meta-gradient and one Adam meta-step.", seed, models.mlp_describe(sizes), MSE_LOSS, config,
        _sinusoid_conventions(family),
        {"n_tasks": n_tasks, "n_support": n_support, "n_query": n_query}, inputs)


def maml_conv4_case(first_order, seed=0, n_tasks=2, n_way=5, k_shot=1, n_query=2, hidden=8,
                    image_size=28, inner_steps=2):
    """MAML's Omniglot network (stride-2 conv4, transductive BN with offset only), small."""
    rng = np.random.default_rng(seed)
    params = models.conv4_init(rng, 1, n_way, hidden, "stride", "offset", image_size)
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
    network = contract.supervised(
        lambda r: models.conv4_init(r, 1, n_way, hidden, "stride", "offset", image_size),
        functools.partial(models.conv4_apply, variant="stride"),
        functools.partial(losses.cross_entropy, check=False),
        f"conv4 stride, {hidden} filters, batch norm (offset), {image_size}x{image_size}, "
        f"{n_way}-way, cross-entropy")
    config = maml.MAMLConfig(network, n_way=n_way, inner_lr=0.4, inner_steps=inner_steps,
                             first_order=first_order, inner_reduction="n_way_times_mean")
    inputs = dict(tree_arrays("params", params, "the meta-parameters θ (bn offsets drawn "
                                                 "U(±0.1) so that they matter)"),
                  support_x=Array(support_x, "(T, N·K, 1, H, W) support images, class-major"),
                  support_y=Array(support_y, "(T, N·K) support labels 0..N−1"),
                  query_x=Array(query_x, "(T, N·n_query_per_class, 1, H, W) query images, "
                                         "shuffled per task"),
                  query_y=Array(query_y, "(T, N·n_query_per_class) query labels 0..N−1"))
    model = models.conv4_describe(1, n_way, hidden, "stride", "offset", "transductive", 1e-3,
                                  image_size)
    conventions = {"batch_norm": "transductive: the statistics of the batch at hand (support "
                                 "or query, per task), in every pass; offset only, eps 1e-3",
                   "sinusoid": NOT_APPLICABLE + "classification",
                   "rotations": NOT_APPLICABLE + "synthetic images, no rotation classes",
                   "distance": NOT_APPLICABLE + "no metric-based classifier"}
    mode = "first" if first_order else "second"
    return _maml_case(
        f"{mode}-order MAML, {inner_steps} inner steps, on {n_tasks} synthetic {n_way}-way "
        f"{k_shot}-shot tasks, {n_query} queries per class ({n_way * n_query} per task), with "
        f"MAML's Omniglot conv net (stride 2, transductive batch norm, {hidden} filters, "
        f"{image_size}×{image_size} images).", seed, model, CE_LOSS, config, conventions,
        {"n_tasks": n_tasks, "n_way": n_way, "k_shot": k_shot, "n_support_per_task": n_way * k_shot,
         **query_counts(n_way, n_query)},
        inputs, {f"conv{i}.b": CONV_BIAS_BEFORE_BN for i in range(4)})


REPTILE_PROCEDURE = [
    "Inner loop of task t from φ: Adam (conventions.adam_b1/b2/eps, inner_lr) on the support "
    "mini-batches; at step j (0-based) the batch is support_x[t, batch_indices[t, j]], "
    "support_y[t, batch_indices[t, j]]; inner_loss[t, j] is its loss (reduced over the batch by "
    "conventions.inner_reduction) at the params before the step. Adam starts fresh for every "
    "task: m = v = 0, step count 1 "
    "at the first step; m ← b1 m + (1−b1) g, v ← b2 v + (1−b2) g², "
    "θ ← θ − inner_lr · (m / (1−b1^step)) / (sqrt(v / (1−b2^step)) + eps).  (This reset is "
    "refmeta's choice, conventions.inner_optimizer_state: the Reptile authors' code and "
    "learn2learn's Reptile example carry Adam's moments and step count over from one task to "
    "the next, which gives different numbers from the second task on.)",
    "adapted_step{j}/<name>[t] = task t's params after j inner steps (j = 1..inner_steps).",
]
REPTILE_MODES = {
    "serial": "Algorithm 1 over the tasks in order: φ_0 = params; task t adapts from φ_t "
              "(task_start/<name>[t] = φ_t) to φ̃_t; φ_{t+1} = φ_t + meta_step_size · (φ̃_t − φ_t); "
              "updated/<name> = φ_T.",
    "batched": "Algorithm 2: every task adapts from params to φ̃_t; updated/<name> = params + "
               "meta_step_size · mean_t (φ̃_t − params) (conventions.task_reduction).",
}

# Serial Reptile's outputs as computed: the losses (task 0's first at params), where each task
# starts (after the previous task's steps), the inner steps, the update
REPTILE_SERIAL_ORDER = ["inner_loss", "task_start/<name>", "adapted_step{j}/<name>", "updated/<name>"]


def reptile_sinusoid_case(mode, seed=0, n_tasks=3, n_support=20, inner_steps=5, batch_size=8):
    """Reptile (serial or batched) with an inner Adam on Reptile's sine (x + b, b ∈ [0, 2π])."""
    rng, sizes = np.random.default_rng(seed), (1, 40, 40, 1)
    family = tasks.SinusoidFamily(phase_range=(0.0, 2 * math.pi), phase_sign=1)
    params = models.mlp_init(rng, sizes)
    amplitude, phase, [(support_x, support_y)] = _sinusoid_data(rng, family, n_tasks, (n_support,))
    batch_indices = inner_batches.sample_inner_batches(rng, n_tasks, n_support, inner_steps, batch_size)
    config = reptile.ReptileConfig(_mlp_model(sizes, "tanh"), inner_lr=0.01, inner_steps=inner_steps,
                                   inner_optimizer="adam", adam_b1=0.0, meta_step_size=0.5,
                                   variant=mode)
    inputs = dict(tree_arrays("params", params, "the meta-parameters φ"),
                  support_x=Array(support_x, "(T, n, 1) inputs x ~ U[x_range]"),
                  support_y=Array(support_y, "(T, n, 1) targets A·sin(x + b)"),
                  batch_indices=Array(batch_indices, "(T, inner_steps, batch) rows of support_x "
                                                     "in each inner mini-batch"),
                  amplitude=Array(amplitude, "(T,) task amplitudes A (already in the targets)"),
                  phase=Array(phase, "(T,) task phases b (already in the targets)"))
    model = models.mlp_describe(sizes, "tanh")
    header = {"algorithm": "Reptile", "seed": seed, "model": dict(model, layers=with_layouts(model["layers"])),
            "description": f"{mode} Reptile on {n_tasks} sine tasks, {inner_steps} inner Adam "
                           f"steps on mini-batches of {batch_size} of each task's {n_support} "
                           "points, Adam reset for every task.",
            "loss": MSE_LOSS, "procedure": REPTILE_PROCEDURE + [REPTILE_MODES[mode]],
            "conventions": dict(config.conventions(), reptile_mode=mode,
                                first_order=NOT_APPLICABLE + "Reptile takes no meta-gradient",
                                query_reduction=NOT_APPLICABLE + "Reptile has no query loss",
                                test_inner_steps=NOT_APPLICABLE + "no test-time adaptation here",
                                adapt_bn=NOT_APPLICABLE + "the MLP has no batch norm",
                                **_sinusoid_conventions(family)),
            "hyperparameters": {"inner_lr": config.inner_lr, "inner_steps": inner_steps,
                                "meta_step_size": config.meta_step_size, "n_tasks": n_tasks,
                                "n_support": n_support, "batch_size": batch_size}}
    if mode == "serial":        # the procedure defines task_start in its last step; a task starts first
        header["computation_order"] = REPTILE_SERIAL_ORDER
    return Recipe(header, inputs, lambda values: reptile_outputs(values, config))


def reptile_outputs(values, config):
    """Every Reptile output of a case, as {name: Array} on the host, from the case's input
    values (host or device): params/<name>, support_x, support_y, batch_indices."""
    params = values_under(values, "params")
    support_x, support_y, batch_indices = (values[k] for k in ("support_x", "support_y", "batch_indices"))
    loss_fn, n_tasks, inner_steps = config.model.loss, support_x.shape[0], config.inner_steps
    starts, adapted, inner_losses, phi = [], [], [], params
    for t in range(n_tasks):
        start = phi if config.variant == "serial" else params
        x, y, idx = support_x[t:t + 1], support_y[t:t + 1], batch_indices[t:t + 1]
        trajectory = reptile.adapt_trajectory(trees.broadcast_tasks(start, 1), x, y, config,
                                              batch_indices=idx)
        inner_losses.append([loss_fn(trajectory[j], x[:, idx[0, j]], y[:, idx[0, j]], "mean")[0]
                             for j in range(inner_steps)])
        starts.append(start)
        adapted.append([trees.take_task(p, 0) for p in trajectory[1:]])
        phi = trees.interpolate(start, adapted[-1][-1], config.meta_step_size)
    updated = reptile.step(params, reptile.init_state(params, config),
                           tasks.Episode(support_x, support_y, support_x, support_y), config,
                           batch_indices=batch_indices).params
    starts, adapted, inner_losses, updated = host((starts, adapted, inner_losses, updated))
    stack = lambda trees_: {k: np.stack([tree[k] for tree in trees_]) for k in sorted(params)}
    outputs = {"inner_loss": Array(np.array(inner_losses), "(T, inner_steps): mini-batch loss "
                                                            "of task t before inner step j")}
    if config.variant == "serial":
        outputs.update(tree_arrays("task_start", stack(starts), "(T, ...): φ_t, the params "
                                                                 "task t starts from"))
    for j in range(inner_steps):
        outputs.update(tree_arrays(f"adapted_step{j + 1}", stack([a[j] for a in adapted]),
                                    f"(T, ...): every task's params after inner step {j + 1}"))
    outputs.update(tree_arrays("updated", updated, "params after the Reptile update"))
    return outputs
