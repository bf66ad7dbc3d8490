"""Meta Networks (Munkhdalai & Yu, ICML 2017, arXiv 1703.00837): Section 3, Algorithm 1.

Symbols (θ = {W, Q, Z, G} are the slow weights, trained by Adam on the query loss)
    b, W        base learner and its slow weights             params "base.*"
    u, Q        dynamic representation function, slow        params "rep.*"
    m, Z        example-level fast-weight generator (MLP)     params "m.{conv,dense}.*"
    d, G        task-level fast-weight generator (LSTM)       params "d.{conv,dense}.*"
    W*_i, Q*    example-level / task-level fast weights
    M, R        memory of fast weights / of representations, one slot per support example
    {x'_i, y'_i}_{i=1}^N support set;  {x_i, y_i}_{i=1}^L query ("training") set
    T           representation_chunks: gradients that d observes
    p           preprocess_p (Andrychowicz et al. 2016's p; the authors' k = 7)

Algorithm 1, one episode (equation numbers as in the paper's Section 3):
 1. Task-level fast weights.  Split the support set into T chunks S_t; for each,
        L_t = loss_emb(u(Q, S_t))                          (2)  cross-entropy on u's own head
        ∇_t = ∇_Q L_t                                      (3)
        Q*  = d(G, {pre(∇_t)}_{t=1}^T)                      (4)  LSTM over t, per coordinate
 2. Example-level fast weights, written to memory, for every support example i:
        L_i = loss_task(b(W, x'_i), y'_i),  ∇_i = ∇_W L_i  (9), (10)
        W*_i = m(Z, pre(∇_i)),  M_i ← W*_i                 (1)
        R_i ← r'_i = u(Q, Q*, x'_i)                        (5)
 3. Read and classify, for every query x_i:
        r_i = u(Q, Q*, x_i),  a_i = cos(R, r_i)            (7)  a_ij = r_i·R_j / √(|r_i|²|R_j|² + ε)
        W*_i = softmax(a_i)ᵀ M                              (8)
        P(ŷ_i | x_i) = softmax(b(W, W*_i, x_i))             (11)
 4. L_train = Σ_i loss_task(b(W, W*_i, x_i), y_i); update θ by ∇_θ L_train  (Algorithm 1, 22)
Layer augmentation (Section 3.3): every augmented layer computes φ(W h) + φ(W* h), the output
layer W h + W* h; see ``refmeta.nn.metanet_parts`` with pre(·), m, d and the network.

Gradients as meta information.  ``second_order=False`` (the authors' code: ``.grad`` arrays
are fed to m and d as data) treats ∇_t and ∇_i as constants: θ's gradient flows through
m, d, u, b and the attention but not into the gradients.  ``second_order=True``
differentiates through them (and through pre) exactly.

Per-example gradients, exactly and vectorised.  Σ_i L_i is a sum of independent terms only if
no layer couples examples; b and u have no batch norm, and on top of that every group (one
support example for (10), one chunk for (3)) gets its own copy of the weights,
W ↦ broadcast_to(W, (N, ...)), with data (N, 1, C, H, W).  ∂(Σ_i L_i(W_i))/∂W_i = ∇L_i(W)
then holds by construction, whatever the layers, and one ``grad`` call gives all N.  Queries
are vectorised the same way: the read W*_i carries a query axis L and b runs on (L, 1, C, H, W).

Sources.  The steps, the network (no biases, no batch norm, fc1 taken linearly in u), m, d,
pre(·) with k = 7, the cosine's ε, the chunks and the optimiser follow the authors' released
Chainer code (MetaNetFull.py, utilsf.py, train_omniglot.py); the equation numbers are the
paper's Section 3 as we read it.  The paper's contrastive loss_emb for K > 1 shots is not here.

Conventions (``MetaNetConfig``, recorded by ``conventions()``): see the field comments.
Bad input (shapes, labels outside 0..N−1, NaN/inf, a memory of the wrong size) raises ValueError.
"""

