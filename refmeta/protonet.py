"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017), Section 2.1-2.2, Algorithm 1.

Symbols
    f_φ        config.embedding       a ``contract.Model``: f_φ(x) = apply(params, x), (..., n, *x) ->
                                      (..., n, d); by default the 4-block conv net with max-pool of
                                      Section 3.1 (``conv4_embedding``)
    N, K       n_way, shots           S_k: the support examples of class k = 0..N−1
    c_k        prototypes             (..., N, d)
    d(z, c)    distance               "sqeuclidean" (default), "euclidean", "cosine"
    Q          the query points (x, y)

Equations
    c_k = (1/|S_k|) Σ_{x_i ∈ S_k} f_φ(x_i)                                       (1)  Eq. 1
    p_φ(y = k | x) = exp(−d(f_φ(x), c_k)) / Σ_k′ exp(−d(f_φ(x), c_k′))          (2)  Eq. 2
    J(φ) = (1/|Q|) Σ_{(x, y) ∈ Q} −log p_φ(y | x)                                (3)  Algorithm 1
Training descends J with Adam (Section 3.1), step size meta_lr.

Distances, z (..., m, d) against c (..., n, d) -> (..., m, n):
    sqeuclidean   ‖z − c‖²       what the paper and the authors' code use (the text says
                                 "Euclidean"; Sections 2.4 and 2.6 argue for the square)
    euclidean     ‖z − c‖        (its gradient is infinite where z = c)
    cosine        1 − zᵀc / (‖z‖ ‖c‖)

Two identities the tests check.  With f_φ the identity, (2) is a nearest-centroid classifier.
With the squared distance, −‖z − c_k‖² = 2c_kᵀz − c_kᵀc_k − zᵀz and the last term is the same
for every k, so (2) is a linear softmax model with w_k = 2c_k, b_k = −‖c_k‖² (Section 2.4,
Eqs. (7)–(8)).  With K = 1, (2) is a Matching Network without FCE under the same distance.

