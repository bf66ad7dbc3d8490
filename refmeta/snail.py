"""SNAIL, a Simple Neural AttentIve meta-Learner (Mishra, Rohaninejad, Chen & Abbeel, ICLR 2018),
for N-way K-shot classification.

Paper: Section 3 (the model), Section 4.1 and Appendix B (few-shot image classification),
Appendix A (the blocks, in ``refmeta.nn.snail_blocks``).

An episode is one sequence of T = N·K + 1 steps (Section 3, Figure 1):

    s_t = [f(x_t), onehot(y_t)]   t = 1 … N·K     the support set, in the order given   (1)
    s_T = [f(x_q), 0]                             the query: its label slot is zero

f is the embedding.  The stack maps the sequence to one vector h_t per step, causally (h_t
depends on s_1 … s_t only), then a per-step linear map (the paper's final 1×1 convolution)
gives logits; the prediction is read at the query step, and the loss is its cross-entropy:

    z_t = W_out h_t + b_out,    L = mean over queries and episodes of −log softmax(z_T)[y_q]   (2)

Several queries of one episode become several sequences that share the support steps.

The few-shot stack (Appendix B; the same for Omniglot and mini-ImageNet, only f differs):

    AttentionBlock(64, 32) → TCBlock(T, 128) → AttentionBlock(256, 128) → TCBlock(T, 128)
    → AttentionBlock(512, 256) → linear to N                                              (3)

Every block concatenates onto its input, so the channel counts are (L = ⌈log₂T⌉, d = 64):

    C_0 = d + N,  +32,  +128·L,  +128,  +128·L,  +256:   C_final = d + N + 416 + 256·L      (4)

(5-way 1-shot: T = 6, L = 3, C_final = 1253.)  f for Omniglot: four blocks of {3×3 conv, 64
filters, batch norm, ReLU, 2×2 max-pool} on 28×28 images (``layers.conv4_*``, "maxpool"; the
output is 64·1·1), then one linear layer to d = 64.

Symbols
    N → n_way     K → k_shot     T → sequence_length = N·K + 1     d → embedding_dim
    f → embed     h_t → the stack's output at step t      W_out, b_out → "out.w", "out.b"

Sources.  (3), the block definitions and T = N·K + 1 are REFERENCE-NOTES' reading of the paper
and agree with three public ports (sagelywizard/snail, eambutu/snail-pytorch, seujung/SNAIL-gluon);
the appendix text itself could not be re-read here.  The ports disagree on the dilations
(2^0… vs 2^1…, one counts blocks by ⌈ln T⌉), one normalises the attention over queries (the
known bug), and one adds the linear layer after the conv blocks: all are parameters below.

Conventions (``SNAILConfig``, recorded by ``conventions()``):
    blocks            (3); ("attention", d_k, d_v) or ("tc", D)
    kernel_size       2, the paper's causal convolution
    dilation_start    1: TCBlock dilations 2^1 … 2^L, the paper's loop; 0 gives 2^0 … 2^(L−1)
    embedding_linear  True: the linear layer after the conv blocks (64 → d)
    bn_eps            1e-5 (PyTorch's BatchNorm2d); batch statistics are taken over every
                      image of one call (the whole meta-batch, as BatchNorm2d in train mode);
                      "running" mode uses the statistics a training loop tracked.
    attention_init_gain  1.0: every weight starts as PyTorch's default U(±1/√fan_in), as the
                      ports do (the paper gives no initialisation); g multiplies the attention
                      blocks' query and key weights, so the logits qᵀk/√K start g² times
                      larger.  At g = 1 they start near 0, every attention row is nearly
                      uniform and training sits at chance for a few hundred steps; the Omniglot
                      demo uses g = 4 (docs/demo-snail-omniglot.md).
Not parameters: the softmax runs over keys (the paper's), the query's label slot is zero, and
the support steps come in the order given (the demo shuffles them).
Params are a flat dict: "embed.*" (conv4), "block{j}.*" (``snail_blocks`` names), "out.*".
"""

