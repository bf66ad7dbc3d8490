"""Speed of refmeta's MAML meta-gradients, with JAX and PyTorch as peers when installed.

    python benchmarks/bench.py              all three parts (a few minutes on 2 cores)
    python benchmarks/bench.py --quick      fewer repeats
    python benchmarks/bench.py --only sinusoid|conv4|memory|metric|snail|metanet

1. sinusoid: the MAML meta-gradient (second order, one inner step, α = 0.01) of the
   paper's MLP 1-40-40-1 on a meta-batch of 25 tasks with K = 10 support and 10 query points:
   refmeta vectorised across tasks, refmeta's per-task loop (``maml.looped``) and refmeta
   vectorised with the MLP's gradient and Hessian-vector product written out
   (``refmeta.fast.fused_mlp``, the same ``maml`` code on a flat parameter vector), and
   ``FusedMLP.meta_gradient``, MAML's Eq. (3) applied by hand with those pieces; peers
   JAX ``jit(grad)`` with ``vmap`` over tasks, PyTorch eager per-task loop, PyTorch eager
   vectorised (batched matmuls) and ``torch.func`` (``grad`` of ``vmap``).
2. conv4: one second-order MAML meta-gradient of MAML's Omniglot net (4 × {3×3 conv, 64
   filters, stride 2, transductive batch norm with offset, ReLU}, mean, linear) on one 5-way
   1-shot task, 5 support and 75 query images of 28×28, one inner step of α = 0.4 on N × the
   mean cross-entropy; peers PyTorch eager (``autograd.grad(create_graph=True)``) and JAX jit.
3. memory: peak memory of part 2's meta-gradient with k = 1, 3, 5 inner steps, each in a
   fresh process: the resident peak (VmHWM) minus the resident size just before the call,
   and for refmeta also the peak of numpy's allocations as tracemalloc sees them.
4. metric: one ProtoNet training episode (5-way 1-shot, 15 queries per class: 80 images of
   28×28 through conv4 with max-pool, 64 filters, transductive BN, squared Euclidean distance),
   forward + backward, and conv4 (max-pool) forward + backward on the same 80 images (the
   gradient of Σ z²); peer PyTorch eager on the same weights and images.
5. snail: one SNAIL training step as the Omniglot demo takes it (8 episodes 5-way 1-shot, one
   query per class: 80 images through conv4 max-pool + linear to 64, 40 sequences of T = 6
   through the paper's stack Attn(64, 32) → TC(128) → Attn(256, 128) → TC(128) → Attn(512, 256)
   → linear), forward + backward of the query loss, and the stack alone on 40 sequences;
   peer PyTorch eager on the same weights and data.
6. metanet: one Meta Networks training step as the Omniglot demo takes it (20-way 1-shot, one
   query per class, 4 conv blocks × 32 filters, fast weights on fc1 and the output layer), the
   gradient of L_train with the meta-information gradients held constant; peer PyTorch eager
   written from the paper and the authors' code, looping over support examples for them.

Everything is float64 and every peer gets the same data.  Each variant runs in a block of
back-to-back calls after warm-up calls, with an idle pause between blocks (a BLAS's
threads keep spinning briefly after a call and slow whatever runs next); the table shows
the median of the block and its ratio to the stated baseline, measured in the same process.
Timings mean little on a loaded machine: the load average is printed with the results.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

PAUSE_S = 0.5
N_TASKS, K_SUPPORT, K_QUERY, SIZES = 25, 10, 10, (1, 40, 40, 1)
N_WAY, K_SHOT, N_QUERY_PER_CLASS, HIDDEN, IMAGE = 5, 1, 15, 64, 28


def load():
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def timed(fn, repeats, warmup=2):
    """Median seconds of ``repeats`` back-to-back calls after ``warmup`` calls, then a pause."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    time.sleep(PAUSE_S)
    return float(np.median(times)), float(np.percentile(times, 25)), float(np.percentile(times, 75))


