"""jax-meta's MAML with a haiku network on a MAML case, for benchmarks/conformance.py.

The network is built from the case JSON's ``model.layers`` with haiku modules (``hk.Conv2D`` on
NHWC data with HWIO kernels, ``hk.BatchNorm`` on the batch at hand, ``hk.Linear``); the
weights come from the case's ``params/…``.  jax-meta's ``MAML`` is subclassed as
docs/conformance.md says: ``loss`` computes the case's loss and query reduction, ``adapt`` is
jax-meta's own few lines plus the inner reduction, ``jax.lax.stop_gradient`` for first order
and no step for the batch-norm offsets.  ``batch_outer_loss`` (a ``vmap`` over tasks, then the
mean) gives the meta-loss, ``jax.grad`` of it the meta-gradient, ``optax.adam`` the update.
jax-meta's ``adapt`` returns only the last parameters: the case's ``adapted_step<j>`` for
j < inner_steps are not produced (compare with ``--partial``).
"""

from collections import namedtuple

import numpy as np

import haiku as hk
import jax
import jax.numpy as jnp
import optax
from jax_meta.metalearners.maml import MAML

Batch = namedtuple("Batch", ["inputs", "targets"])


def network(document, padding):
    """forward(x) -> output, x NHWC or (n, d); haiku module names are the case's layer names."""
    layers = document["model"]["layers"]

    def forward(x):
        for layer in layers:
            kind = layer["type"]
            if kind == "conv2d":
                pad = layer["padding"]
                x = hk.Conv2D(layer["out_channels"], layer["kernel_size"], stride=layer["stride"],
                              padding=padding or ((pad["top"], pad["bottom"]), (pad["left"], pad["right"])),
                              with_bias=bool(layer.get("bias")), name=layer["weight"].split(".")[0])(x)
            elif kind == "batch_norm":
                x = hk.BatchNorm(create_scale=bool(layer.get("scale")), create_offset=True,
                                 decay_rate=0.9, eps=layer["eps"],
                                 name=layer["offset"].split(".")[0])(x, is_training=True)
            elif kind == "dense":
                x = hk.Linear(layer["out_features"], name=layer["weight"].split(".")[0])(x)
            elif kind in ("relu", "tanh"):
                x = jax.nn.relu(x) if kind == "relu" else jnp.tanh(x)
            elif kind == "mean":
                x = x.mean(axis=(1, 2))
            else:
                raise ValueError(f"no haiku layer for {kind!r}")
        return x
    return hk.without_apply_rng(hk.transform_with_state(forward))


def to_haiku(params, conv):
    """The case's {name: array} -> haiku's {module: {w, b, offset}} (OIHW -> HWIO, BN (1,1,1,C))."""
    tree = {}
    for name, value in params.items():
        module, kind = name.split(".")
        if kind == "w" and module in conv:
            value = value.transpose(2, 3, 1, 0)
        elif kind == "offset":
            value = value.reshape(1, 1, 1, -1)
        tree.setdefault(module, {})[kind] = jnp.asarray(value)
    return tree


def from_haiku(tree, conv, hwio=False):
    """haiku's tree -> the case's {name: array}; ``hwio`` keeps the kernels as haiku has them."""
    flat = {}
    for module, leaves in tree.items():
        for kind, value in leaves.items():
            value = np.asarray(value, np.float64)
            if kind == "w" and module in conv and not hwio:
                value = np.moveaxis(value, (-4, -3, -2, -1), (-2, -1, -3, -4))   # HWIO -> OIHW
            elif kind == "offset":
                value = value.reshape(value.shape[:-4] + (-1,))
            flat[f"{module}.{kind}"] = value
    return flat


