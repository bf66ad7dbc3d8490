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

Algorithm 1, one episode (the equation numbers are as read from the authors' code, and are
unverified against the paper's text):
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

Episodes.  One task: support_x (N, C, H, W) holding every class 0..n_way−1, query_x (L, C, H,
W); or a meta-batch of T such tasks (T, N, C, H, W), run one task after another, whose loss is
the mean over tasks of each task's L_train (as SNAIL's mean over episodes; T = 1 is the task's); H and W halve to 1 in the n_blocks 2×2 max-pools, rounding down
(``pool_rounding`` "floor": 28 → 14 → 7 → 3 → 1) or up ("ceil", Chainer's default and so the
authors': 28 → 14 → 7 → 4 → 2 → 1, their 5 blocks).
Step 1's chunks are T = min(representation_chunks, N) runs of N/T consecutive support
examples, equal as the authors': a T that does not divide N is refused (ValueError).

Gradients as meta information.  ``second_order=False`` (the authors' code feeds ``.grad`` arrays
to m and d as data) holds ∇_t and ∇_i constant; ``second_order=True`` differentiates through them.

Per-example gradients, exactly and vectorised (``group_gradients``).  Every group (one support
example for (10), one chunk for (3)) gets its own copy of the weights, W ↦ broadcast_to(W,
(N, ...)), with data (N, 1, C, H, W); then ∂(Σ_i L_i(W_i))/∂W_i = ∇L_i(W) whatever the layers
(b and u have no batch norm either), and one ``grad`` call gives all N.  Queries likewise: W*_i
has a query axis L.

Sources.  The steps, the network (no biases, no batch norm, fc1 taken linearly in u; 5 blocks
with ceil pools: n_blocks=5, pool_rounding="ceil"), m, d, pre(·) with k = 7, the cosine's ε,
the chunks and the optimiser follow the authors' released Chainer code (MetaNetFull.py,
utilsf.py, train_omniglot.py); the paper's contrastive loss_emb for K > 1 shots is not here.
"""

from dataclasses import dataclass
from typing import Optional

import autograd.numpy as anp
import numpy as np

from refmeta import checks, contract, door
from refmeta.nn import losses, trees
from refmeta.nn.metanet_parts import (base_logits, cosine_attention, example_generator, group_gradients,
                                      image_sides, layer_kind, learner_init, meta_init, preprocess,
                                      read_memory, representation, softmax, task_generator)

OUTPUT_LAYERS = ("base.out.w", "rep.out.w")


@dataclass(frozen=True)
class MetaNetConfig:
    """The sizes and conventions; defaults from the authors' code (MetaNetFull, train_omniglot.py)
    except the learner's 4 floor-pooled blocks: theirs is n_blocks=5, pool_rounding="ceil"."""
    n_way: int = 5                       # output units of b and u
    in_channels: int = 1                 # C of the images
    hidden: int = 64                     # conv filters F (= the width of fc1)
    n_blocks: int = 4                    # conv blocks, H and W halve to 1 (authors: 5)
    pool_rounding: str = "floor"         # their 2×2 max-pools' "floor" or "ceil" (authors: ceil)
    fast_init_scale: float = 1.0         # × m's and d's last-layer init (1: Chainer's, the authors')
    preprocess_p: float = 7.0            # p of pre(·) (authors: logAndSign(k=7))
    second_order: bool = False           # differentiate through ∇ (authors: no)
    representation_chunks: int = 5       # T (authors: IT = 5 chunks of N/5 support examples)
    fast_conv_blocks: Optional[int] = None  # top conv blocks augmented (≤ n_blocks); None: all, MetaNetFull
    attention_eps: float = 1e-6          # ε in the cosine (authors' cosine_similarity2d)
    query_reduction: str = "sum"         # over queries: "sum" (authors) or "mean"
    representation_loss: str = "cross_entropy"  # the paper's 1-shot choice; contrastive (K>1) not here
    meta_lr: float = 1e-3                # Adam (authors: β1 0.9, β2 0.999, ε 1e-8)
    grad_clip_norm: Optional[float] = 10.0  # global-norm clipping (Chainer GradientClipping(10))

    def __post_init__(self):
        checks.plain_fields(self)
        for name, minimum in (("n_way", 2), ("in_channels", 1), ("hidden", 1), ("n_blocks", 1),
                              ("representation_chunks", 1)):
            checks.integer(name, getattr(self, name), minimum)
        if self.fast_conv_blocks is not None:
            checks.integer("fast_conv_blocks", self.fast_conv_blocks, 0, self.n_blocks)
        for name in ("preprocess_p", "attention_eps"):
            checks.positive(name, getattr(self, name))
        for name in ("fast_init_scale", "meta_lr"):
            checks.nonnegative(name, getattr(self, name))
        if self.grad_clip_norm is not None:
            checks.positive("grad_clip_norm", self.grad_clip_norm)
        checks.boolean("second_order", self.second_order)
        checks.choice("query_reduction", self.query_reduction, ("sum", "mean"))
        checks.choice("pool_rounding", self.pool_rounding, ("floor", "ceil"))
        checks.choice("representation_loss", self.representation_loss, ("cross_entropy",))

    def conventions(self):
        """Every field, as a JSON-able dict (reference cases record it whole)."""
        return door.conventions(self)


def init(rng, config):
    """Host params θ: "base.*" (W), "rep.*" (Q), "m.*" (Z), "d.*" (G); see metanet_parts.

    Init is Chainer 1.x's default (the authors'); ``fast_init_scale`` < 1 shrinks the last
    layers of m and d, hence the first fast weights (the paper gives no initialisation)."""
    checks.generator(rng)
    checks.instance("config", config, MetaNetConfig)
    checks.fits(f"n_way={config.n_way}, hidden={config.hidden}", "MetaNet's float64 params",
                8 * parameter_count(config))
    base, rep = (learner_init(rng, config.in_channels, config.hidden, config.n_blocks, config.n_way)
                 for _ in range(2))
    return {**{f"base.{k}": v for k, v in base.items()}, **{f"rep.{k}": v for k, v in rep.items()},
            **meta_init(rng, config.fast_init_scale)}


def parameter_count(config):
    """How many numbers ``init`` makes, from the config alone: b and u, then m and d (fixed)."""
    c, f, n_blocks = config.in_channels, config.hidden, config.n_blocks
    learner = f * c * 9 + (n_blocks - 1) * f * f * 9 + f * f + f * config.n_way   # conv, fc1, out
    return 2 * learner + sum(w.size for w in meta_init(np.random.default_rng(0)).values())


def init_state(params, config):
    """State: Adam's zero moments and step 0 for θ; no running statistics (no batch norm)."""
    _check(params, None, config)
    return door.init_state(params)


def with_n_way(params, n_way):
    """θ for an n_way-way task: the first n_way output units of b and u (they are exchangeable);
    predict with ``dataclasses.replace(config, n_way=n_way)`` (train 20-way, test 5-way)."""
    checks.instance("params", params, dict)
    for key in OUTPUT_LAYERS:
        if key not in params or anp.ndim(params[key]) != 2:
            raise ValueError(f"params[{key!r}] must be metanet.init's output layer (F, units); got "
                             f"{anp.shape(params[key]) if key in params else 'no such key'}")
    checks.integer("n_way", n_way, 2, min(anp.shape(params[key])[1] for key in OUTPUT_LAYERS))
    return {k: v[:, :n_way] if k in OUTPUT_LAYERS else v for k, v in params.items()}


def fast_layers(net, config, with_output):
    """Names of the augmented layers: the top ``fast_conv_blocks`` conv blocks, fc1 (and out)."""
    convs = sorted((k for k in net if k.startswith("conv")), key=lambda k: int(k[4:-2]))
    keep = convs if config.fast_conv_blocks is None else convs[len(convs) - config.fast_conv_blocks:]
    return tuple(keep) + ("fc1.w",) + (("out.w",) if with_output else ())


def meta_information(params, support_x, support_y, config):
    """The raw loss gradients (3) and (10), {"task": {name: (T, ...)}, "example": {name: (N, ...)}}:
    ∇_t of u's loss (2) on T equal chunks of the support set (in order), ∇_i of b's loss (9) on
    support example i.  Constants unless ``config.second_order``."""
    n = anp.shape(support_x)[0]
    chunks = min(config.representation_chunks, n)                   # T, dividing N
    rep, base = trees.subtree(params, "rep"), trees.subtree(params, "base")
    x = anp.reshape(support_x, (chunks, n // chunks) + anp.shape(support_x)[1:])   # (T, N/T, C, H, W)
    y = anp.reshape(support_y, (chunks, n // chunks))
    return {"task": group_gradients(rep, fast_layers(rep, config, False), x, y, config.second_order,
                                    config.pool_rounding),
            "example": group_gradients(base, fast_layers(base, config, True), support_x[:, None],
                                       support_y[:, None], config.second_order, config.pool_rounding)}


def task_fast_weights(params, task_gradients, config):
    """Q* = d(G, {pre(∇_t)}) (4): {name: weight} for u's augmented layers."""
    return {k: task_generator(params, layer_kind(k), preprocess(g, config.preprocess_p))
            for k, g in task_gradients.items()}


def example_fast_weights(params, example_gradients, config):
    """The memory M, slot i = m(Z, pre(∇_i)) (1): {name: (N, ...)}."""
    return {k: example_generator(params, layer_kind(k), preprocess(g, config.preprocess_p))
            for k, g in example_gradients.items()}


def episode_outputs(params, episode, config, *, meta_info=None):
    """Every intermediate of one episode, no task axis (Algorithm 1), a dict: meta_info (the
    gradients; give ``meta_information``'s to hold them fixed), task_fast_weights Q*, memory M,
    support_representations R (N, F), query_representations (L, F), attention a (L, N),
    read W*_i {name: (L, ...)}, logits (L, n_way)."""
    episode, meta_info, _ = _check(params, episode, config, meta_info=meta_info, max_task_axes=0)
    return _outputs(params, *_task(episode, meta_info, 0), config)


def predict(params, episode, config, *, meta_info=None, state=None):
    """Logits (L, n_way) of the queries of one episode (11), (T, L, n_way) of a meta-batch."""
    episode, meta_info, single = _check(params, episode, config, state, meta_info=meta_info)
    logits = _logits(params, episode, config, meta_info)
    checks.finite_results("metanet.predict", [("the logits", logits)],
                          _explain(params, episode, config, meta_info))
    return logits[0] if single else logits


def loss(params, episode, config, *, meta_info=None, state=None):
    """L_train, the query cross-entropy summed or averaged as configured; a meta-batch's task mean."""
    episode, meta_info, _ = _check(params, episode, config, state, meta_info=meta_info)
    value = _loss(params, episode, config, meta_info)
    checks.finite_results("metanet.loss", [("the loss L_train", value)],
                          _explain(params, episode, config, meta_info))
    return value


def step(params, state, episode, config):
    """One update of θ (Algorithm 1, line 22): Adam (meta_lr) on the clipped gradient of L_train;
    returns ``contract.Step(params, state, loss)`` with the loss at the params given."""
    episode, _, _ = _check(params, episode, config, state, step=True)
    return door.step("metanet.step", ("the loss", "the gradient"),
                     lambda p, moments: _loss(p, episode, config), params, state, config.meta_lr,
                     _explain(params, episode, config), clip_norm=config.grad_clip_norm)


def _logits(params, episode, config, meta_info=None):
    """(11) for every task, one task after another: (T, L, n_way)."""
    return anp.stack([_outputs(params, *_task(episode, meta_info, t), config)["logits"]
                      for t in range(anp.shape(episode.support_x)[0])])


def _loss(params, episode, config, meta_info=None):
    """The mean over the tasks of L_train, each task's query cross-entropy (T,)."""
    return anp.mean(losses.cross_entropy(_logits(params, episode, config, meta_info),
                                         episode.query_y, config.query_reduction, check=False))


def _explain(params, episode, config, meta_info=None):
    """The failure path: each task's intermediates, in order, as ``episode_outputs`` names them."""
    def quantities():
        for t in range(anp.shape(episode.support_x)[0]):
            out = _outputs(params, *_task(episode, meta_info, t), config)
            named = {f"meta_info[{level!r}]": g for level, g in out.pop("meta_info").items()}
            yield from ((f"in task {t}, {name}", value) for name, value in {**named, **out}.items())
    return quantities


def _task(episode, meta_info, t):
    """Task t of a meta-batch: (its Episode, its meta_info or None)."""
    return (contract.Episode(*(field[t] for field in episode)),
            None if meta_info is None else {level: {k: v[t] for k, v in group.items()}
                                            for level, group in meta_info.items()})


def _outputs(params, episode, meta_info, config):
    if meta_info is None:
        meta_info = meta_information(params, episode.support_x, episode.support_y, config)
    q_star = task_fast_weights(params, meta_info["task"], config)
    memory = example_fast_weights(params, meta_info["example"], config)
    rep, base, rounding = trees.subtree(params, "rep"), trees.subtree(params, "base"), config.pool_rounding
    keys = representation(rep, episode.support_x, q_star, rounding)     # (5): R, (N, F)
    queries = representation(rep, episode.query_x, q_star, rounding)   # r_i, (L, F)
    attention = cosine_attention(keys, queries, config.attention_eps)   # (7): a, (L, N)
    read = read_memory(memory, softmax(attention))                      # (8): {name: (L, ...)}
    logits = base_logits(base, episode.query_x[:, None], read, rounding)  # (11): (L, 1, n_way)
    return {"meta_info": meta_info, "task_fast_weights": q_star, "memory": memory,
            "support_representations": keys, "query_representations": queries, "attention": attention,
            "read": read, "logits": anp.reshape(logits, (anp.shape(episode.query_x)[0], config.n_way))}


def _check(params, episode, config, state=None, step=False, meta_info=None, max_task_axes=1):
    """The door: the config, params, the State (``step``), the episode, one task or a meta-batch
    whose images end at 1×1 and whose T divides N, meta_info's shapes; returns (the episode and
    meta_info with a task axis, whether the episode had none)."""
    checks.instance("config", config, MetaNetConfig)
    shapes = checks.init_shapes(init, config)
    checks.params(params, shapes)
    if episode is None:
        return None, None, False
    checks.training_state(state, params, {}, step)
    episode = checks.episode(episode, n_way=config.n_way, max_task_axes=max_task_axes)
    episode, single = door.as_meta_batch(episode, config.n_way)
    n_tasks, n, *image = anp.shape(episode.support_x)
    low, high = image_sides(config.n_blocks, config.pool_rounding)
    if len(image) != 3 or image[0] != config.in_channels or not all(low <= s <= high for s in image[1:]):
        raise ValueError(f"images must be (C={config.in_channels}, H, W), H and W in {low}..{high} to end at "
                         f"1×1 after n_blocks={config.n_blocks} 2×2 max-pools ({config.pool_rounding}); "
                         f"got support_x {anp.shape(episode.support_x)[single:]}")
    chunks = min(config.representation_chunks, n)
    if n % chunks:
        raise ValueError(f"representation_chunks={config.representation_chunks} must divide the {n} "
                         f"support examples (or be at least {n}): the T chunks of (3) are equal")
    if meta_info is not None:                                          # as meta_information's
        lead = (n_tasks,) * (not single)
        rep, base = trees.subtree(shapes, "rep"), trees.subtree(shapes, "base")
        expected = {"task": {k: lead + (chunks,) + rep[k] for k in fast_layers(rep, config, False)},
                    "example": {k: lead + (n,) + base[k] for k in fast_layers(base, config, True)}}
        checks.instance("meta_info", meta_info, dict)
        for level in ("example", "task"):
            checks.params(meta_info.get(level), expected[level], f"meta_info[{level!r}]")
        if single:
            meta_info = {level: {k: v[None] for k, v in meta_info[level].items()} for level in expected}
    return episode, meta_info, single
