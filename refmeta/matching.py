"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016).

Section 2.1 (the model), Appendix A.1 (f, the attention LSTM), A.2 (g, the bidirectional LSTM).

Symbols
    S = ((x_i, y_i)), i = 1..|S|   the support set, a sequence in the order given
    x̂                              a query point
    f′, g′     config.embedding    base embeddings, a ``contract.Model`` (default: ProtoNet's conv4)
    g(x_i, S), f(x̂, S)             the support and query embeddings: g′, f′ without FCE
    c(u, v)    distance "cosine"   uᵀv / (‖u‖ ‖v‖), both sides normalised
    K          read_steps          read steps of the attention LSTM
    s          attention_scale     scales the cosines inside the softmax of (A); the paper has s = 1
    d          embedding_dim       f′'s output size; every LSTM state has size d (forced by (G), (F2))

Model (Section 2.1.1, Eqs. 1-2).  s enters in one place, (A): a = softmax(s·c) over the support
set, i.e. s multiplies every cosine before the softmax over j = 1..|S| (FCE's (R) has no s):
    a(x̂, x_i) = exp s·c(f(x̂, S), g(x_i, S)) / Σ_j exp s·c(f(x̂, S), g(x_j, S))    (A)
    p(y = k | x̂, S) = Σ_{i: y_i = k} a(x̂, x_i)                                     (P)
    J = mean over the queries of −log p(y | x̂, S)
(P) is never formed and no softmax is put on top of it: with the per-class logsumexp
    L_k = log Σ_{i: y_i = k} exp s·c(f(x̂), g(x_i)),  log p(y = k | x̂, S) = L_k − log Σ_k′ exp L_k′   (L)
because Σ_k′ exp L_k′ = Σ_j exp s·c_j (every x_j is in one class).  (L) is log (P), computed stably.

Full context embeddings, support side (A.2), with LSTM(x, h, c) = ``layers.lstm_cell``:
    h⃗_i, c⃗_i = LSTM(g′(x_i), h⃗_{i−1}, c⃗_{i−1})     i = 1..|S|,   h⃗_0 = c⃗_0 = 0
    h⃖_i, c⃖_i = LSTM(g′(x_i), h⃖_{i+1}, c⃖_{i+1})     i = |S|..1,   h⃖_{|S|+1} = c⃖_{|S|+1} = 0
    g(x_i, S) = h⃗_i + h⃖_i + g′(x_i)                                                 (G)
query side (A.1), k = 1..K:
    r_{k−1} = Σ_i softmax_i(h_{k−1}ᵀ g(x_i, S)) g(x_i, S)                            (R)
    ĥ_k, c_k = LSTM(f′(x̂), [h_{k−1}, r_{k−1}], c_{k−1})    (recurrent input of size 2d)  (F1)
    h_k = ĥ_k + f′(x̂),    f(x̂, S) = h_K                                               (F2)

Conventions the paper leaves open (``MatchingConfig``, recorded by ``conventions()``):
    fce               False (default) / True;  read_steps K: 5 (the paper gives no value)
    share_embedding   True: f′ = g′, one network ("embed.*"); False: "f.*" and "g.*"
    attention_h0      "embedding" (default): h_0 = f′(x̂), i.e. ĥ_0 = 0 in (F2); "zeros": h_0 = 0.
                      c_0 = 0 either way; the BiLSTM starts from zeros at both ends
    distance          "cosine" (the paper), or any of ``protonet.DISTANCES``: the attention
                      logits are −s·d, and −(1 − cos) gives the same softmax as c
    attention_scale   s = 1.0 (the paper).  Cosines lie in [−1, 1], so with s = 1 the attention is nearly
                      uniform over a large support set; implementations differ (some scale, some learn s)
    learn_attention_scale  False (the paper).  True: s = exp(ρ), ρ = "attention.log_scale" learned from
                      ρ = log(attention_scale) at init, as TADAM's metric scale (Oreshkin et al. 2018)
    joint_embedding   True: with f′ = g′, support and query go through the net in one call
    task_reduction    "mean" or "sum" over a leading task axis
    support order     the BiLSTM reads S in the order given (class-major in refmeta.data.omniglot
                      episodes); shuffle the episode first for another order
Params: {"embed.*"} or {"f.*", "g.*"}; "attention.log_scale" (shape ()) if learned; with FCE
"fce.fw.*", "fce.bw.*" (d → d), "fce.att.*" (input d, recurrent 2d → d), as ``layers.lstm_init``.
``step``: Adam on J (meta_lr).  Batch norm as ProtoNet's (its docstring): ``step`` tracks the
statistics of f′ and g′ in state.bn, named as their params ("embed.bn0.mean", or "f.…", "g.…"),
and ``loss`` and ``predict`` read them in the embedding's bn_mode "running".
"""

from dataclasses import dataclass

import autograd.numpy as anp
import numpy as np
from autograd.tracer import getval

from refmeta import checks, door
from refmeta.contract import TASK_REDUCTIONS, Model
from refmeta.nn import layers, losses, trees
from refmeta.protonet import DISTANCES, conv4_embedding, distance_matrix

ATTENTION_H0 = ("embedding", "zeros")
LOG_SCALE = "attention.log_scale"


@dataclass(frozen=True)
class MatchingConfig:
    embedding: Model = conv4_embedding()
    embedding_dim: int = 64
    n_way: int = 5
    fce: bool = False
    read_steps: int = 5
    share_embedding: bool = True
    attention_h0: str = "embedding"
    distance: str = "cosine"
    attention_scale: float = 1.0
    learn_attention_scale: bool = False
    joint_embedding: bool = True
    task_reduction: str = "mean"
    meta_lr: float = 1e-3

    def __post_init__(self):
        checks.plain_fields(self)
        checks.instance("embedding", self.embedding, Model)
        checks.integer("embedding_dim", self.embedding_dim, minimum=1)
        checks.integer("n_way", self.n_way, minimum=2)
        for name in ("fce", "share_embedding", "learn_attention_scale", "joint_embedding"):
            checks.boolean(name, getattr(self, name))
        checks.integer("read_steps", self.read_steps, minimum=0)
        checks.choice("attention_h0", self.attention_h0, ATTENTION_H0)
        checks.choice("distance", self.distance, DISTANCES)
        checks.positive("attention_scale", self.attention_scale)
        checks.choice("task_reduction", self.task_reduction, TASK_REDUCTIONS)
        checks.nonnegative("meta_lr", self.meta_lr)

    def conventions(self):
        return door.conventions(
            self, lstm_state_size="d, the embedding size (forced by (G), (F2))", attention_c0="zeros",
            bilstm_initial_state="zeros", support_order="as given", lstm_gate_order="i, f, g, o",
            loss="mean over queries of -log p, per-class logsumexp (L)")


# ----- the model: (G), (R), (F1), (F2), (A), (L); no checks -----
def base_embeddings(params, episode, config, embed=None):
    """(g′(support_x) (..., n_s, d), f′(query_x) (..., n_q, d)); ``embed(net, x)`` applies the net
    whose params are named "embed.*", "f.*" or "g.*" (default: config.embedding.apply)."""
    embed = embed or (lambda net, x: config.embedding.apply(trees.subtree(params, net), x))
    support_x, query_x = episode.support_x, episode.query_x
    if not config.share_embedding:
        return embed("g", support_x), embed("f", query_x)
    if not config.joint_embedding:
        return embed("embed", support_x), embed("embed", query_x)
    n_support = anp.shape(episode.support_y)[-1]
    z = embed("embed", anp.concatenate([support_x, query_x], axis=anp.ndim(episode.support_y) - 1))
    return z[..., :n_support, :], z[..., n_support:, :]


def _lstm(params, name, x, h, c):
    return layers.lstm_cell(x, h, c, *(params[f"fce.{name}.{k}"] for k in ("w_x", "w_h", "b")))


def support_fce(params, g_prime):
    """(G): g(x_i, S) for every support point, g_prime (..., n_s, d) -> (..., n_s, d)."""
    steps = [g_prime[..., i:i + 1, :] for i in range(anp.shape(g_prime)[-2])]   # each (..., 1, d)
    outputs = {}
    for direction, order in (("fw", steps), ("bw", steps[::-1])):
        h = c = anp.zeros_like(steps[0])
        outputs[direction] = []
        for x in order:
            h, c = _lstm(params, direction, x, h, c)
            outputs[direction].append(h)
    forward = anp.concatenate(outputs["fw"], axis=-2)
    backward = anp.concatenate(outputs["bw"][::-1], axis=-2)
    return forward + backward + g_prime


def query_fce(params, f_prime, g, config):
    """(R), (F1), (F2): f(x̂, S) = h_K, f_prime (..., n_q, d), g (..., n_s, d) -> (..., n_q, d)."""
    h = f_prime if config.attention_h0 == "embedding" else anp.zeros_like(f_prime)
    c = anp.zeros_like(f_prime)
    for _ in range(config.read_steps):
        a = anp.exp(losses.log_softmax(anp.matmul(h, anp.swapaxes(g, -1, -2))))   # (..., n_q, n_s)
        r = anp.matmul(a, g)                                                       # (R)
        h_hat, c = _lstm(params, "att", f_prime, anp.concatenate([h, r], axis=-1), c)   # (F1)
        h = h_hat + f_prime                                                        # (F2)
    return h


def full_context_embeddings(params, g_prime, f_prime, config):
    """(g(x_i, S), f(x̂, S)): the FCE of the docstring, or (g′, f′) unchanged when config.fce is off."""
    if not config.fce:
        return g_prime, f_prime
    g = support_fce(params, g_prime)
    return g, query_fce(params, f_prime, g, config)


def attention(f, g, distance="cosine", scale=1.0):
    """(A): a(x̂, x_i) = softmax_i(−s·d(f(x̂), g(x_i))), (..., n_q, n_s); rows sum to 1."""
    return anp.exp(losses.log_softmax(-scale * distance_matrix(f, g, distance)))


def class_log_probabilities(f, g, support_y, n_way, distance="cosine", scale=1.0):
    """(L): log p(y = k | x̂, S) = L_k − log Σ_k′ exp L_k′ from per-class logsumexps, (..., n_q, N)."""
    scores = -scale * distance_matrix(f, g, distance)[..., :, None, :]   # (..., n_q, 1, n_s)
    one_hot = losses.one_hot(support_y, n_way, g, check=False)             # (..., n_s, N)
    in_class = anp.swapaxes(one_hot, -1, -2)[..., None, :, :] > 0          # (..., 1, N, n_s)
    class_max = np.where(in_class, getval(scores), -np.inf).max(axis=-1, keepdims=True)  # a constant
    shifted = anp.where(in_class, scores - class_max, 0.0)                # (..., n_q, N, n_s)
    per_class = class_max[..., 0] + anp.log(anp.sum(in_class * anp.exp(shifted), axis=-1))  # L_k
    return losses.log_softmax(per_class)                                  # L_k − logsumexp_k′ L_k′


def log_probabilities(params, g_prime, support_y, f_prime, n_way, config):
    """log p(y = k | x̂, S) from the base embeddings: FCE if on, then (L) with s; (..., n_q, N)."""
    g, f = full_context_embeddings(params, g_prime, f_prime, config)
    s = anp.exp(params[LOG_SCALE]) if config.learn_attention_scale else config.attention_scale
    return class_log_probabilities(f, g, support_y, n_way, config.distance, s)


def loss_from_embeddings(params, g_prime, support_y, f_prime, query_y, n_way, config):
    """J for every task: mean over queries of −log p(y | x̂, S), shape (...)."""
    log_p = log_probabilities(params, g_prime, support_y, f_prime, n_way, config)   # (..., n_q, N)
    one_hot = losses.one_hot(query_y, n_way, log_p, check=False)
    return -anp.mean(anp.sum(log_p * one_hot, axis=-1), axis=-1)


# ----- the entry points: each checks its inputs once -----
def init(rng, config):
    """Host params: the base net's, prefixed as the docstring says; log s if learned; the FCE LSTMs."""
    checks.generator(rng)
    checks.instance("config", config, MatchingConfig)
    if config.fce:                       # three LSTMs: 4d(d + d) + 4d twice, and 4d(d + 2d) + 4d
        d = config.embedding_dim
        checks.fits(f"embedding_dim={d}", "the FCE LSTMs' float64 params", 8 * 4 * d * (7 * d + 3))
    nets = ("embed",) if config.share_embedding else ("f", "g")
    params = {f"{net}.{name}": value for net in nets for name, value in
              checks.model_params("config.embedding.init(rng)", config.embedding.init(rng)).items()}
    if config.learn_attention_scale:
        params[LOG_SCALE] = np.array(np.log(config.attention_scale))
    if config.fce:
        d = config.embedding_dim
        for lstm, recurrent in (("fw", d), ("bw", d), ("att", 2 * d)):
            params.update({f"fce.{lstm}.{k}": v for k, v in layers.lstm_init(rng, d, d, recurrent).items()})
    return params


def init_state(params, config):
    """State: Adam's zero moments; f′'s and g′'s running BN statistics (means 0, variances 1)."""
    _check(params, None, config)
    return door.init_state(params, _bn_statistics(config))


def loss(params, episode, config, *, state=None):
    """J on an Episode: one task, or leading task axes reduced by task_reduction."""
    episode = _check(params, episode, config, state)
    running = door.running(state, door.bn_mode(config.embedding))
    value = _loss(params, episode, config, running)
    checks.finite_results("matching.loss", [("the loss J", value)],
                          _explain(params, episode, config, running))
    return value


def step(params, state, episode, config):
    """One Adam step (lr meta_lr) on J, batch norm on the batch's statistics, tracked in
    state.bn; the loss is J at the params it started from."""
    episode = _check(params, episode, config, state, step=True)
    objective = lambda p, moments: _loss(p, episode, config, None, moments)
    return door.step("matching.step", ("the loss J", "the gradient"), objective, params, state,
                     config.meta_lr, _explain(params, episode, config),
                     door.bn_momentum(config.embedding))


def predict(params, episode, config, *, state=None):
    """log p(y = k | x̂, S) for every query, (..., n_q, N)."""
    episode = _check(params, episode, config, state)
    running = door.running(state, door.bn_mode(config.embedding))
    embed = _embedding(params, episode, config, running)
    g_prime, f_prime = base_embeddings(params, episode, config, embed)
    log_p = log_probabilities(params, g_prime, episode.support_y, f_prime, config.n_way, config)
    checks.finite_results("matching.predict", [("log p(y | x̂, S)", log_p)],
                          _explain(params, episode, config, running))
    return log_p


def _check(params, episode, config, state=None, step=False):
    """The door: the config, params against init's template, the State (required by ``step``,
    and by bn_mode "running"), the episode, returned as ``checks.episode`` gives it."""
    checks.instance("config", config, MatchingConfig)
    checks.params(params, checks.init_shapes(init, config))
    if episode is not None:                                  # loss, predict, step: their State
        checks.training_state(state, params, _bn_statistics(config), step,
                              bn_mode=door.bn_mode(config.embedding))
    return None if episode is None else checks.episode(episode, n_way=config.n_way)


def _bn_statistics(config):
    return door.bn_statistics(config.embedding, ("embed.",) if config.share_embedding else ("f.", "g."))


def _embedding(params, episode, config, running=None, moments=None):
    """embed(net, x) for ``base_embeddings``: f′ or g′, held to the contract, (..., n, d) floats,
    and with FCE d = embedding_dim, the LSTMs' size; batch norm by ``running``, or by the
    batch's statistics, whose moments go to ``moments``."""
    lead = anp.ndim(episode.support_y)

    def embed(net, x):
        z = checks.model_outputs("config.embedding.apply(params, x)", door.apply_model(
            config.embedding, trees.subtree(params, net), x, running, moments, net + "."),
            anp.shape(x)[:lead])
        if config.fce and anp.shape(z)[-1] != config.embedding_dim:
            raise ValueError(f"with fce, embedding_dim must be the embedding's output size d = "
                             f"{anp.shape(z)[-1]}; got embedding_dim={config.embedding_dim}")
        return z
    return embed


def _explain(params, episode, config, running=None):
    """The failure path: the base embeddings recomputed, to name the first NaN or inf."""
    names = ("g′, config.embedding.apply on the support set",
             "f′, config.embedding.apply on the query set")
    return lambda: zip(names, base_embeddings(params, episode, config, lambda net, x: door.apply_model(
        config.embedding, trees.subtree(params, net), x, running, None, net + ".")))


def _loss(params, episode, config, running=None, moments=None):
    g_prime, f_prime = base_embeddings(params, episode, config,
                                       _embedding(params, episode, config, running, moments))
    task_losses = loss_from_embeddings(params, g_prime, episode.support_y, f_prime, episode.query_y,
                                       config.n_way, config)
    return door.reduce_tasks(task_losses, config.task_reduction)
