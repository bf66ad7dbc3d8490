"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016).

Section 2.1 (the model), Appendix A.1 (f, the attention LSTM), A.2 (g, the bidirectional LSTM).

Symbols
    S = ((x_i, y_i)), i = 1..|S|   the support set, a sequence in the order given
    x̂                              a query point
    f′, g′     embed               base embeddings, e.g. the conv4 net (f′ = g′ by default)
    g(x_i, S), f(x̂, S)             the support and query embeddings: g′, f′ without FCE
    c(u, v)    distance "cosine"   uᵀv / (‖u‖ ‖v‖), both sides normalised
    K          read_steps          read steps of the attention LSTM
    s          attention_scale     multiplies the attention logits; the paper has none (s = 1).
                                   learn_attention_scale makes it a parameter, s = exp("attention.log_scale")
    d          the embedding size; every LSTM state has size d (forced by the skips + g′, + f′)

Model (Section 2.1.1, Eqs. 1-2)
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
    attention_scale   s = 1.0 (the paper).  Cosines lie in [−1, 1], so with s = 1 the attention
                      is nearly uniform over a large support set; implementations differ here
                      (some scale the cosines or learn a temperature)
    learn_attention_scale  False (the paper).  True: s = exp(ρ) with ρ = "attention.log_scale", a
                      learned scalar that ``init`` sets to log(attention_scale), as the learned metric
                      scale of Oreshkin et al. 2018 (TADAM); exp keeps s > 0 whatever the step
    joint_embedding   True: with f′ = g′, support and query go through the net in one call
    task_reduction    "mean" or "sum" over a leading task axis
    support order     the BiLSTM reads S in the order given (class-major in refmeta.data.omniglot
                      episodes); shuffle the episode first for another order
Params: {"embed.*"} or {"f.*", "g.*"}; "attention.log_scale" (shape ()) if learned; and with FCE
"fce.fw.*", "fce.bw.*" (d → d) and
"fce.att.*" (input d, recurrent 2d → d), each {w_x, w_h, b} of ``layers.lstm_init``.
"""

from dataclasses import asdict, dataclass

import autograd.numpy as anp
import numpy as np
from autograd.tracer import getval

from refmeta.nn import layers, losses
from refmeta.protonet import DISTANCES, TASK_REDUCTIONS, check_choice, check_labels, pairwise_distance
from refmeta.data.tasks import Episode

ATTENTION_H0 = ("embedding", "zeros")
LOG_SCALE = "attention.log_scale"


@dataclass(frozen=True)
class MatchingConfig:
    fce: bool = False
    read_steps: int = 5
    share_embedding: bool = True
    attention_h0: str = "embedding"
    distance: str = "cosine"
    attention_scale: float = 1.0
    learn_attention_scale: bool = False
    joint_embedding: bool = True
    task_reduction: str = "mean"

    def __post_init__(self):
        for name in ("fce", "share_embedding", "joint_embedding", "learn_attention_scale"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False; got {getattr(self, name)!r}")
        if isinstance(self.read_steps, bool) or not isinstance(self.read_steps, int) or self.read_steps < 0:
            raise ValueError(f"read_steps must be an integer >= 0; got {self.read_steps!r}")
        check_choice("attention_h0", self.attention_h0, ATTENTION_H0)
        scale = self.attention_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
            raise ValueError(f"attention_scale must be a positive finite number; got {scale!r}")
        check_choice("distance", self.distance, DISTANCES)
        check_choice("task_reduction", self.task_reduction, TASK_REDUCTIONS)

    def conventions(self):
        return {**asdict(self), "lstm_state_size": "d, the embedding size (forced by (G), (F2))",
                "bilstm_initial_state": "zeros", "attention_c0": "zeros",
                "support_order": "as given", "lstm_gate_order": "i, f, g, o",
                "loss": "mean over queries of -log p, per-class logsumexp (L)"}


def init(rng, embed_init, embedding_dim, config=MatchingConfig()):
    """Host params: embed_init(rng) -> the base net's params, prefixed as the docstring says."""
    nets = ("embed",) if config.share_embedding else ("f", "g")
    params = {f"{net}.{name}": value for net in nets for name, value in embed_init(rng).items()}
    if config.learn_attention_scale:
        params[LOG_SCALE] = np.array(np.log(config.attention_scale))
    if config.fce:
        for lstm, recurrent in (("fw", embedding_dim), ("bw", embedding_dim), ("att", 2 * embedding_dim)):
            for name, value in layers.lstm_init(rng, embedding_dim, embedding_dim, recurrent).items():
                params[f"fce.{lstm}.{name}"] = value
    return params


def subtree(params, prefix):
    """The entries named "<prefix>.<name>", as {name: value}."""
    return {name[len(prefix) + 1:]: value for name, value in params.items()
            if name.startswith(prefix + ".")}


def base_embeddings(params, episode, embed, config=MatchingConfig()):
    """(g′(support_x) (..., n_s, d), f′(query_x) (..., n_q, d))."""
    if not config.share_embedding:
        return embed(subtree(params, "g"), episode.support_x), embed(subtree(params, "f"), episode.query_x)
    net = subtree(params, "embed")
    if not config.joint_embedding:
        return embed(net, episode.support_x), embed(net, episode.query_x)
    n_support = anp.shape(episode.support_y)[-1]
    z = embed(net, anp.concatenate([episode.support_x, episode.query_x],
                                   axis=anp.ndim(episode.support_y) - 1))
    return z[..., :n_support, :], z[..., n_support:, :]