Conventions (``ProtoNetConfig``, recorded by ``conventions()``):
    distance          "sqeuclidean" (default), "euclidean" or "cosine"
    joint_embedding   True (default, the authors' code): support and query go through f_φ in
                      one call, so transductive batch norm sees both; False: two calls
    task_reduction    "mean" (default) or "sum" of the per-task losses (3) over a leading task axis
Every function takes leading task axes: support (..., N·K, ...), query (..., n_q, ...).

Batch norm.  ``conv4_embedding`` keeps its running statistics (a ``contract.BatchNorm``):
``step`` trains on the batch's statistics and tracks them in state.bn (momentum 0.1, unbiased
variance, as PyTorch); ``loss`` and ``predict`` normalise by the batch's statistics (its
bn_mode "transductive", the authors' code) or by state.bn (bn_mode "running").
"""

from dataclasses import dataclass

import autograd.numpy as anp
import numpy as np
from autograd.tracer import getval

from refmeta import checks, door
from refmeta.contract import TASK_REDUCTIONS, BatchNorm, Model
from refmeta.device import backend
from refmeta.nn import kinks, layers, losses, models

DISTANCES = ("sqeuclidean", "euclidean", "cosine")


# ----- the 4-block conv embedding with max-pool (Section 3.1) -----
def conv4_embedding(hidden=64, in_channels=1, image_size=28, bn_mode="transductive", bn_eps=1e-5,
                    bn_momentum=0.1):
    """The conv4 max-pool net without a head, as a Model: x (..., n, C, H, W) -> (..., n, d),
    d = hidden·⌊H/16⌋·⌊W/16⌋ (64 on 28×28).  Batch norm learns its offset and scale, uses eps
    1e-5 as PyTorch's BatchNorm2d, and keeps running statistics {"bn{i}.mean", "bn{i}.var"}
    (``contract.BatchNorm``, momentum ``bn_momentum``, named when it is not PyTorch's 0.1);
    bn_mode is what ``loss`` and ``predict`` normalise by."""
    checks.integer("hidden", hidden, minimum=1)
    checks.integer("in_channels", in_channels, minimum=1)
    checks.integer("image_size", image_size, minimum=16)
    checks.choice("bn_mode", bn_mode, layers.BN_MODES)
    checks.positive("bn_eps", bn_eps)
    checks.probability("bn_momentum", bn_momentum)
    init = lambda rng: models.conv4_init(rng, in_channels=in_channels, n_out=None, hidden=hidden,
                                         variant="maxpool", bn_affine="both", image_size=image_size)
    apply = lambda params, x: models.conv4_apply(params, x, variant="maxpool", bn_eps=bn_eps)

    def apply_bn(params, x, running):                                 # contract.BatchNorm.apply
        if running is not None:
            return models.conv4_apply(params, x, "maxpool", "running", running, bn_eps), {}
        return models.conv4_apply(params, x, "maxpool", bn_eps=bn_eps, return_bn_moments=True)
    momentum = "" if bn_momentum == 0.1 else f", momentum {bn_momentum:g}"
    return Model(init, apply, None, f"conv4 max-pool: {hidden} filters, {in_channels} channel(s), "
                                    f"{image_size}x{image_size}, batch norm {bn_mode}, eps {bn_eps:g}"
                                    f"{momentum}",
                 BatchNorm(lambda: models.conv4_bn_state(hidden), apply_bn, bn_mode, bn_momentum))


@dataclass(frozen=True)
class ProtoNetConfig:
    """The choices of (1)-(3); the defaults are the paper's."""
    embedding: Model = conv4_embedding()
    n_way: int = 5
    distance: str = "sqeuclidean"
    joint_embedding: bool = True
    task_reduction: str = "mean"
    meta_lr: float = 1e-3

    def __post_init__(self):
        checks.plain_fields(self)
        checks.instance("embedding", self.embedding, Model)
        checks.integer("n_way", self.n_way, minimum=2)
        checks.choice("distance", self.distance, DISTANCES)
        checks.boolean("joint_embedding", self.joint_embedding)
        checks.choice("task_reduction", self.task_reduction, TASK_REDUCTIONS)
        checks.nonnegative("meta_lr", self.meta_lr)

    def conventions(self):
        return door.conventions(self, prototype="class mean of the support embeddings (Eq. 1)",
                                loss="mean over query points of -log softmax(-d)[y] (Algorithm 1)")


# ----- the model: (1), (2), (3); no checks -----
def embed_episode(params, episode, embed, joint=True):
    """(f_φ(support_x), f_φ(query_x)), through one call of ``embed`` when ``joint``."""
    if not joint:
        return embed(params, episode.support_x), embed(params, episode.query_x)
    axis = anp.ndim(episode.support_y) - 1                                    # the example axis
    z = embed(params, anp.concatenate([episode.support_x, episode.query_x], axis=axis))
    n_support = anp.shape(episode.support_y)[-1]
    return z[..., :n_support, :], z[..., n_support:, :]


def prototypes(z_support, support_y, n_way):
    """(1): z_support (..., n_s, d), support_y (..., n_s) -> c (..., N, d)."""
    one_hot = losses.one_hot(support_y, n_way, z_support, check=False)     # (..., n_s, N)
    sums = anp.matmul(anp.swapaxes(one_hot, -1, -2), z_support)              # (..., N, d)
    return sums / anp.sum(one_hot, axis=-2)[..., None]


def distance_matrix(z, c, distance="sqeuclidean"):
    """d(z_i, c_j) for z (..., m, d) and c (..., n, d) -> (..., m, n); see the module docstring."""
    if distance == "cosine":
        return 1.0 - anp.matmul(normalize(z), anp.swapaxes(normalize(c), -1, -2))
    difference = z[..., :, None, :] - c[..., None, :, :]                    # (..., m, n, d)
    squared = anp.sum(difference * difference, axis=-1)
    return squared if distance == "sqeuclidean" else anp.sqrt(squared)


def normalize(z, eps=1e-12):
    """z / ‖z‖ along the last axis (‖z‖ floored at eps, as a zero vector has no direction)."""
    squared_norm = anp.sum(z * z, axis=-1, keepdims=True)
    kinks.floor(squared_norm, eps * eps)
    return z / anp.sqrt(anp.maximum(squared_norm, eps * eps))


def log_probabilities(z_support, support_y, z_query, n_way, distance="sqeuclidean"):
    """(2) in logs: log p(y = k | x) for every query, (..., n_q, N)."""
    return losses.log_softmax(-distance_matrix(z_query, prototypes(z_support, support_y, n_way),
                                               distance))


def loss_from_embeddings(z_support, support_y, z_query, query_y, n_way, distance="sqeuclidean"):
    """(3) for every task: the mean over queries of −log p(y | x), shape (...)."""
    logits = -distance_matrix(z_query, prototypes(z_support, support_y, n_way), distance)
    return losses.cross_entropy(logits, query_y, "mean", check=False)       # log_softmax inside


# ----- the entry points: each checks its inputs once -----
def init(rng, config):
    """The embedding's host params, f_φ's φ."""
    return door.init_params(rng, config, ProtoNetConfig, "embedding")


def init_state(params, config):
    """State: Adam's zero moments; the embedding's running BN statistics (means 0, variances 1)."""
    _check(params, None, config)
    return door.init_state(params, door.bn_statistics(config.embedding))


def loss(params, episode, config, *, state=None):
    """J(φ) of (3) on an Episode: one task, or leading task axes reduced by task_reduction."""
    episode = _check(params, episode, config, state)
    running = door.running(state, door.bn_mode(config.embedding))
    value = _loss(params, episode, config, running)
    checks.finite_results("protonet.loss", [("the loss J", value)],
                          _explain(params, episode, config, running))
    return value


def step(params, state, episode, config):
    """One Adam step (lr meta_lr) on J, batch norm on the batch's statistics, tracked in
    state.bn; the loss is J at the params it started from."""
    episode = _check(params, episode, config, state, step=True)
    objective = lambda p, moments: _loss(p, episode, config, None, moments)
    return door.step("protonet.step", ("the loss J", "the gradient"), objective, params, state,
                     config.meta_lr, _explain(params, episode, config),
                     door.bn_momentum(config.embedding))


def predict(params, episode, config, *, state=None):
    """log p_φ(y = k | x) of (2) for every query, (..., n_q, N)."""
    episode = _check(params, episode, config, state)
    running = door.running(state, door.bn_mode(config.embedding))
    z_support, z_query = embed_episode(params, episode, _embedding(config, episode, running),
                                       config.joint_embedding)
    log_p = log_probabilities(z_support, episode.support_y, z_query, config.n_way, config.distance)
    checks.finite_results("protonet.predict", [("log p(y | x)", log_p)],
                          _explain(params, episode, config, running))
    return log_p


def pairwise_distance(z, c, distance="sqeuclidean"):
    """d(z_i, c_j) (``distance_matrix``), its inputs checked: z (..., m, d) and c (..., n, d)
    finite floats with the same d, ``distance`` one of DISTANCES -> (..., m, n)."""
    checks.choice("distance", distance, DISTANCES)
    checks.finite("z", z)
    checks.finite("c", c)
    if anp.ndim(z) < 2 or anp.ndim(c) < 2 or anp.shape(z)[-1] != anp.shape(c)[-1]:
        raise ValueError(f"z and c must be (..., m, d) and (..., n, d) with the same d; got "
                         f"{anp.shape(z)} and {anp.shape(c)}")
    return distance_matrix(z, c, distance)


def accuracy(log_probs, query_y):
    """Fraction of queries whose most probable class is the label, per task (...) (host floats).

    log_probs (..., n_q, N) as ``predict`` gives; query_y (..., n_q) integer labels in 0..N−1.
    """
    checks.finite("log_probs", log_probs)
    if anp.ndim(log_probs) < 2 or 0 in anp.shape(log_probs)[-2:]:
        raise ValueError(f"log_probs must be (..., n_q, N) with n_q, N >= 1; got {anp.shape(log_probs)}")
    labels = checks.labels("query_y", query_y, anp.shape(log_probs)[-1], shape=anp.shape(log_probs)[:-1])
    predicted = np.argmax(backend.to_host(getval(log_probs)), axis=-1)
    return np.mean(predicted == labels, axis=-1)


def _check(params, episode, config, state=None, step=False):
    """The door: the config, params against init's template, the State (required by ``step``,
    and by bn_mode "running"), the episode, returned as ``checks.episode`` gives it."""
    checks.instance("config", config, ProtoNetConfig)
    checks.params(params, checks.init_shapes(init, config))
    if episode is not None:                                  # loss, predict, step: their State
        checks.training_state(state, params, door.bn_statistics(config.embedding), step,
                              bn_mode=door.bn_mode(config.embedding))
    return None if episode is None else checks.episode(episode, n_way=config.n_way)


def _embedding(config, episode, running=None, moments=None):
    """f_φ, its outputs held to the contract, (..., n, d) floats; batch norm by ``running``, or
    by the batch's statistics, whose moments go to ``moments``."""
    return checks.embedding("config.embedding.apply(params, x)", lambda params, x: door.apply_model(
        config.embedding, params, x, running, moments), anp.ndim(episode.support_y))


def _explain(params, episode, config, running=None):
    """The failure path: the embeddings recomputed, to name the first NaN or inf."""
    names = ("config.embedding.apply on the support set", "config.embedding.apply on the query set")
    return lambda: zip(names, embed_episode(params, episode, lambda p, x: door.apply_model(
        config.embedding, p, x, running), config.joint_embedding))


def _loss(params, episode, config, running=None, moments=None):
    embed = _embedding(config, episode, running, moments)
    z_support, z_query = embed_episode(params, episode, embed, config.joint_embedding)
    task_losses = loss_from_embeddings(z_support, episode.support_y, z_query, episode.query_y,
                                       config.n_way, config.distance)
    return door.reduce_tasks(task_losses, config.task_reduction)