from dataclasses import asdict, dataclass
import math
from typing import Optional

import autograd.numpy as anp
import numpy as np
from autograd import grad, value_and_grad
from autograd.tracer import getval

from refmeta.nn import losses, optimizers, trees
from refmeta.nn.metanet_parts import (base_logits, cosine_attention, example_generator, layer_kind,
                                   learner_init, meta_init, preprocess, read_memory,
                                   representation, slow_logits, softmax, task_generator)


@dataclass(frozen=True)
class MetaNetConfig:
    """Conventions; defaults follow the authors' Omniglot code (MetaNetFull, train_omniglot.py)."""
    preprocess_p: float = 7.0            # p of pre(·) (authors: logAndSign(k=7))
    second_order: bool = False           # differentiate through ∇ (authors: no)
    representation_chunks: int = 5       # T (authors: IT = 5 chunks of N/5 support examples)
    fast_conv_blocks: Optional[int] = None  # top conv blocks augmented; None = all (MetaNetFull)
    attention_eps: float = 1e-6          # ε in the cosine (authors' cosine_similarity2d)
    query_reduction: str = "sum"         # over queries: "sum" (authors) or "mean"
    representation_loss: str = "cross_entropy"  # the paper's 1-shot choice; contrastive (K>1) not here
    meta_lr: float = 1e-3                # Adam (authors: β1 0.9, β2 0.999, ε 1e-8)
    grad_clip_norm: Optional[float] = 10.0  # global-norm clipping (Chainer GradientClipping(10))

    def __post_init__(self):
        for name in ("preprocess_p", "attention_eps", "meta_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value) or value < 0 or (name == "preprocess_p" and value == 0):
                raise ValueError(f"{name} must be a finite number > 0 (≥ 0 for eps, lr); got {value!r}")
        if not isinstance(self.second_order, bool):
            raise TypeError(f"second_order must be True or False; got {self.second_order!r}")
        _check_int("representation_chunks", self.representation_chunks, 1)
        if self.fast_conv_blocks is not None:
            _check_int("fast_conv_blocks", self.fast_conv_blocks, 0)
        _check_choice("query_reduction", self.query_reduction, ("sum", "mean"))
        _check_choice("representation_loss", self.representation_loss, ("cross_entropy",))
        if self.grad_clip_norm is not None and not (isinstance(self.grad_clip_norm, (int, float))
                                                    and self.grad_clip_norm > 0):
            raise ValueError(f"grad_clip_norm must be None or > 0; got {self.grad_clip_norm!r}")

    def conventions(self):
        """Every field, as a JSON-able dict (reference cases record it whole)."""
        return asdict(self)


def init(rng, in_channels=1, hidden=64, n_blocks=4, n_way=5, fast_init_scale=1.0):
    """Host params θ: "base.*" (W), "rep.*" (Q), "m.*" (Z), "d.*" (G); see metanet_parts.

    Init is Chainer 1.x's default (the authors'); ``fast_init_scale`` < 1 shrinks the last
    layers of m and d, hence the first fast weights (the paper gives no initialisation)."""
    base, rep = (learner_init(rng, in_channels, hidden, n_blocks, n_way) for _ in range(2))
    return {**{f"base.{k}": v for k, v in base.items()}, **{f"rep.{k}": v for k, v in rep.items()},
            **meta_init(rng, fast_init_scale)}


def learner(params, prefix):
    """The sub-tree of one network ("base" or "rep") with the prefix removed."""
    return {k[len(prefix) + 1:]: v for k, v in params.items() if k.startswith(prefix + ".")}


def fast_layers(net, config, with_output):
    """Names of the augmented layers: the top ``fast_conv_blocks`` conv blocks, fc1 (and out)."""
    convs = sorted((k for k in net if k.startswith("conv")), key=lambda k: int(k[4:-2]))
    keep = convs if config.fast_conv_blocks is None else convs[max(0, len(convs) - config.fast_conv_blocks):]
    return tuple(keep) + ("fc1.w",) + (("out.w",) if with_output else ())


def with_n_way(params, n_way):
    """θ for an n_way-way task: the first n_way output units of b and u (they are exchangeable)."""
    width = anp.shape(params["base.out.w"])[-1]
    if not isinstance(n_way, int) or not 2 <= n_way <= width:
        raise ValueError(f"n_way must be an integer in 2..{width} (the output units); got {n_way!r}")
    return {k: v[:, :n_way] if k in ("base.out.w", "rep.out.w") else v for k, v in params.items()}


def group_gradients(net, names, x, y, second_order):
    """∇ of the mean cross-entropy of every group, per group: x (G, n, C, H, W), y (G, n)
    -> {name: (G, ...)}, each group on its own copy of the weights (exact per-group gradients)."""
    if not second_order:
        net = {k: getval(v) for k, v in net.items()}
    groups = anp.shape(x)[0]
    copies = {k: anp.broadcast_to(net[k][None], (groups,) + anp.shape(net[k])) for k in names}
    total = lambda c: anp.sum(losses.cross_entropy(slow_logits({**net, **c}, x), y))
    return grad(total)(copies)


def meta_information(params, support_x, support_y, config):
    """The raw loss gradients (3) and (10): {"task": {name: (T, ...)}, "example": {name: (N, ...)}}.

    ∇_t of u's representation loss over T equal chunks of the support set (in order), ∇_i of b's
    task loss for every support example.  Constants unless ``config.second_order``."""
    _check_episode(params, support_x, support_y)
    n = anp.shape(support_x)[0]
    chunks = min(config.representation_chunks, n)
    if n % chunks:
        raise ValueError(f"representation_chunks={config.representation_chunks} must divide the "
                         f"{n} support examples evenly (or exceed them); got remainder {n % chunks}")
    rep, base = learner(params, "rep"), learner(params, "base")
    x = anp.reshape(support_x, (chunks, n // chunks) + anp.shape(support_x)[1:])
    y = anp.reshape(support_y, (chunks, n // chunks))
    return {"task": group_gradients(rep, fast_layers(rep, config, False), x, y, config.second_order),
            "example": group_gradients(base, fast_layers(base, config, True), support_x[:, None],
                                       support_y[:, None], config.second_order)}


def task_fast_weights(params, task_gradients, config):
    """Q* = d(G, {pre(∇_t)}) (4): {name: weight} for u's augmented layers."""
    return {k: task_generator(params, layer_kind(k), preprocess(g, config.preprocess_p))
            for k, g in task_gradients.items()}


def example_fast_weights(params, example_gradients, config):
    """The memory M, slot i = m(Z, pre(∇_i)) (1): {name: (N, ...)}."""
    return {k: example_generator(params, layer_kind(k), preprocess(g, config.preprocess_p))
            for k, g in example_gradients.items()}


def episode_outputs(params, support_x, support_y, query_x, config, meta_info=None):
    """Every intermediate of one episode (Algorithm 1), a dict: meta_info (the gradients),
    task_fast_weights Q*, memory M, support_representations R (N, F), query_representations
    (L, F), attention a (L, N), read W*_i {name: (L, ...)}, logits (L, n_way).

    ``meta_info`` (from ``meta_information``) may be given to hold the gradients fixed."""
    n_way = _check_episode(params, support_x, support_y, query_x)
    if meta_info is None:
        meta_info = meta_information(params, support_x, support_y, config)
    q_star = task_fast_weights(params, meta_info["task"], config)
    memory = example_fast_weights(params, meta_info["example"], config)
    rep = learner(params, "rep")
    keys = representation(rep, support_x, q_star)                       # (N, F)
    queries = representation(rep, query_x, q_star)                      # (L, F)
    attention = cosine_attention(keys, queries, config.attention_eps)   # (L, N)
    read = read_memory(memory, softmax(attention))                      # {name: (L, ...)}
    logits = base_logits(learner(params, "base"), query_x[:, None], read)  # (L, 1, n_way)
    return {"meta_info": meta_info, "task_fast_weights": q_star, "memory": memory,
            "support_representations": keys, "query_representations": queries,
            "attention": attention, "read": read,
            "logits": anp.reshape(logits, (anp.shape(query_x)[0], n_way))}


def predict(params, support_x, support_y, query_x, config, meta_info=None):
    """Logits (L, n_way) for the queries of one episode."""
    return episode_outputs(params, support_x, support_y, query_x, config, meta_info)["logits"]


def episode_loss(params, episode, config, meta_info=None):
    """L_train of one episode: query cross-entropy, summed or averaged as configured."""
    logits = predict(params, episode.support_x, episode.support_y, episode.query_x, config, meta_info)
    _check_labels(episode.query_y, anp.shape(logits), "query")
    return losses.cross_entropy(logits, episode.query_y, config.query_reduction)


def clip_by_global_norm(grads, max_norm):
    """g · min(1, max_norm / ‖g‖) with ‖g‖ over every leaf (Chainer's GradientClipping)."""
    if max_norm is None:
        return grads
    norm = math.sqrt(float(trees.vdot(grads, grads)))
    return trees.scale(grads, max_norm / norm) if norm > max_norm else grads


def meta_step(params, opt_state, episode, config):
    """One update of θ (Algorithm 1, line 22): Adam on the clipped gradient of L_train.

    Returns (new_params, new_opt_state, loss); start with ``optimizers.adam_init(params)``."""
    loss, grads = value_and_grad(episode_loss)(params, episode, config)
    grads = clip_by_global_norm(grads, config.grad_clip_norm)
    new_params, new_state = optimizers.adam_update(params, grads, opt_state, lr=config.meta_lr)
    return new_params, new_state, loss


def _check_episode(params, support_x, support_y, query_x=None):
    """Shapes, finiteness and labels of one episode; returns n_way."""
    if any(k not in params for k in ("base.out.w", "rep.out.w", "base.conv0.w")):
        raise ValueError("params lack base.out.w, rep.out.w or base.conv0.w: build them with metanet.init")
    n_way, channels = anp.shape(params["base.out.w"])[-1], anp.shape(params["base.conv0.w"])[1]
    if anp.shape(params["rep.out.w"])[-1] != n_way:
        raise ValueError(f"b has {n_way} output units but u has {anp.shape(params['rep.out.w'])[-1]}")
    for name, x in (("support_x", support_x), ("query_x", query_x)):
        if x is not None and (anp.ndim(x) != 4 or anp.shape(x)[1] != channels):
            raise ValueError(f"{name} must be (n, C={channels}, H, W); got shape {anp.shape(x)}")
        if x is not None and not bool(anp.all(anp.isfinite(getval(x)))):
            raise ValueError(f"{name} contains NaN or inf")
    if query_x is not None and anp.shape(support_x)[2:] != anp.shape(query_x)[2:]:
        raise ValueError(f"support and query images differ: {anp.shape(support_x)} vs {anp.shape(query_x)}")
    _check_labels(support_y, (anp.shape(support_x)[0], n_way), "support")
    return n_way


def _check_labels(y, logits_shape, which):
    n, n_way = logits_shape
    if anp.shape(y) != (n,) or not np.issubdtype(getval(y).dtype, np.integer):
        raise ValueError(f"{which}_y must be ({n},) integer labels; got shape {anp.shape(y)}, "
                         f"dtype {getattr(getval(y), 'dtype', None)}")
    low, high = (int(anp.min(y)), int(anp.max(y))) if n else (0, 0)
    if low < 0 or high >= n_way:
        raise ValueError(f"{which} labels must be in 0..{n_way - 1} (n_way={n_way}); "
                         f"got values from {low} to {high}")


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}")
