"""SNAIL, a Simple Neural AttentIve meta-Learner (Mishra, Rohaninejad, Chen & Abbeel, ICLR 2018),
for N-way K-shot classification.  Paper: Section 3 (the model), Section 3.1 (the blocks, in
``refmeta.nn.snail_blocks``), Section 5.1 and Appendix A (few-shot image classification).

An N-way K-shot episode is one sequence of T = N·K + 1 steps (Section 3, Figure 1):

    s_t = [f(x_t), onehot(y_t)]   t = 1 … N·K     the support set, in the order given   (1)
    s_T = [f(x_q), 0]                             the query: its label slot is zero

f is the embedding.  The stack maps the sequence to one vector h_t per step, causally (h_t
depends on s_1 … s_t only), then a per-step linear map gives logits; the prediction is read at
the query step, and the loss is its cross-entropy (several queries of one episode are several
sequences that share the support steps):

    z_t = W_out h_t + b_out,    L = mean over queries and episodes of −log softmax(z_T)[y_q]   (2)

Those Q sequences are computed as one: the support steps once, then the Q query steps as
branches (``query_logits``; ``snail_blocks``, "Branches"), each reading the support steps and
itself only, so every query's logits are those of its own sequence (tested against
``make_sequences``), at the cost of N·K + Q steps instead of Q·(N·K + 1).

The few-shot stack (Section 5.1 leaves it to Appendix A; the public ports below build this):

    AttentionBlock(64, 32) → TCBlock(T, 128) → AttentionBlock(256, 128) → TCBlock(T, 128)
    → AttentionBlock(512, 256) → linear to N                                              (3)

Every block concatenates onto its input, so the channel counts are (L = ⌈log₂T⌉, d = 64):

    C_0 = d + N,  +32,  +128·L,  +128,  +128·L,  +256:   C_final = d + N + 416 + 256·L      (4)

(5-way: T = 6, L = 3: 1253; T = 26, L = 5: 1765.)  f for Omniglot: four blocks of {3×3 conv, 64
filters, batch norm, ReLU, 2×2 max-pool} on 28×28 (``models.conv4_*``), then linear to d = 64.

Training (Section 5.1): Adam on (2), one model per N; each training episode draws K uniformly
from 1 … 5 (``train_shots`` (1, 2, 3, 4, 5)); the model is tested at K = 1 and K = 5.  The TC
blocks (depth L, hence params) are built for the longest sequence, T_max = N·max K + 1, and read
any shorter one unchanged: being causal, the first t outputs of a sequence are those of its
first t steps alone (zero padding and masked attention add exact zeros).  ``k_shot`` instead
fixes K (fixed-K training, as the reference case).  An episode's K is read from its support
size; a K not in the model's is refused.

Symbols
    N → n_way     K → k_shot, or each of train_shots     T_max → sequence_length = N·max K + 1
    d → embedding_dim    f → embed    h_t → the stack's output at t    W_out, b_out → "out.*"

Conventions (``SNAILConfig``: the paper's Omniglot 5-way model at K = 1 by default, PyTorch's
choices where the paper gives none).  Three public ports (sagelywizard/snail,
eambutu/snail-pytorch, seujung/SNAIL-gluon) agree on (3), the blocks and T, and differ in
``dilation_start`` (1: 2^1 … 2^L, the paper's loop; 0: 2^0 … 2^(L−1)) and ``embedding_linear``;
one normalises the attention over queries, a bug (here: over keys).  The support steps come in
the order given (the demo shuffles them).  Weights start U(±1/√fan_in), PyTorch's default;
``attention_init_gain`` g multiplies the attention blocks' query and key weights.  Batch norm
(``bn_eps`` 1e-5, ``bn_momentum`` 0.1): ``step`` normalises by the statistics of all the images
of the call and tracks them, state.bn ← (1 − bn_momentum)·state.bn + bn_momentum·(their mean,
unbiased variance), named as f's params ("embed.bn0.mean"); ``loss`` and ``predict`` use the
former (``bn_mode`` "transductive") or state.bn ("running").
"""

from dataclasses import dataclass
from typing import Optional

