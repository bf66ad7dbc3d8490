"""The PyTorch peers of bench.py's workloads, in eager mode (and ``torch.func`` for the sinusoid),
written from the papers, on the same params and data as refmeta (``bench_workloads``).

Each ``torch_*`` takes the imported ``torch`` module and host arrays and returns a function of
no arguments that computes the gradient once: a list of tensors in sorted parameter-name order
(a dict for ``torch.func``).  Tensors keep the arrays' dtype: float32 data, float32 arithmetic.
"""

import math

from bench_workloads import K_SHOT, N_TASKS, N_WAY


# ----- sinusoid MAML -----
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


# ----- conv4 second-order MAML -----
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




# ----- the conv4 max-pool pass and the ProtoNet episode -----
def torch_conv4_maxpool(torch, P, x, eps=1e-5):
    """conv4 max-pool (batch norm with scale and offset, as BatchNorm2d in training mode)."""
    F = torch.nn.functional
    h = x
    for i in range(4):
        h = F.conv2d(h, P[f"conv{i}.w"], P[f"conv{i}.b"], padding=1)
        h = F.batch_norm(h, None, None, P[f"bn{i}.scale"], P[f"bn{i}.offset"], training=True, eps=eps)
        h = F.max_pool2d(F.relu(h), 2)
    return h.flatten(1)                                         # (n, 64)


def torch_conv4_pass(torch, params, images, support_y=None, query_y=None, bn_eps=1e-5):
    """The gradient of Σ z², z = conv4 max-pool (images)."""
    P = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    x, names = torch.tensor(images), sorted(P)
    return lambda: torch.autograd.grad((torch_conv4_maxpool(torch, P, x, bn_eps) ** 2).sum(),
                                       [P[k] for k in names])


def torch_protonet(torch, params, images, support_y, query_y, bn_eps=1e-5):
    """The gradient of the ProtoNet loss (Snell et al. 2017, Algorithm 1) on one episode."""
    F = torch.nn.functional
    P = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    x, y, names, n_support = torch.tensor(images), torch.tensor(query_y), sorted(P), len(support_y)

    def loss():
        z = torch_conv4_maxpool(torch, P, x, bn_eps)
        prototypes = z[:n_support].view(N_WAY, K_SHOT, -1).mean(1)
        return F.cross_entropy(-((z[n_support:, None] - prototypes[None]) ** 2).sum(-1), y)
    return lambda: torch.autograd.grad(loss(), [P[k] for k in names])


# ----- SNAIL and Meta Networks: one training step each -----
def torch_snail(torch, config, params, data, sequences):
    """The same two computations in PyTorch eager, written from the paper's Section 3.1 (the
    blocks) and Appendix A (the few-shot model)."""
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




def torch_metanet(torch, config, params, data):
    """The same step in PyTorch eager, from the paper's Section 3 and the authors' Chainer code:
    a Python loop over support examples (chunks) for the meta-information gradients, detached."""
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
