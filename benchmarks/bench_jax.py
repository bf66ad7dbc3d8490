"""The JAX peers of bench.py's sinusoid and conv4 MAML meta-gradients: ``jax.jit`` of
``jax.grad``, with ``jax.vmap`` over the sinusoid's tasks, written from MAML's Eq. (1)-(2) on
the same params and data as refmeta (``bench_workloads``).

Each ``jax_*`` takes the imported ``jax`` module (``jax_enable_x64`` on, so float64 arrays stay
float64) and host arrays, and returns a function of no arguments that computes the
meta-gradient once, compiled at its first call, and waits for it (``block_until_ready``).
"""

from bench_workloads import N_WAY


def jax_sinusoid(jax, params, data):
    jnp = jax.numpy

    def mlp(p, x):
        h = jax.nn.relu(x @ p["dense0.w"] + p["dense0.b"])
        h = jax.nn.relu(h @ p["dense1.w"] + p["dense1.b"])
        return h @ p["dense2.w"] + p["dense2.b"]

    mse = lambda p, x, y: jnp.mean((mlp(p, x) - y) ** 2)

    def one_task(p, x, y, xq, yq):
        g = jax.grad(mse)(p, x, y)
        return mse(jax.tree_util.tree_map(lambda a, b: a - 0.01 * b, p, g), xq, yq)

    meta = lambda p, *d: jnp.mean(jax.vmap(one_task, in_axes=(None, 0, 0, 0, 0))(p, *d))
    fn = jax.jit(jax.grad(meta))
    P, D = {k: jnp.asarray(v) for k, v in params.items()}, [jnp.asarray(a) for a in data]
    return lambda: jax.block_until_ready(fn(P, *D))


def jax_conv4(jax, params, data):
    jnp, lax = jax.numpy, jax.lax

    def net(p, x):
        for i in range(4):
            x = lax.conv_general_dilated(x, p[f"conv{i}.w"], (2, 2), ((1, 1), (1, 1)),
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
            x = x + p[f"conv{i}.b"][None, :, None, None]
            mean = x.mean(axis=(0, 2, 3), keepdims=True)
            var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
            x = jax.nn.relu((x - mean) / jnp.sqrt(var + 1e-3) + p[f"bn{i}.offset"][None, :, None, None])
        return x.mean(axis=(2, 3)) @ p["out.w"] + p["out.b"]

    def ce(p, x, y, scale):
        logp = jax.nn.log_softmax(net(p, x))
        return -scale * jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    def meta(p, sx, sy, qx, qy):
        g = jax.grad(ce)(p, sx, sy, N_WAY)
        adapted = {k: v if k.startswith("bn") else v - 0.4 * g[k] for k, v in p.items()}
        return ce(adapted, qx, qy, 1)

    fn = jax.jit(jax.grad(meta))
    P, D = {k: jnp.asarray(v) for k, v in params.items()}, [jnp.asarray(a[0]) for a in data]
    return lambda: jax.block_until_ready(fn(P, *D))