class CaseMAML(MAML):
    """jax-meta's MAML with the case's loss, reductions, first order and frozen batch norm."""

    def __init__(self, model, document, first_order_switch=True, inner_mean=False):
        conventions = document["conventions"]
        super().__init__(model, num_steps=conventions["inner_steps"], alpha=conventions["inner_lr"])
        self.kind = document["loss"]["type"]
        self.inner = "mean" if inner_mean else conventions["inner_reduction"]
        self.query = conventions["query_reduction"]
        self.first_order = conventions["first_order"] and first_order_switch

    def reduced(self, params, state, inputs, targets, reduction):
        out, state = self.model.apply(params, state, inputs)
        if self.kind == "mse":
            per_example = jnp.mean((out - targets) ** 2, axis=-1)
        else:
            per_example = -jnp.take_along_axis(jax.nn.log_softmax(out), targets[:, None], -1)[:, 0]
        scale = out.shape[-1] if reduction == "n_way_times_mean" else 1
        value = per_example.sum() if reduction == "sum" else scale * per_example.mean()
        return value, state

    def loss(self, params, state, inputs, targets, args):
        value, state = self.reduced(params, state, inputs, targets, self.query)
        return value, (state, {"loss": value})

    def adapt(self, init_params, state, inputs, targets, args):
        def step(params, _):
            value, grads = jax.value_and_grad(lambda p: self.reduced(
                p, state, inputs, targets, self.inner)[0])(params)
            if self.first_order:
                grads = jax.lax.stop_gradient(grads)
            params = {m: {k: v if k == "offset" else v - self.alpha * grads[m][k]
                          for k, v in leaves.items()} for m, leaves in params.items()}
            return params, {"loss": value}
        return jax.lax.scan(step, init_params, None, length=self.num_steps)


def jax_meta_outputs(document, arrays, save_hwio=False, x64=True, inner_mean=False,
                     first_order_switch=True, padding=None):
    """The outputs jax-meta gives for a MAML case: losses, the last adapted parameters, the
    meta-gradient and the Adam update (the keyword arguments are the mistakes to make)."""
    jax.config.update("jax_enable_x64", x64)
    dtype = np.float64 if x64 else np.float32
    conv = {layer["weight"].split(".")[0] for layer in document["model"]["layers"]
            if layer["type"] == "conv2d"}
    params = {k[len("inputs/params/"):]: v.astype(dtype) for k, v in arrays.items()
              if k.startswith("inputs/params/")}
    data = {k: arrays["inputs/" + k] for k in ("support_x", "support_y", "query_x", "query_y")}
    if conv:                                                    # (T, n, C, H, W) -> NHWC
        data = {k: v.transpose(0, 1, 3, 4, 2) if v.ndim == 5 else v.astype(np.int32)
                for k, v in data.items()}
    data = {k: jnp.asarray(v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in data.items()}
    model = network(document, padding)
    learner = CaseMAML(model, document, first_order_switch, inner_mean)
    theta = to_haiku(params, conv)
    _, state = model.init(jax.random.PRNGKey(0), data["support_x"][0])    # BN statistics only
    train, test = Batch(data["support_x"], data["support_y"]), Batch(data["query_x"], data["query_y"])
    (meta_loss, _), meta_gradient = jax.value_and_grad(learner.batch_outer_loss, has_aux=True)(
        theta, state, train, test, ())
    per_task = jax.vmap(learner.outer_loss, in_axes=(None, None, 0, 0, None))
    query, _, inner_logs, _ = per_task(theta, state, train, test, ())
    adapted = jax.vmap(learner.adapt, in_axes=(None, None, 0, 0, None))(
        theta, state, train.inputs, train.targets, ())[0]
    hp = document["hyperparameters"]
    optimizer = optax.adam(hp["meta_lr"], b1=hp["adam_b1"], b2=hp["adam_b2"], eps=hp["adam_eps"])
    updates, _ = optimizer.update(meta_gradient, optimizer.init(theta), theta)
    updated = optax.apply_updates(theta, updates)
    k = document["conventions"]["inner_steps"]
    outputs = {"support_loss": np.asarray(inner_logs["loss"], np.float64),
               "query_loss": np.asarray(query, np.float64), "meta_loss": np.asarray(meta_loss, np.float64)}
    for prefix, tree in ((f"adapted_step{k}", adapted), ("meta_gradient", meta_gradient),
                         ("updated", updated)):
        outputs.update({f"{prefix}/{n}": v for n, v in from_haiku(tree, conv, save_hwio).items()})
    jax.config.update("jax_enable_x64", True)
    return outputs