import autograd.numpy as anp
from autograd.tracer import getval

from refmeta import checks, door
from refmeta.nn import losses, models, trees
from refmeta.nn import snail_blocks as blocks


@dataclass(frozen=True)
class SNAILConfig:
    """The architecture, its conventions and the training step (the module docstring).  Give
    ``k_shot`` (one K) or ``train_shots`` (Section 5.1: (1, 2, 3, 4, 5)) and the other None."""
    n_way: int = 5
    k_shot: Optional[int] = 1
    train_shots: Optional[tuple] = None
    blocks: tuple = blocks.PAPER_BLOCKS
    kernel_size: int = 2
    dilation_start: int = 1
    embedding_dim: int = 64
    embedding_filters: int = 64
    embedding_linear: bool = True
    image_channels: int = 1
    image_size: int = 28
    bn_eps: float = 1e-5
    attention_init_gain: float = 1.0
    bn_mode: str = "transductive"
    meta_lr: float = 1e-3
    bn_momentum: float = 0.1

    def __post_init__(self):
        checks.plain_fields(self)
        for name, minimum in (("n_way", 2), ("kernel_size", 1), ("dilation_start", 0),
                              ("embedding_dim", 1), ("embedding_filters", 1), ("image_channels", 1),
                              ("image_size", 16)):  # 16: four 2×2 pools
            checks.integer(name, getattr(self, name), minimum=minimum)
        if (self.k_shot is None) == (self.train_shots is None):
            raise ValueError(f"give k_shot (one K) or train_shots (several), the other None; got "
                             f"k_shot={self.k_shot!r} and train_shots={self.train_shots!r}")
        if self.k_shot is not None:
            checks.integer("k_shot", self.k_shot, minimum=1)
        else:
            checks.increasing_integers("train_shots", self.train_shots, minimum=1)
        checks.specs("blocks", self.blocks, blocks.BLOCK_FORMS)
        checks.boolean("embedding_linear", self.embedding_linear)
        for name in ("bn_eps", "attention_init_gain"):
            checks.positive(name, getattr(self, name))
        checks.choice("bn_mode", self.bn_mode, ("transductive", "running"))
        checks.nonnegative("meta_lr", self.meta_lr)
        checks.probability("bn_momentum", self.bn_momentum)
        conv_width = self.embedding_filters * (self.image_size // 16) ** 2
        if not self.embedding_linear and self.embedding_dim != conv_width:
            raise ValueError(f"without embedding_linear the embedding is the conv output, "
                             f"{conv_width} wide; got embedding_dim={self.embedding_dim}")

    @property
    def shots(self):
        """The Ks an episode may have: (k_shot,) or train_shots."""
        return (self.k_shot,) if self.train_shots is None else self.train_shots

    @property
    def sequence_length(self):
        """T_max = N·max K + 1: the TC blocks are built for it, and read any T ≤ T_max."""
        return self.n_way * max(self.shots) + 1

    def dilations(self):
        return blocks.tc_dilations(self.sequence_length, self.dilation_start)

    def conventions(self):
        """Every field, as a JSON-able dict, with the Ks, T_max, dilations and channel plan."""
        return door.conventions(self, shots=list(self.shots), sequence_length=self.sequence_length,
                                dilations=self.dilations(), channels=channel_plan(self))


# ----- the model: (4), (1), (3) and (2) -----
def channel_plan(config):
    """(4): [C_0, channels after each block]; the output layer reads the last."""
    return blocks.stack_channels(config.embedding_dim + config.n_way, config.blocks, config.sequence_length)


def parameter_count(config):
    """How many numbers ``init`` makes, from the config alone (``init`` refuses what cannot fit)."""
    f, d, k = config.embedding_filters, config.embedding_dim, config.kernel_size
    count = sum(f * c * 9 + 3 * f for c in (config.image_channels, f, f, f))  # conv, bias, BN × 4
    if config.embedding_linear:
        count += (f * (config.image_size // 16) ** 2 + 1) * d
    channels, depth = channel_plan(config), len(config.dilations())
    for c, spec in zip(channels, config.blocks):
        if spec[0] == "attention":                                   # query, key, value and biases
            count += (c + 1) * (2 * spec[1] + spec[2])
        else:                                                        # filter and gate, each dense
            count += sum(2 * (k * (c + i * spec[1]) + 1) * spec[1] for i in range(depth))
    return count + (channels[-1] + 1) * config.n_way                 # out.w, out.b


def embed(params, images, config, bn_state=None, return_bn_moments=False):
    """f (``snail_blocks.embed`` of "embed.*"): images (..., n, C, H, W) -> (..., n, d); batch
    norm by bn_state (state.bn, "embed.bn{i}.mean", ...) or the images' statistics, whose moments
    ``return_bn_moments`` adds, named likewise."""
    running = None if bn_state is None else trees.subtree(bn_state, "embed")
    out = blocks.embed(trees.subtree(params, "embed"), images, config.bn_eps, running,
                       return_bn_moments)
    return (out[0], {f"embed.{k}": v for k, v in out[1].items()}) if return_bn_moments else out


def make_sequences(support_z, support_y, query_z, config):
    """(1) (``snail_blocks.sequences``): support_z (..., N·K, d), support_y (..., N·K) ints,
    query_z (..., Q, d) -> (..., Q, T, d + N), T = N·K + 1: one per query, the support first."""
    return blocks.sequences(support_z, support_y, query_z, config.n_way)


def apply(params, sequences, config, return_intermediates=False, branches=1):
    """(3), (2): sequences (..., T, d + N), T ≤ T_max -> logits (..., T, N) at every step, the
    last ``branches`` steps read as branches (``snail_blocks``); with return_intermediates also
    {"block{j}": (..., T, C_{j+1}), "block{j}.probs": (..., T, T)}."""
    h, found = blocks.stack(params, sequences, config.blocks, config.dilations(),
                            return_intermediates=True, branches=branches)  # (..., T, C_final)
    logits = blocks.rows_matmul(h, params["out.w"]) + params["out.b"]
    return (logits, found) if return_intermediates else logits


def query_logits(params, support_z, support_y, query_z, config):
    """(1)–(3) at every query step: support_z (..., N·K, d), support_y (..., N·K), query_z (..., Q,
    d) -> (..., Q, N), the Q queries as branches of one sequence (the same numbers as one
    sequence per query, ``make_sequences``, in one pass over N·K + Q steps)."""
    sequence = blocks.branched_sequence(support_z, support_y, query_z, config.n_way)
    n_query = anp.shape(query_z)[-2]
    return apply(params, sequence, config, branches=n_query)[..., -n_query:, :]


def _embeddings(params, episode, config, bn_state=None, moments=None):
    """f of every image in one call, (support (..., N·K, d), queries (..., Q, d)); batch norm by
    bn_state, or by the images' statistics, whose moments go to the list ``moments`` if given."""
    n = anp.shape(episode.support_x)[-4]                                   # N·K
    images = anp.concatenate([episode.support_x, episode.query_x], axis=-4)
    if moments is None:
        z = embed(params, images, config, bn_state)
    else:
        z, found = embed(params, images, config, return_bn_moments=True)
        moments.append({k: getval(v) for k, v in found.items()})           # bookkeeping only
    return z[..., :n, :], z[..., n:, :]


def _predict(params, episode, config, bn_state=None, moments=None):
    """Logits (..., Q, N) at the query step of every query (``_embeddings``' arguments)."""
    support_z, query_z = _embeddings(params, episode, config, bn_state, moments)
    return query_logits(params, support_z, episode.support_y, query_z, config)


def _loss(logits, query_y):
    """(2): the mean query cross-entropy over every query of every episode."""
    return anp.mean(losses.cross_entropy(logits, query_y, reduction="none", check=False))


# ----- the entry points: each checks its inputs once, then runs the model above -----
def init(rng, config):
    """Host float64 params: "embed.*" (conv4 + linear), "block{j}.*", "out.w" (C, N), "out.b"."""
    checks.instance("config", config, SNAILConfig)
    checks.generator(rng)
    checks.fits(f"n_way={config.n_way}, sequence_length={config.sequence_length}, image_size="
                f"{config.image_size}", "SNAIL's float64 params", 8 * parameter_count(config))
    embedding = models.conv4_init(rng, config.image_channels,
                                  config.embedding_dim if config.embedding_linear else None,
                                  config.embedding_filters, variant="maxpool", bn_affine="both",
                                  image_size=config.image_size)
    params, channels = {f"embed.{k}": v for k, v in embedding.items()}, channel_plan(config)
    params.update(blocks.stack_init(rng, channels[0], config.blocks, config.sequence_length,
                                    config.kernel_size, config.attention_init_gain))
    params["out.w"] = blocks.uniform_init(rng, channels[-1], (channels[-1], config.n_way))
    params["out.b"] = blocks.uniform_init(rng, channels[-1], (config.n_way,))
    return params


def init_state(params, config):
    """State: Adam's zero moments; f's running statistics "embed.bn{i}.mean", "….var" (F,): 0, 1."""
    _check(params, None, config)
    return door.init_state(params, _bn_statistics(config))


def predict(params, episode, config, *, state=None):
    """Logits at the query step: support_x (..., N·K, C, H, W), K in config.shots, query_x (..., Q,
    C, H, W) -> (..., Q, N); with bn_mode "running", f normalises by state.bn."""
    episode = _check(params, episode, config, state)
    running = door.running(state, config.bn_mode)
    logits = _predict(params, episode, config, running)
    checks.finite_results("snail.predict", [("the logits", logits)],
                          _explain(params, episode, config, running))
    return logits


def loss(params, episode, config, *, state=None):
    """(2) on an episode; the arguments as for ``predict``."""
    episode = _check(params, episode, config, state)
    running = door.running(state, config.bn_mode)
    value = _loss(_predict(params, episode, config, running), episode.query_y)
    checks.finite_results("snail.loss", [("the loss", value)], _explain(params, episode, config, running))
    return value


def step(params, state, episode, config):
    """One Adam step (meta_lr) on (2) with the batch's statistics in f, tracked in state.bn:
    Step(params, State, the loss at the starting params)."""
    episode = _check(params, episode, config, state, step=True)
    objective = lambda p, moments: _loss(_predict(p, episode, config, None, moments), episode.query_y)
    return door.step("snail.step", ("the loss", "the gradient"), objective, params, state,
                     config.meta_lr, _explain(params, episode, config), config.bn_momentum)


def _explain(params, episode, config, running=None):
    """The failure path: f's embeddings recomputed; past them, the results name the NaN."""
    def quantities():
        support_z, query_z = _embeddings(params, episode, config, running)
        yield "f(support_x), the support embeddings", support_z
        yield "f(query_x), the query embeddings", query_z
    return quantities


def _check(params, episode, config, state=None, step=False):
    """The door: the config, params against init's template, the State (``step``'s, and bn_mode
    "running"'s), an episode of K in config.shots and the net's images, as checks.episode gives it."""
    checks.instance("config", config, SNAILConfig)
    checks.params(params, checks.init_shapes(init, config))
    if episode is None:
        return None
    checks.training_state(state, params, _bn_statistics(config), step, bn_mode=config.bn_mode)
    labels = getval(episode[1]) if isinstance(episode, tuple) and len(episode) == 4 else None
    n_support = anp.shape(labels)[-1] if labels is not None and anp.ndim(labels) >= 1 else 0
    n, k_shot = config.n_way, n_support // config.n_way                # K read from the size N·K
    fits = n_support == n * k_shot and k_shot in config.shots
    episode = checks.episode(episode, n, k_shot if fits else None)
    if not fits:
        raise ValueError(f"the support set must hold N·K examples, N = {n} and K in {config.shots}: "
                         f"{', '.join(str(n * k) for k in config.shots)}; got {n_support}")
    image = (config.image_channels, config.image_size, config.image_size)
    checks.example_shape("support_x", episode.support_x, anp.ndim(episode.support_y) - 1, image)
    return episode


def _bn_statistics(config):
    return {f"embed.{k}": v for k, v in models.conv4_bn_state(config.embedding_filters).items()}