from dataclasses import asdict, dataclass

import autograd.numpy as anp
import numpy as np
from autograd import value_and_grad
from autograd.tracer import getval

from refmeta.nn import layers, losses, optimizers
from refmeta.nn import snail_blocks as blocks

PAPER_BLOCKS = (("attention", 64, 32), ("tc", 128), ("attention", 256, 128), ("tc", 128),
                ("attention", 512, 256))


@dataclass(frozen=True)
class SNAILConfig:
    """The architecture and its conventions; defaults are the paper's Omniglot setup."""
    n_way: int = 5
    k_shot: int = 1
    blocks: tuple = PAPER_BLOCKS
    kernel_size: int = 2
    dilation_start: int = 1
    embedding_dim: int = 64
    embedding_filters: int = 64
    embedding_linear: bool = True
    image_channels: int = 1
    image_size: int = 28
    bn_eps: float = 1e-5
    attention_init_gain: float = 1.0

    def __post_init__(self):
        for name, minimum in (("n_way", 2), ("k_shot", 1), ("kernel_size", 1),
                              ("dilation_start", 0), ("embedding_dim", 1),
                              ("embedding_filters", 1), ("image_channels", 1),
                              ("image_size", 16)):
            blocks._check_int(name, getattr(self, name), minimum)
        for spec in self.blocks:
            ok = (isinstance(spec, tuple) and len(spec) >= 2 and
                  ((spec[0] == "attention" and len(spec) == 3) or (spec[0] == "tc" and len(spec) == 2)))
            blocks._check(ok, f"each block must be ('attention', key_size, value_size) or "
                              f"('tc', filters); got {spec!r}")
            for size in spec[1:]:
                blocks._check_int(f"{spec[0]} block size", size, 1)
        if not isinstance(self.embedding_linear, bool):
            raise TypeError(f"embedding_linear must be True or False; got {self.embedding_linear!r}")
        blocks._check(isinstance(self.bn_eps, float) and self.bn_eps > 0,
                      f"bn_eps must be a positive float; got {self.bn_eps!r}")
        blocks._check_positive("attention_init_gain", self.attention_init_gain)
        side = self.image_size // 16                                     # after four 2×2 pools
        conv_width = self.embedding_filters * side * side
        blocks._check(self.embedding_linear or self.embedding_dim == conv_width,
                      f"without embedding_linear the embedding is the conv output, "
                      f"{conv_width} wide; got embedding_dim={self.embedding_dim}")

    @property
    def sequence_length(self):
        return self.n_way * self.k_shot + 1

    def dilations(self):
        return blocks.tc_dilations(self.sequence_length, self.dilation_start)

    def conventions(self):
        """Every field, as a JSON-able dict, with the derived T, dilations and channel plan."""
        return {**asdict(self), "blocks": [list(b) for b in self.blocks],
                "sequence_length": self.sequence_length, "dilations": self.dilations(),
                "channels": channel_plan(self)}


def channel_plan(config):
    """(4): [C_0, channels after each block]; the output layer reads the last."""
    channels = [config.embedding_dim + config.n_way]
    for spec in config.blocks:
        if spec[0] == "attention":
            channels.append(blocks.attention_block_channels(channels[-1], spec[2]))
        else:
            channels.append(channels[-1] + len(config.dilations()) * spec[1])
    return channels