def _lstm(params, name, x, h, c):
    return layers.lstm_cell(x, h, c, params[f"fce.{name}.w_x"], params[f"fce.{name}.w_h"],
                            params[f"fce.{name}.b"])


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


def query_fce(params, f_prime, g, config=MatchingConfig()):
    """(R), (F1), (F2): f(x̂, S) = h_K, f_prime (..., n_q, d), g (..., n_s, d) -> (..., n_q, d)."""
    h = f_prime if config.attention_h0 == "embedding" else anp.zeros_like(f_prime)
    c = anp.zeros_like(f_prime)
    for _ in range(config.read_steps):
        a = anp.exp(losses.log_softmax(anp.matmul(h, anp.swapaxes(g, -1, -2))))   # (..., n_q, n_s)
        r = anp.matmul(a, g)                                                       # (R)
        h_hat, c = _lstm(params, "att", f_prime, anp.concatenate([h, r], axis=-1), c)   # (F1)
        h = h_hat + f_prime                                                        # (F2)
    return h


def full_context_embeddings(params, g_prime, f_prime, config=MatchingConfig()):
    """(g(x_i, S), f(x̂, S)): the FCE of the docstring, or (g′, f′) unchanged when config.fce is off."""
    if not config.fce:
        return g_prime, f_prime
    g = support_fce(params, g_prime)
    return g, query_fce(params, f_prime, g, config)


def attention(f, g, distance="cosine", scale=1.0):
    """(A): a(x̂, x_i) = softmax_i(−s·d(f(x̂), g(x_i))), (..., n_q, n_s); rows sum to 1."""
    return anp.exp(losses.log_softmax(-scale * pairwise_distance(f, g, distance)))


def class_log_probabilities(f, g, support_y, n_way, distance="cosine", scale=1.0):
    """(L): log p(y = k | x̂, S) = L_k − log Σ_k′ exp L_k′ from per-class logsumexps, (..., n_q, N)."""
    check_labels(support_y, None, n_way)
    if anp.shape(g)[:-1] != anp.shape(support_y) or anp.shape(f)[:-2] != anp.shape(g)[:-2]:
        raise ValueError(f"expected g (..., n_s, d) with (..., n_s) = support_y {anp.shape(support_y)} "
                         f"and f (..., n_q, d) with the same task axes; got g {anp.shape(g)}, f {anp.shape(f)}")
    scores = -scale * pairwise_distance(f, g, distance)[..., :, None, :]   # (..., n_q, 1, n_s)
    in_class = anp.swapaxes(losses.one_hot(support_y, n_way, g), -1, -2) > 0  # (..., N, n_s)
    in_class = in_class[..., None, :, :]                                  # (..., 1, N, n_s)
    class_max = np.where(in_class, getval(scores), -np.inf).max(axis=-1, keepdims=True)  # a constant
    shifted = anp.where(in_class, scores - class_max, 0.0)                # (..., n_q, N, n_s)
    per_class = class_max[..., 0] + anp.log(anp.sum(in_class * anp.exp(shifted), axis=-1))  # L_k
    return losses.log_softmax(per_class)                                  # L_k − logsumexp_k′ L_k′


def attention_scale(params, config=MatchingConfig()):
    """s: config.attention_scale, or exp(params["attention.log_scale"]) when it is learned."""
    if not config.learn_attention_scale:
        return config.attention_scale
    if LOG_SCALE not in params:
        raise ValueError(f"learn_attention_scale=True needs params[{LOG_SCALE!r}] (made by init); "
                         f"got params with keys {sorted(params)}")
    if anp.shape(params[LOG_SCALE]) != ():
        raise ValueError(f"params[{LOG_SCALE!r}] must be a scalar (shape ()); "
                         f"got shape {anp.shape(params[LOG_SCALE])}")
    return anp.exp(params[LOG_SCALE])


def log_probabilities(params, g_prime, support_y, f_prime, n_way, config=MatchingConfig()):
    """log p(y = k | x̂, S) from the base embeddings: FCE if on, then (L); (..., n_q, N)."""
    g, f = full_context_embeddings(params, g_prime, f_prime, config)
    return class_log_probabilities(f, g, support_y, n_way, config.distance, attention_scale(params, config))


def loss_from_embeddings(params, g_prime, support_y, f_prime, query_y, n_way, config=MatchingConfig()):
    """J for every task: mean over queries of −log p(y | x̂, S), shape (...)."""
    check_labels(support_y, query_y, n_way)
    if anp.shape(f_prime)[:-1] != anp.shape(query_y) or anp.shape(f_prime)[-1] != anp.shape(g_prime)[-1]:
        raise ValueError(f"f′ must be (..., n_q, d) with (..., n_q) = query_y {anp.shape(query_y)} and "
                         f"g′'s d; got f′ {anp.shape(f_prime)}, g′ {anp.shape(g_prime)}")
    log_p = log_probabilities(params, g_prime, support_y, f_prime, n_way, config)
    return -anp.mean(anp.sum(log_p * losses.one_hot(query_y, n_way, log_p), axis=-1), axis=-1)


def episode_loss(params, episode, embed, n_way, config=MatchingConfig()):
    """J for an Episode (one task, or a meta-batch reduced by task_reduction)."""
    episode = Episode.validated(*episode, n_way=n_way)
    g_prime, f_prime = base_embeddings(params, episode, embed, config)
    task_losses = loss_from_embeddings(params, g_prime, episode.support_y, f_prime, episode.query_y,
                                       n_way, config)
    return anp.mean(task_losses) if config.task_reduction == "mean" else anp.sum(task_losses)