def keep_freed_memory():
    """Ask glibc to keep freed blocks instead of returning them to the OS.

    By default glibc serves blocks above its mmap threshold (128 KiB to start) with fresh
    pages and unmaps them on free, so each new (25, 40, 40) float64 array faults its pages in
    again; the sinusoid meta-gradient then spends about a third of its time in page faults.
    This sets M_MMAP_THRESHOLD to 64 MiB and M_TRIM_THRESHOLD to 128 MiB for this whole
    process, every implementation alike (the same as the environment variables
    MALLOC_MMAP_THRESHOLD_=67108864 MALLOC_TRIM_THRESHOLD_=134217728).  Returns what was done.
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        done = libc.mallopt(m_mmap_threshold, 64 << 20) == 1 and libc.mallopt(m_trim_threshold, 128 << 20) == 1
    except (OSError, AttributeError):
        done = False
    return "glibc keeps freed memory (mmap threshold 64 MiB)" if done else "malloc left as is (not glibc?)"


def optional(name):
    try:
        return __import__(name)
    except ImportError:
        return None


# ----- data, shared by every implementation -----
def sinusoid_data(seed=0):
    from refmeta.data import tasks
    from refmeta.nn import models
    rng = np.random.default_rng(seed)
    params = models.mlp_init(rng, SIZES)
    episode = tasks.sample_sinusoid_episode(rng, tasks.SinusoidFamily(), N_TASKS, K_SUPPORT, K_QUERY)
    return params, tuple(np.asarray(a) for a in episode)


def conv4_data(seed=0):
    from refmeta.nn import models
    rng = np.random.default_rng(seed)
    params = models.conv4_init(rng, 1, N_WAY, HIDDEN, "stride", "offset", IMAGE)
    support_x = rng.uniform(0, 1, (1, N_WAY * K_SHOT, 1, IMAGE, IMAGE))
    query_x = rng.uniform(0, 1, (1, N_WAY * N_QUERY_PER_CLASS, 1, IMAGE, IMAGE))
    support_y = np.repeat(np.arange(N_WAY), K_SHOT)[None]
    query_y = np.repeat(np.arange(N_WAY), N_QUERY_PER_CLASS)[None]
    return params, (support_x, support_y, query_x, query_y)


# ----- refmeta -----
def refmeta_sinusoid(params, data, vectorised):
    """``maml.meta_gradient`` with the paper's sinusoid MLP (MAMLConfig's default model), its
    loss vectorised across tasks or wrapped by ``maml.looped`` into a per-task loop."""
    from functools import partial
    from refmeta import maml
    from refmeta.data import tasks
    from refmeta.nn import losses, models
    model = maml.MAMLConfig().model
    if not vectorised:
        one_task = losses.model_loss(models.mlp_apply, partial(losses.mse, check=False))
        model = model._replace(loss=maml.looped(one_task))
    config, episode = maml.MAMLConfig(model, inner_lr=0.01, inner_steps=1), tasks.Episode(*data)
    return lambda: maml.meta_gradient(params, episode, config)


def refmeta_sinusoid_fused(params, data, written_out):
    """The same meta-gradient with ``fused_mlp`` (written-out gradient and R-operator): through
    ``maml.meta_gradient``, or by ``FusedMLP.meta_gradient`` (MAML's Eq. (3), no autograd)."""
    from refmeta import maml
    from refmeta.data import tasks
    from refmeta.fast import fused_mlp
    mlp = fused_mlp.FusedMLP(SIZES, "relu")
    config = maml.MAMLConfig(mlp.model(), inner_lr=0.01, inner_steps=1)
    episode, flat = tasks.Episode(*data), mlp.pack(params)
    if written_out:
        return lambda: mlp.unpack(mlp.meta_gradient(flat, episode, config))
    return lambda: mlp.unpack(maml.meta_gradient(flat, episode, config))


def refmeta_conv4(params, data, inner_steps=1):
    from functools import partial
    from refmeta import contract, maml
    from refmeta.data import tasks
    from refmeta.nn import losses, models
    init = lambda rng: models.conv4_init(rng, 1, N_WAY, HIDDEN, "stride", "offset", IMAGE)
    model = contract.supervised(init, models.conv4_apply, partial(losses.cross_entropy, check=False),
                                f"conv4 stride, {HIDDEN} filters, cross-entropy")
    config = maml.MAMLConfig(model, n_way=N_WAY, inner_lr=0.4, inner_steps=inner_steps,
                             inner_reduction="n_way_times_mean")
    episode = tasks.Episode(*data)
    return lambda: maml.meta_gradient(params, episode, config)


# ----- PyTorch -----
def torch_sinusoid(torch, params, data, how):
    from torch.func import grad, vmap
    P = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    sx, sy, qx, qy = (torch.tensor(a) for a in data)

    def mlp(p, x):      # works for one task (n, 1) and for task-batched (T, n, 1) / (T, d, d)
        h = torch.relu(x @ p["dense0.w"] + p["dense0.b"].unsqueeze(-2))
        h = torch.relu(h @ p["dense1.w"] + p["dense1.b"].unsqueeze(-2))
        return h @ p["dense2.w"] + p["dense2.b"].unsqueeze(-2)

    mse = lambda p, x, y: ((mlp(p, x) - y) ** 2).mean(dim=(-2, -1))

    def one_task_loss(p, x, y, xq, yq):
        g = grad(lambda q: mse(q, x, y))(p)
        return mse({k: p[k] - 0.01 * g[k] for k in p}, xq, yq)

    if how == "func":
        meta = lambda p: vmap(one_task_loss, in_dims=(None, 0, 0, 0, 0))(p, sx, sy, qx, qy).mean()
        return lambda: grad(meta)(P)
    names = sorted(P)

    def eager():
        if how == "loop":
            losses = []
            for t in range(N_TASKS):
                support = mse(P, sx[t], sy[t])
                g = torch.autograd.grad(support, [P[k] for k in names], create_graph=True)
                adapted = {k: P[k] - 0.01 * gk for k, gk in zip(names, g)}
                losses.append(mse(adapted, qx[t], qy[t]))
            meta = torch.stack(losses).mean()
        else:       # vectorised: every param gets a task axis, batched matmuls
            batched = {k: P[k].expand((N_TASKS,) + P[k].shape) for k in names}
            support = mse(batched, sx, sy).sum()
            g = torch.autograd.grad(support, [batched[k] for k in names], create_graph=True)
            adapted = {k: batched[k] - 0.01 * gk for k, gk in zip(names, g)}
            meta = mse(adapted, qx, qy).mean()
        return torch.autograd.grad(meta, [P[k] for k in names])
    return eager


def torch_conv4_net(torch):
    F = torch.nn.functional

    def net(p, x):
        for i in range(4):
            x = F.conv2d(x, p[f"conv{i}.w"], p[f"conv{i}.b"], stride=2, padding=1)
            x = F.relu(F.batch_norm(x, None, None, None, p[f"bn{i}.offset"], training=True, eps=1e-3))
        return x.mean(dim=(2, 3)) @ p["out.w"] + p["out.b"]
    return net


def torch_conv4(torch, params, data, inner_steps=1):
    F, net = torch.nn.functional, torch_conv4_net(torch)
    P = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    sx, sy, qx, qy = (torch.tensor(a[0]) for a in data)
    names = sorted(P)

    def meta_gradient():
        theta = dict(P)
        for _ in range(inner_steps):
            support = N_WAY * F.cross_entropy(net(theta, sx), sy)
            g = torch.autograd.grad(support, [theta[k] for k in names], create_graph=True)
            theta = {k: theta[k] if k.startswith("bn") else theta[k] - 0.4 * gk
                     for k, gk in zip(names, g)}
        return torch.autograd.grad(F.cross_entropy(net(theta, qx), qy), [P[k] for k in names])
    return meta_gradient


# ----- JAX -----
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


# ----- the parts -----
def check_same(reference, out, names, label):
    """Peers must compute the same meta-gradient (float64, up to reassociation).

    ``out`` is a dict by name (refmeta, JAX, torch.func) or a list in sorted-name order.
    """
    values = [out[k] for k in names] if isinstance(out, dict) else list(out)
    values = [np.asarray(v.detach() if hasattr(v, "detach") else v) for v in values]
    scale = max(np.abs(reference[k]).max() for k in names)
    worst = max(np.abs(v - reference[k]).max() for v, k in zip(values, names))
    assert worst <= 1e-10 * scale, (label, worst, scale)


def against_pytorch(title, ours, theirs, repeats):
    """Check PyTorch's gradients (``theirs``, or None; a list in sorted-name order) against
    refmeta's dict, time both, print the table; returns the results entry."""
    reference = ours()
    variants = [("refmeta", ours)] + ([("PyTorch eager", theirs)] if theirs else [])
    rows = []
    for label, fn in variants:
        check_same(reference, fn(), sorted(reference), label)
        rows.append((label, *timed(fn, repeats, warmup=1)))
    print_table(title, rows, "PyTorch eager" if theirs else "refmeta")
    return {"load": os.getloadavg(), "rows": rows}


def print_table(title, rows, baseline):
    print(f"\n{title}   [{load()}]")
    base = dict((name, t) for name, t, *_ in rows)[baseline]
    print(f"  {'variant':42s} {'median ms':>10s} {'IQR ms':>15s} {'÷ ' + baseline:>28s}")
    for name, median, q1, q3 in rows:
        print(f"  {name:42s} {median * 1e3:10.2f} {q1 * 1e3:7.2f}–{q3 * 1e3:<7.2f} {median / base:28.2f}")


def sinusoid_part(repeats, results):
    params, data = sinusoid_data()
    names = sorted(params)
    reference = refmeta_sinusoid(params, data, True)()
    variants = [("refmeta vectorised", refmeta_sinusoid(params, data, True)),
                ("refmeta per-task loop", refmeta_sinusoid(params, data, False)),
                ("refmeta vectorised, fused_mlp", refmeta_sinusoid_fused(params, data, written_out=False)),
                ("refmeta fused_mlp, Eq. (3) written out", refmeta_sinusoid_fused(params, data, written_out=True))]
    torch, jax = optional("torch"), optional("jax")
    if jax is not None:
        jax.config.update("jax_enable_x64", True)
        variants.append(("JAX jit(grad(vmap))", jax_sinusoid(jax, params, data)))
    if torch is not None:
        torch.set_default_dtype(torch.float64)
        for how, label in (("loop", "PyTorch eager per-task loop"),
                           ("vectorised", "PyTorch eager vectorised"), ("func", "torch.func grad(vmap)")):
            variants.append((label, torch_sinusoid(torch, params, data, how)))
    rows = []
    for label, fn in variants:
        check_same(reference, fn(), names, label)
        rows.append((label, *timed(fn, repeats)))
    print_table(f"sinusoid MAML meta-gradient, meta-batch {N_TASKS}, K={K_SUPPORT}+{K_QUERY}, "
                f"MLP {'-'.join(map(str, SIZES))}, 2nd order, float64", rows, "refmeta vectorised")
    results["sinusoid"] = {"load": os.getloadavg(), "rows": rows}


def conv4_part(repeats, results):
    params, data = conv4_data()
    names = sorted(params)
    reference = refmeta_conv4(params, data)()
    variants = [("refmeta", refmeta_conv4(params, data))]
    torch, jax = optional("torch"), optional("jax")
    if torch is not None:
        torch.set_default_dtype(torch.float64)
        variants.append(("PyTorch eager", torch_conv4(torch, params, data)))
    if jax is not None:
        jax.config.update("jax_enable_x64", True)
        variants.append(("JAX jit", jax_conv4(jax, params, data)))
    rows = []
    for label, fn in variants:
        check_same(reference, fn(), names, label)
        rows.append((label, *timed(fn, repeats, warmup=1)))
    baseline = "PyTorch eager" if torch is not None else "refmeta"
    print_table(f"conv4 2nd-order MAML meta-gradient, {N_WAY}-way {K_SHOT}-shot, "
                f"{N_WAY * K_SHOT}+{N_WAY * N_QUERY_PER_CLASS} images {IMAGE}×{IMAGE}, {HIDDEN} filters, "
                "1 step, float64", rows, baseline)
    results["conv4"] = {"load": os.getloadavg(), "rows": rows}


def _status_mib(field):
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def memory_child(framework, inner_steps):
    """In a fresh process: resident memory before and at the peak (VmHWM) of one conv4
    meta-gradient, and for refmeta also the peak of numpy's traced allocations."""
    params, data = conv4_data()
    if framework == "refmeta":
        fn = refmeta_conv4(params, data, inner_steps)
    else:
        torch = __import__("torch")
        torch.set_default_dtype(torch.float64)
        fn = torch_conv4(torch, params, data, inner_steps)
    before = _status_mib("VmRSS")
    fn()
    result = {"before_mib": before, "peak_mib": _status_mib("VmHWM")}
    result["growth_mib"] = result["peak_mib"] - before
    if framework == "refmeta":
        import tracemalloc
        tracemalloc.start()
        fn()
        result["traced_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2 ** 20
    print(json.dumps(result))


def memory_part(results):
    frameworks = ["refmeta"] + (["torch"] if optional("torch") is not None else [])
    print(f"\npeak memory of one conv4 2nd-order meta-gradient, k inner steps (fresh process each)"
          f"   [{load()}]")
    print(f"  {'':8s} {'k':>2s} {'peak RSS MiB':>13s} {'growth MiB':>11s} {'Δ/step':>7s} "
          f"{'numpy traced peak MiB':>22s} {'Δ/step':>7s}")
    results["memory"] = {}
    for framework in frameworks:
        previous = None
        for k in (1, 3, 5):
            out = subprocess.run([sys.executable, __file__, "--memory-child", framework, str(k)],
                                 capture_output=True, text=True, check=True)
            m = json.loads(out.stdout.strip().splitlines()[-1])
            traced = m.get("traced_peak_mib")
            step = lambda key: "" if previous is None or previous.get(key) is None else \
                f"{(m[key] - previous[key]) / (k - previous['k']):7.1f}"
            print(f"  {framework:8s} {k:2d} {m['peak_mib']:13.1f} {m['growth_mib']:11.1f} "
                  f"{step('growth_mib'):>7s} {'' if traced is None else f'{traced:22.1f}':>22s} "
                  f"{step('traced_peak_mib'):>7s}")
            results["memory"][f"{framework} k={k}"] = m
            previous = dict(m, k=k)


# ----- SNAIL: one training step (Mishra et al. 2018, the paper's Omniglot stack) -----
SNAIL_EPISODES, SNAIL_QUERIES = 8, 1     # the demo's step: 8 episodes 5-way 1-shot, 1 query per class


def snail_data(seed=0):
    from refmeta import snail
    rng = np.random.default_rng(seed)
    config = snail.SNAILConfig(n_way=N_WAY, k_shot=K_SHOT)
    params = snail.init(rng, config)
    support_x = rng.uniform(0, 1, (SNAIL_EPISODES, N_WAY * K_SHOT, 1, IMAGE, IMAGE))
    query_x = rng.uniform(0, 1, (SNAIL_EPISODES, N_WAY * SNAIL_QUERIES, 1, IMAGE, IMAGE))
    support_y = np.stack([rng.permutation(np.repeat(np.arange(N_WAY), K_SHOT)) for _ in range(SNAIL_EPISODES)])
    query_y = np.tile(np.repeat(np.arange(N_WAY), SNAIL_QUERIES), (SNAIL_EPISODES, 1))
    return config, params, (support_x, support_y, query_x, query_y)


def refmeta_snail(config, params, data):
    """{case: () -> gradient dict}: the whole step (embedding + stack) and the stack alone."""
    import autograd.numpy as anp
    from autograd import grad
    from refmeta import snail
    from refmeta.data import tasks
    episode = tasks.Episode(*data)
    rng = np.random.default_rng(1)
    sequences = rng.standard_normal((SNAIL_EPISODES * N_WAY * SNAIL_QUERIES, config.sequence_length,
                                     config.embedding_dim + N_WAY))
    sequences[:, -1, config.embedding_dim:] = 0.0
    stack = {k: v for k, v in params.items() if not k.startswith("embed.")}
    stack_loss = lambda p: anp.sum(snail.apply(p, sequences, config)[..., -1, :] ** 2)
    # The public loss: its input checks are timed with the step, as in the demo's snail.step.
    cases = {"step": lambda: grad(snail.loss)(params, episode, config),
             "stack": lambda: grad(stack_loss)(stack)}
    return cases, sequences


def torch_snail(torch, config, params, data, sequences):
    """The same two computations in PyTorch eager, written from the paper's Section 3.1 (the
    blocks) and Appendix A (the few-shot model)."""
    import math
    F = torch.nn.functional
    P = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    sx, sy, qx, qy = (torch.tensor(a) for a in data)
    seq = torch.tensor(sequences)
    dilations = config.dilations()

    def stack(h):                                                   # (B, T, C) -> logits (B, T, N)
        for j, spec in enumerate(config.blocks):
            p = lambda name: P[f"block{j}.{name}"]
            if spec[0] == "attention":
                q, k, v = (h @ p(f"{n}.w") + p(f"{n}.b") for n in ("query", "key", "value"))
                logits = q @ k.transpose(1, 2) / math.sqrt(spec[1])
                mask = torch.triu(torch.ones(logits.shape[-2:], dtype=torch.bool), 1)
                h = torch.cat([h, torch.softmax(logits.masked_fill(mask, float("-inf")), -1) @ v], -1)
            else:
                for i, r in enumerate(dilations):
                    x = h.transpose(1, 2)                           # (B, C, T)
                    conv = lambda part: F.conv1d(x, p(f"dense{i}.{part}.w").permute(2, 1, 0),
                                                 p(f"dense{i}.{part}.b"), padding=r, dilation=r)[:, :, :-r]
                    a = torch.tanh(conv("filter")) * torch.sigmoid(conv("gate"))
                    h = torch.cat([h, a.transpose(1, 2)], -1)
        return h @ P["out.w"] + P["out.b"]

    def loss():
        images = torch.cat([sx, qx], 1).flatten(0, 1)             # (B·(NK+Q), 1, H, W)
        z = images
        for i in range(4):
            z = F.conv2d(z, P[f"embed.conv{i}.w"], P[f"embed.conv{i}.b"], padding=1)
            z = F.batch_norm(z, None, None, P[f"embed.bn{i}.scale"], P[f"embed.bn{i}.offset"],
                             training=True, eps=config.bn_eps)
            z = F.max_pool2d(F.relu(z), 2)
        z = (z.flatten(1) @ P["embed.out.w"] + P["embed.out.b"]).view(sx.shape[0], -1, config.embedding_dim)
        n_support, n_query = sx.shape[1], qx.shape[1]
        support = torch.cat([z[:, :n_support], F.one_hot(sy, N_WAY).double()], -1)
        query = torch.cat([z[:, n_support:], torch.zeros(sx.shape[0], n_query, N_WAY)], -1)
        sequences_ = torch.cat([support[:, None].expand(-1, n_query, -1, -1), query[:, :, None]], 2)
        logits = stack(sequences_.flatten(0, 1))[:, -1].view(sx.shape[0], n_query, N_WAY)
        return F.cross_entropy(logits.flatten(0, 1), qy.flatten())

    step_names = sorted(P)
    stack_names = [k for k in step_names if not k.startswith("embed.")]
    return {"step": lambda: torch.autograd.grad(loss(), [P[k] for k in step_names]),
            "stack": lambda: torch.autograd.grad((stack(seq)[:, -1] ** 2).sum(), [P[k] for k in stack_names])}


def snail_part(repeats, results):
    config, params, data = snail_data()
    ours, sequences = refmeta_snail(config, params, data)
    torch = optional("torch")
    theirs = None
    if torch is not None:
        torch.set_default_dtype(torch.float64)
        theirs = torch_snail(torch, config, params, data, sequences)
    n_images = SNAIL_EPISODES * N_WAY * (K_SHOT + SNAIL_QUERIES)
    n_sequences = SNAIL_EPISODES * N_WAY * SNAIL_QUERIES
    titles = {"step": f"SNAIL training step (forward + backward of the query loss): {SNAIL_EPISODES} episodes "
                      f"{N_WAY}-way {K_SHOT}-shot, {SNAIL_QUERIES} query per class = {n_images} images "
                      f"{IMAGE}×{IMAGE} through conv4 max-pool + linear, {n_sequences} sequences of "
                      f"T={config.sequence_length} through the paper's stack, float64",
              "stack": f"SNAIL stack alone, forward + backward: {n_sequences} sequences of T="
                       f"{config.sequence_length}, channels {' → '.join(map(str, snail_channels(config)))}, float64"}
    results["snail"] = {case: against_pytorch(title, ours[case], theirs and theirs[case], repeats)
                        for case, title in titles.items()}


def snail_channels(config):
    from refmeta import snail
    return snail.channel_plan(config)


# ----- Meta Networks -----
METANET_WAY, METANET_QUERIES, METANET_HIDDEN = 20, 1, 32   # the demo's training episode


def metanet_data(seed=0):
    from refmeta import metanet
    rng = np.random.default_rng(seed)
    config = metanet.MetaNetConfig(n_way=METANET_WAY, hidden=METANET_HIDDEN, n_blocks=4, fast_init_scale=0.1,
                                   fast_conv_blocks=0)
    params = metanet.init(rng, config)
    support_x = rng.uniform(0, 1, (METANET_WAY, 1, IMAGE, IMAGE))
    query_x = rng.uniform(0, 1, (METANET_WAY * METANET_QUERIES, 1, IMAGE, IMAGE))
    support_y = rng.permutation(METANET_WAY)
    query_y = np.repeat(np.arange(METANET_WAY), METANET_QUERIES)
    return config, params, (support_x, support_y, query_x, query_y)


def refmeta_metanet(config, params, data):
    from autograd import grad
    from refmeta import contract, metanet
    episode = contract.Episode(*data)
    return lambda: grad(metanet.loss)(params, episode, config)


def torch_metanet(torch, config, params, data):
    """The same step in PyTorch eager, from the paper's Section 3 and the authors' Chainer code:
    a Python loop over support examples (chunks) for the meta-information gradients, detached."""
    import math
    F = torch.nn.functional
    P = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    sx, sy, qx, qy = (torch.tensor(a) for a in data)
    p, hidden = config.preprocess_p, 20

    def features(net, x):
        for i in range(4):
            x = F.max_pool2d(F.relu(F.conv2d(x, P[f"{net}.conv{i}.w"], padding=1)), 2)
        return x.flatten(1)

    def head(net, x):                                          # the slow network's logits
        return F.relu(features(net, x) @ P[f"{net}.fc1.w"]) @ P[f"{net}.out.w"]

    def pre(g):                                                # Andrychowicz et al.'s log and sign
        return torch.stack([torch.log(g.abs().clamp(min=math.exp(-p))) / p, (g * math.exp(p)).clamp(-1, 1)], -1)

    def m(g):
        h = pre(g)
        for i in range(3):
            h = h @ P[f"m.dense.l{i}.w"] + P[f"m.dense.l{i}.b"]
            h = F.relu(h) if i < 2 else h
        return h[..., 0]

    def d(gs):
        state = cell = 0
        for g in gs:
            z = pre(g) @ P["d.dense.wx"] + P["d.dense.b"] + (state @ P["d.dense.wh"] if torch.is_tensor(state) else 0)
            a, i, f, o = z.split(hidden, -1)
            cell = torch.tanh(a) * torch.sigmoid(i) + torch.sigmoid(f) * cell
            state = torch.sigmoid(o) * torch.tanh(cell)
        return (state @ P["d.dense.out.w"] + P["d.dense.out.b"])[..., 0]

    def loss():
        n, chunk = sx.shape[0], sx.shape[0] // min(config.representation_chunks, sx.shape[0])
        task_grads = [torch.autograd.grad(F.cross_entropy(head("rep", sx[s:s + chunk]), sy[s:s + chunk]),
                                          P["rep.fc1.w"])[0].detach() for s in range(0, n, chunk)]
        q_star = d(task_grads)
        slots = [torch.autograd.grad(F.cross_entropy(head("base", sx[i:i + 1]), sy[i:i + 1]),
                                     [P["base.fc1.w"], P["base.out.w"]]) for i in range(n)]
        memory = [m(torch.stack([s[j].detach() for s in slots])) for j in range(2)]   # (N, ...)
        keys, queries = (features("rep", x) @ (P["rep.fc1.w"] + q_star) for x in (sx, qx))
        cos = queries @ keys.T / torch.sqrt((queries ** 2).sum(1)[:, None] * (keys ** 2).sum(1) + config.attention_eps)
        read = [torch.einsum("ln,nij->lij", torch.softmax(cos, 1), slot) for slot in memory]
        h = features("base", qx)[:, None]                      # (L, 1, F)
        h = F.relu(h @ P["base.fc1.w"]) + F.relu(h @ read[0])
        logits = (h @ P["base.out.w"] + h @ read[1])[:, 0]
        return F.cross_entropy(logits, qy, reduction="sum")

    names = sorted(P)
    return lambda: [g if g is not None else torch.zeros_like(P[k]) for k, g in
                    zip(names, torch.autograd.grad(loss(), [P[k] for k in names], allow_unused=True))]


def metanet_part(repeats, results):
    config, params, data = metanet_data()
    ours = refmeta_metanet(config, params, data)
    reference = ours()
    names = sorted(reference)
    variants = [("refmeta (per-example gradients vectorised)", ours)]
    torch = optional("torch")
    if torch is not None:
        torch.set_default_dtype(torch.float64)
        variants.append(("PyTorch eager (per-example loop)", torch_metanet(torch, config, params, data)))
    rows = []
    for label, fn in variants:
        check_same(reference, fn(), names, label)
        rows.append((label, *timed(fn, repeats, warmup=1)))
    print_table(f"MetaNet training step (gradient of L_train, first order): {METANET_WAY}-way 1-shot, "
                f"{METANET_WAY * METANET_QUERIES} queries, {IMAGE}×{IMAGE}, 4 conv blocks × {METANET_HIDDEN} "
                "filters, fast weights on fc1 and out (fast_conv_blocks=0), float64", rows,
                variants[-1][0])
    results["metanet"] = {"load": os.getloadavg(), "rows": rows}


def metric_config():
    """The ProtoNet of part 4: conv4 max-pool with HIDDEN filters on IMAGE×IMAGE, N_WAY-way."""
    from refmeta import protonet
    return protonet.ProtoNetConfig(protonet.conv4_embedding(HIDDEN, image_size=IMAGE), n_way=N_WAY)


def metric_data(seed=0):
    from refmeta import protonet
    rng = np.random.default_rng(seed)
    params = protonet.init(rng, metric_config())
    images = rng.uniform(0, 1, (N_WAY * (K_SHOT + N_QUERY_PER_CLASS), 1, IMAGE, IMAGE))
    return params, images, np.repeat(np.arange(N_WAY), K_SHOT), np.repeat(np.arange(N_WAY), N_QUERY_PER_CLASS)


def refmeta_metric(params, images, support_y, query_y):
    """{case: () -> gradient dict}: the ProtoNet episode and the conv4 pass."""
    import autograd.numpy as anp
    from autograd import grad
    from refmeta import protonet
    from refmeta.contract import Episode
    config, n_support = metric_config(), len(support_y)
    episode = Episode(images[:n_support], support_y, images[n_support:], query_y)
    return {"protonet": lambda: grad(protonet.loss)(params, episode, config),
            "conv4": lambda: grad(lambda p: anp.sum(config.embedding.apply(p, images) ** 2))(params)}


def torch_metric(torch, params, images, support_y, query_y):
    F = torch.nn.functional
    P = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    x, y, names, n_support = torch.tensor(images), torch.tensor(query_y), sorted(P), len(support_y)

    def embed():
        h = x
        for i in range(4):
            h = F.conv2d(h, P[f"conv{i}.w"], P[f"conv{i}.b"], padding=1)
            h = F.batch_norm(h, None, None, P[f"bn{i}.scale"], P[f"bn{i}.offset"], training=True, eps=1e-5)
            h = F.max_pool2d(F.relu(h), 2)
        return h.flatten(1)

    def protonet_loss():
        z = embed()
        prototypes = z[:n_support].view(N_WAY, K_SHOT, -1).mean(1)
        return F.cross_entropy(-((z[n_support:, None] - prototypes[None]) ** 2).sum(-1), y)

    gradient = lambda loss: lambda: torch.autograd.grad(loss(), [P[k] for k in names])
    return {"protonet": gradient(protonet_loss), "conv4": gradient(lambda: (embed() ** 2).sum())}


def metric_part(repeats, results):
    data = metric_data()
    ours, torch = refmeta_metric(*data), optional("torch")
    theirs = None
    if torch is not None:
        torch.set_default_dtype(torch.float64)
        theirs = torch_metric(torch, *data)
    titles = {"protonet": f"ProtoNet training episode, {N_WAY}-way {K_SHOT}-shot, {N_QUERY_PER_CLASS} queries "
                          f"per class, conv4 max-pool, {HIDDEN} filters, forward + backward, float64",
              "conv4": f"conv4 max-pool forward + backward on {N_WAY * (K_SHOT + N_QUERY_PER_CLASS)} images "
                       f"{IMAGE}×{IMAGE}, {HIDDEN} filters, float64"}
    results["metric"] = {case: against_pytorch(title, ours[case], theirs and theirs[case], repeats)
                         for case, title in titles.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--only", choices=("sinusoid", "conv4", "memory", "metric", "snail", "metanet"))
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc thresholds as they are (see keep_freed_memory)")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        return memory_child(args.memory_child[0], int(args.memory_child[1]))
    results = {"start": load(), "malloc": "default" if args.default_malloc else keep_freed_memory()}
    print(f"refmeta benchmarks, {os.cpu_count()} cores, numpy {np.__version__}; {load()}; {results['malloc']}")
    for name in ("torch", "jax"):
        module = optional(name)
        print(f"  peer {name}: {module.__version__ if module else 'not installed'}")
    if args.only in (None, "sinusoid"):
        sinusoid_part(15 if args.quick else 60, results)
    if args.only in (None, "conv4"):
        conv4_part(3 if args.quick else 9, results)
    if args.only in (None, "metric"):
        metric_part(3 if args.quick else 9, results)
    if args.only in (None, "snail"):
        snail_part(3 if args.quick else 9, results)
    if args.only in (None, "metanet"):
        metanet_part(3 if args.quick else 9, results)
    if args.only in (None, "memory"):
        memory_part(results)
    results["end"] = load()
    print(f"\n{results['end']} at the end")
    if args.json:
        from refmeta import disk       # whole or not at all, even on SIGTERM
        disk.replace_atomically(args.json, lambda f: json.dump(results, f, indent=1), "w")


if __name__ == "__main__":
    main()