def init(rng, config):
    """Host float64 params: "embed.*" (conv4 maxpool + linear), "block{j}.*", "out.w" (C, N), "out.b"."""
    embed = layers.conv4_init(rng, config.image_channels,
                              config.embedding_dim if config.embedding_linear else None,
                              config.embedding_filters, variant="maxpool", bn_affine="both",
                              image_size=config.image_size)
    params = {f"embed.{k}": v for k, v in embed.items()}
    channels = channel_plan(config)
    for j, spec in enumerate(config.blocks):
        if spec[0] == "attention":
            block = blocks.attention_block_init(rng, channels[j], spec[1], spec[2],
                                                config.attention_init_gain)
        else:
            block = blocks.tc_block_init(rng, channels[j], config.sequence_length, spec[1],
                                         config.kernel_size)
        params.update({f"block{j}.{k}": v for k, v in block.items()})
    params["out.w"] = blocks._uniform(rng, channels[-1], (channels[-1], config.n_way))
    params["out.b"] = blocks._uniform(rng, channels[-1], (config.n_way,))
    return params


def embed(params, images, config, bn_mode="transductive", bn_state=None, return_bn_moments=False):
    """f: images (..., n, C, H, W) -> (..., n, d); batch statistics over every image given."""
    shape = anp.shape(images)
    blocks._check(len(shape) >= 4 and shape[-3:] == (config.image_channels, config.image_size,
                                                     config.image_size),
                  f"embed expects images (..., n, {config.image_channels}, {config.image_size}, "
                  f"{config.image_size}); got {shape}")
    _check_finite(images, "images")
    flat = anp.reshape(images, (-1,) + shape[-3:])                          # (M, C, H, W)
    out = layers.conv4_apply(blocks._sub(params, "embed."), flat, variant="maxpool",
                             bn_mode=bn_mode, bn_state=bn_state, bn_eps=config.bn_eps,
                             return_bn_moments=return_bn_moments)
    features, moments = out if return_bn_moments else (out, None)
    features = anp.reshape(features, shape[:-3] + (anp.shape(features)[-1],))
    return (features, moments) if return_bn_moments else features


def make_sequences(support_z, support_y, query_z, config):
    """(1): support_z (..., N·K, d), support_y (..., N·K) ints, query_z (..., Q, d)
    -> (..., Q, T, d + N): one sequence per query, the support steps first."""
    n_support, dim = config.n_way * config.k_shot, anp.shape(support_z)[-1]
    blocks._check(anp.ndim(support_z) >= 2 and anp.shape(support_z)[-2] == n_support,
                  f"a {config.n_way}-way {config.k_shot}-shot sequence needs N·K = {n_support} "
                  f"support steps; got support_z {anp.shape(support_z)}")
    blocks._check(anp.shape(support_y) == anp.shape(support_z)[:-1],
                  f"support_y must be {anp.shape(support_z)[:-1]}; got {anp.shape(support_y)}")
    blocks._check(anp.ndim(query_z) == anp.ndim(support_z) and anp.shape(query_z)[-1] == dim
                  and anp.shape(query_z)[:-2] == anp.shape(support_z)[:-2],
                  f"query_z must be (..., Q, d) with support_z's leading axes and d={dim}; "
                  f"got {anp.shape(query_z)} for support_z {anp.shape(support_z)}")
    labels = getval(support_y)
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    blocks._check(low >= 0 and high < config.n_way,
                  f"support labels must be in 0..{config.n_way - 1}; got {low}..{high}")
    support = anp.concatenate([support_z, losses.one_hot(labels, config.n_way, support_z)], -1)
    slot = np.zeros(anp.shape(query_z)[:-1] + (config.n_way,), dtype=getval(query_z).dtype,
                    like=getval(query_z))
    query = anp.concatenate([query_z, slot], axis=-1)                      # zero label slot
    n_query = anp.shape(query_z)[-2]
    support = anp.broadcast_to(support[..., None, :, :], anp.shape(query_z)[:-2]
                               + (n_query, n_support, dim + config.n_way))
    return anp.concatenate([support, query[..., :, None, :]], axis=-2)      # (..., Q, T, d + N)


def apply(params, sequences, config, return_intermediates=False):
    """(3), (2): sequences (..., T, d + N) -> logits (..., T, N) at every step.

    With return_intermediates, also {"block{j}": (..., T, C_{j+1}), "block{j}.probs":
    (..., T, T) for attention blocks}.
    """
    check_sequences(sequences, config)
    x, found = sequences, {}
    for j, spec in enumerate(config.blocks):
        block = blocks._sub(params, f"block{j}.")
        if spec[0] == "attention":
            x, found[f"block{j}.probs"] = blocks.attention_block(block, x, return_probs=True)
        else:
            x = blocks.tc_block(block, x, config.dilations())
        found[f"block{j}"] = x
    logits = blocks._rows_matmul(x, params["out.w"]) + params["out.b"]
    return (logits, found) if return_intermediates else logits


def check_sequences(sequences, config):
    """ValueError unless sequences are (..., T, d + N), finite, with the query's label slot 0."""
    expected = (config.sequence_length, config.embedding_dim + config.n_way)
    blocks._check(anp.ndim(sequences) >= 2 and anp.shape(sequences)[-2:] == expected,
                  f"sequences must be (..., T = N·K + 1 = {expected[0]}, d + N = {expected[1]}) "
                  f"for {config.n_way}-way {config.k_shot}-shot with d={config.embedding_dim} "
                  f"(a query without its {config.n_way} label channels, or a sequence of "
                  f"another length, is refused); got {anp.shape(sequences)}")
    _check_finite(sequences, "sequences")
    slot = getval(sequences)[..., -1, config.embedding_dim:]
    blocks._check(not bool(anp.any(slot != 0)),
                  "the query (the last step) must carry an all-zero label slot; got nonzero values")


def query_logits(params, episode, config, bn_mode="transductive", bn_state=None,
                 return_bn_moments=False):
    """Logits at the query step of every query: episode support_x (..., N·K, C, H, W),
    query_x (..., Q, C, H, W) -> (..., Q, N) (and the BN moments of the embedding's inputs)."""
    n_support = anp.shape(episode.support_x)[-4]
    images = anp.concatenate([episode.support_x, episode.query_x], axis=-4)
    out = embed(params, images, config, bn_mode, bn_state, return_bn_moments)
    z, moments = out if return_bn_moments else (out, None)
    sequences = make_sequences(z[..., :n_support, :], episode.support_y, z[..., n_support:, :],
                               config)
    logits = apply(params, sequences, config)[..., -1, :]                 # (..., Q, N)
    return (logits, moments) if return_bn_moments else logits


def loss(params, episode, config, bn_mode="transductive", bn_state=None):
    """(2): the mean query cross-entropy over every query of every episode."""
    logits = query_logits(params, episode, config, bn_mode, bn_state)
    return anp.mean(losses.cross_entropy(logits, episode.query_y, reduction="none"))


def bn_state_init(config, like):
    """Running statistics {"bn{i}.mean": 0, "bn{i}.var": 1} of the embedding, with ``like``'s
    device and dtype."""
    return {k: np.asarray(v, dtype=getval(like).dtype, like=getval(like))
            for k, v in layers.conv4_bn_state(config.embedding_filters).items()}


def meta_step(params, opt_state, bn_state, episode, config, lr=1e-3, bn_momentum=0.1):
    """One Adam step on (2), batch statistics in the embedding; returns (params, opt_state,
    bn_state, loss) with bn_state ← (1 − momentum)·bn_state + momentum·(this batch's moments)."""
    moments = {}

    def objective(p):
        logits, found = query_logits(p, episode, config, return_bn_moments=True)
        moments.update({k: getval(v) for k, v in found.items()})           # bookkeeping only
        return anp.mean(losses.cross_entropy(logits, episode.query_y, reduction="none"))

    value, grads = value_and_grad(objective)(params)
    params, opt_state = optimizers.adam_update(params, grads, opt_state, lr=lr)
    return params, opt_state, layers.update_running(bn_state, moments, bn_momentum), value


def _check_finite(x, name):
    blocks._check(bool(anp.all(anp.isfinite(getval(x)))), f"{name} contain NaN or inf")
