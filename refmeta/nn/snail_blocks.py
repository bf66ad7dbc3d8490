"""SNAIL's building blocks (Mishra, Rohaninejad, Chen & Abbeel, ICLR 2018, Section 3.1).

Sequences are time-major with channels last, ``x (..., T, C)``: step t of every leading
(batch) index at once, so a layer is a few matrix products over all episodes and steps.
PyTorch ports hold (B, C, T); transpose the last two axes to compare.

Symbols
    T  sequence length              R  dilation          k  kernel_size (the paper: 2)
    D  filters of a DenseBlock       d_k  key_size        d_v  value_size
    x_t  the input at step t (x_s = 0 for s < 0: the causal zero padding)

Causal convolution (kernel k, dilation R), one matrix product per tap:

    y_t = b + Σ_{j=0}^{k−1} x_{t − (k−1−j)·R} W_j            W_j (C_in, C_out)          (1)

so y_t never reads a step after t.  W_{k−1} multiplies the current step; PyTorch's
``Conv1d`` weight (C_out, C_in, k) with left padding (k−1)·R is w_torch[o, i, j] = W_j[i, o].

DenseBlock(R, D): two causal convolutions of D filters, gated as in WaveNet,
the result concatenated onto the input (C_in → C_in + D):

    x_f = conv_f(x),  x_g = conv_g(x),   a = tanh(x_f) ⊙ σ(x_g),   out = [x, a]        (2)

TCBlock(T, D): DenseBlocks with dilations 2^i, i = s … s + L − 1, L = ⌈log₂T⌉     (3)
(C_in → C_in + L·D).  The paper's loop is i = 1 … ⌈log₂T⌉ (``dilation_start`` s = 1);
some ports start at 2^0 (s = 0).  Each DenseBlock sees every channel before it.

AttentionBlock(d_k, d_v): one causal soft-attention read, concatenated onto the input
(C_in → C_in + d_v):

    Q = x W_q + b_q,   K = x W_k + b_k   (T, d_k);      V = x W_v + b_v   (T, d_v)
    ℓ = Q Kᵀ / √d_k,   P_ts = exp(ℓ_ts) [s ≤ t] / Σ_{s' ≤ t} exp(ℓ_ts')   (CausallyMaskedSoftmax)  (4)
    read = P V,   out = [x, read]

The softmax runs **over keys** s, each row t over s ≤ t, so every row sums to 1 and the
masked entries (s > t) are exactly 0: they are never exponentiated (``where`` puts 0 in
their place first, so no inf appears, forward or backward) and are multiplied by the mask.
A known port bug normalises over queries (axis t); that also leaks the future.

σ is written e^{min(x,0)} / (e^{min(x,0)} + e^{−max(x,0)}) (``sigmoid``): it never overflows
and keeps full relative precision in both tails, where ``layers.sigmoid``'s (1 + tanh(x/2)) / 2
loses it for x ≪ 0 (1 + tanh cancels).  SNAIL's reference case was computed with this form,
so SNAIL keeps its own.

A stack (``stack``, ``stack_init``, ``stack_channels``) lists its blocks as specs
("attention", d_k, d_v) or ("tc", D), block j's params named "block{j}.*"; ``PAPER_BLOCKS`` is
the few-shot stack, ``refmeta.snail``'s (3).  A TC block built for T steps reads any T' ≤ T:
every block is causal, so the outputs of T' steps are the first T' outputs of any longer
sequence that starts with them.

Branches.  Q sequences that share their first P steps (an episode's support set, one sequence
per query) need not repeat them: lay them out as one sequence of P + Q steps, the shared steps
then the Q last steps, and give every block ``branches`` = Q.  Each of the last Q steps then
stands at time P: a causal convolution's tap x_{t − lag} reads x_{P − lag} (lag > 0) or the step
itself, and the attention row reads the P shared steps and itself, never another branch.  Step
P + i computes exactly what step P of sequence i computes alone, in one pass over P + Q steps
instead of Q·(P + 1).  ``branches`` = 1 (the default) is the ordinary causal sequence.

The model's input: ``sequences`` lays out an episode as one sequence per query, the support
steps [z, onehot(y)] then [z_query, 0] (``refmeta.snail``'s (1)), and ``branched_sequence`` as
one sequence with the Q query steps as branches; ``embed`` is f, the conv4 max-pool network
(``models.conv4_apply``) on every image of every leading index at once.

Params are flat dicts; a block's names are relative ("filter.w", "key.b", "dense0.gate.w")
and a model prefixes them.  Initialisation follows PyTorch's defaults (``uniform_init``):
w, b ~ U(±1/√fan_in), fan_in = k·C_in for a convolution and C_in for an affine map.

These are the paper's equations and carry no input checks: ``refmeta.snail``'s entry points
check their inputs once, through ``refmeta.checks``, before any of this runs.
"""

import math

import autograd.numpy as anp
import numpy as np
from autograd.tracer import getval

from refmeta.nn import losses, models, trees

__all__ = ["PAPER_BLOCKS", "BLOCK_FORMS", "causal_conv1d", "causal_mask", "causal_softmax", "sigmoid", "dense_block",
           "tc_dilations", "tc_block", "attention_block", "dense_block_init", "tc_block_init",
           "attention_block_init", "dense_block_channels", "tc_block_channels",
           "attention_block_channels", "stack", "stack_channels", "stack_init", "rows_matmul",
           "uniform_init", "sequences", "branched_sequence", "embed"]

PAPER_BLOCKS = (("attention", 64, 32), ("tc", 128), ("attention", 256, 128), ("tc", 128),
                ("attention", 512, 256))          # the few-shot stack (Appendix A), as specs
BLOCK_FORMS = {"attention": ("key_size", "value_size"), "tc": ("filters",)}   # a spec's sizes


def rows_matmul(x, w):
    """x (..., T, C) @ w (C, F): one BLAS call over every leading index and step when w is 2-D."""
    if anp.ndim(w) != 2:
        return anp.matmul(x, w)                               # batched params: per leading index
    flat = anp.matmul(anp.reshape(x, (-1, anp.shape(x)[-1])), w)
    return anp.reshape(flat, anp.shape(x)[:-1] + (anp.shape(w)[-1],))


def _shift(x, lag, branches=1):
    """x_{t − lag} along the time axis −2, zeros before the first step: (..., T, C).  The last
    ``branches`` steps all stand at time P = T − branches (see "Branches" above) and read x_{P − lag}."""
    if lag == 0:
        return x
    prefix = anp.shape(x)[-2] - branches                                   # P
    head = anp.concatenate([anp.zeros_like(x[..., :min(lag, prefix), :]),
                            x[..., :max(prefix - lag, 0), :]], axis=-2)     # steps t < P: x_{t − lag}
    if lag > prefix:
        tail = anp.zeros_like(x[..., prefix:, :])                          # before the first step
    else:
        row = x[..., prefix - lag:prefix - lag + 1, :]                     # x_{P − lag}, shared
        tail = anp.broadcast_to(row, anp.shape(row)[:-2] + (branches, anp.shape(x)[-1]))
    return anp.concatenate([head, tail], axis=-2)


def causal_conv1d(x, w, b, dilation, branches=1):
    """(1): x (..., T, C_in), w (..., k, C_in, C_out), b (..., C_out) -> (..., T, C_out)."""
    kernel_size, c_in, c_out = anp.shape(w)[-3:]
    taps = [_shift(x, (kernel_size - 1 - j) * dilation, branches) for j in range(kernel_size)]
    stacked = taps[0] if kernel_size == 1 else anp.concatenate(taps, axis=-1)  # (..., T, k·C_in)
    kernel = anp.reshape(w, anp.shape(w)[:-3] + (kernel_size * c_in, c_out))   # rows (j, c)
    return rows_matmul(stacked, kernel) + b[..., None, :]


def sigmoid(x):
    """σ(x) = e^{min(x,0)} / (e^{min(x,0)} + e^{−max(x,0)}): no overflow, full relative precision
    in both tails, and the right derivative at 0 (autograd splits max/min ties evenly)."""
    low = anp.exp(anp.minimum(x, 0.0))
    return low / (low + anp.exp(-anp.maximum(x, 0.0)))


def dense_block(params, x, dilation, branches=1):
    """(2): params {"filter.w", "filter.b", "gate.w", "gate.b"}; x (..., T, C) -> (..., T, C + D)."""
    filters = anp.shape(params["filter.w"])[-1]
    w = anp.concatenate([params["filter.w"], params["gate.w"]], axis=-1)   # one product for both
    b = anp.concatenate([params["filter.b"], params["gate.b"]], axis=-1)
    both = causal_conv1d(x, w, b, dilation, branches)                                # (..., T, 2D)
    activations = anp.tanh(both[..., :filters]) * sigmoid(both[..., filters:])
    return anp.concatenate([x, activations], axis=-1)


def tc_dilations(sequence_length, dilation_start=1):
    """(3): [2^s, …, 2^(s+L−1)] with L = ⌈log₂T⌉ (exact integer arithmetic)."""
    n_blocks = (int(sequence_length) - 1).bit_length()                      # ⌈log₂T⌉
    return [2 ** i for i in range(dilation_start, dilation_start + n_blocks)]


def tc_block(params, x, dilations, branches=1):
    """(3): DenseBlock "dense{i}.*" with dilation dilations[i], in order."""
    for i, dilation in enumerate(dilations):
        x = dense_block(trees.subtree(params, f"dense{i}"), x, dilation, branches)
    return x


def causal_mask(steps, like, branches=1):
    """(T, T) bool on ``like``'s device: True where query t may read key s, i.e. s ≤ t, and for
    the last ``branches`` steps (those at time P = T − branches) s < P or s = t."""
    index = np.arange(steps, like=getval(like))
    shared = index[None, :] < steps - branches                             # keys before P
    return (index[:, None] >= index[None, :]) & (shared | (index[:, None] == index[None, :]))


def causal_softmax(logits, branches=1):
    """(4): softmax over the last axis (keys) of logits (..., T, T), masked keys exactly 0."""
    mask = causal_mask(anp.shape(logits)[-1], logits, branches)
    raw = getval(logits)
    shift = anp.max(anp.where(mask, raw, -np.inf), axis=-1, keepdims=True)  # a constant: cancels
    exps = anp.exp(anp.where(mask, logits - shift, 0.0)) * mask.astype(raw.dtype)
    return exps / anp.sum(exps, axis=-1, keepdims=True)


def attention_block(params, x, return_probs=False, branches=1):
    """(4): params {"key.*", "query.*", "value.*"}; x (..., T, C) -> (..., T, C + V).

    With return_probs, also P (..., T, T): row t is the read's weights over the steps it may read.
    """
    key_size = anp.shape(params["key.w"])[-1]
    w = anp.concatenate([params["query.w"], params["key.w"], params["value.w"]], axis=-1)
    b = anp.concatenate([params["query.b"], params["key.b"], params["value.b"]], axis=-1)
    projected = rows_matmul(x, w) + b[..., None, :]                       # (..., T, 2K + V)
    queries, keys = projected[..., :key_size], projected[..., key_size:2 * key_size]
    values = projected[..., 2 * key_size:]
    logits = anp.matmul(queries, anp.swapaxes(keys, -1, -2)) / math.sqrt(key_size)  # (..., T, T)
    probs = causal_softmax(logits, branches)
    out = anp.concatenate([x, anp.matmul(probs, values)], axis=-1)
    return (out, probs) if return_probs else out


def stack(params, x, specs, dilations, return_intermediates=False, branches=1):
    """The blocks of ``specs`` in order, block j with params "block{j}.*": x (..., T, C_0) ->
    (..., T, C_final), the last ``branches`` steps read as branches.  With return_intermediates,
    also {"block{j}.probs": P of an attention block, "block{j}": every block's output}."""
    found = {}
    for j, spec in enumerate(specs):
        block = trees.subtree(params, f"block{j}")
        if spec[0] == "attention":
            x, found[f"block{j}.probs"] = attention_block(block, x, return_probs=True,
                                                          branches=branches)
        else:
            x = tc_block(block, x, dilations, branches)
        found[f"block{j}"] = x
    return (x, found) if return_intermediates else x


# ----- the input: embeddings and labels, one sequence per query or one per episode -----
def _steps(support_z, support_y, query_z, n_way):
    """[z, onehot(y)] (..., N·K, d + N) and [z_query, 0] (..., Q, d + N)."""
    one_hot = losses.one_hot(getval(support_y), n_way, support_z, check=False)
    support = anp.concatenate([support_z, one_hot], axis=-1)
    slot = np.zeros(anp.shape(query_z)[:-1] + (n_way,), dtype=getval(query_z).dtype,
                    like=getval(query_z))
    return support, anp.concatenate([query_z, slot], axis=-1)              # zero label slot


def sequences(support_z, support_y, query_z, n_way):
    """support_z (..., N·K, d), support_y (..., N·K) ints, query_z (..., Q, d) -> (..., Q, N·K + 1,
    d + N): per query, the support steps [z, onehot(y)] in order, then [z_query, 0]."""
    support, query = _steps(support_z, support_y, query_z, n_way)
    support = anp.broadcast_to(support[..., None, :, :], anp.shape(query_z)[:-1]
                               + anp.shape(support)[-2:])                  # (..., Q, N·K, d + N)
    return anp.concatenate([support, query[..., :, None, :]], axis=-2)      # (..., Q, T, d + N)


def branched_sequence(support_z, support_y, query_z, n_way):
    """The same episode as one sequence read with ``branches`` = Q: (..., N·K + Q, d + N), the
    support steps once, then the Q query steps [z_query, 0]."""
    support, query = _steps(support_z, support_y, query_z, n_way)
    return anp.concatenate([support, query], axis=-2)


# ----- the embedding f (Appendix A: conv4 max-pool, then a linear layer) -----
def embed(params, images, bn_eps, bn_state=None, return_bn_moments=False):
    """f: images (..., n, C, H, W) -> (..., n, d) by ``models.conv4_apply`` ("maxpool") on the
    images of every leading index at once: batch norm on the statistics of all of them (bn_state
    None) or on bn_state's; return_bn_moments adds the images' moments."""
    shape = anp.shape(images)
    flat = anp.reshape(images, (-1,) + shape[-3:])                          # (M, C, H, W)
    out = models.conv4_apply(params, flat, variant="maxpool",
                             bn_mode="transductive" if bn_state is None else "running",
                             bn_state=bn_state, bn_eps=bn_eps, return_bn_moments=return_bn_moments)
    features, moments = out if return_bn_moments else (out, None)
    features = anp.reshape(features, shape[:-3] + (anp.shape(features)[-1],))
    return (features, moments) if return_bn_moments else features


# ----- channel counts -----
def dense_block_channels(in_channels, filters):
    return in_channels + filters


def tc_block_channels(in_channels, sequence_length, filters):
    return in_channels + len(tc_dilations(sequence_length)) * filters


def attention_block_channels(in_channels, value_size):
    return in_channels + value_size


def stack_channels(in_channels, specs, sequence_length):
    """[C_0, the channels after each block of ``specs``]."""
    channels = [in_channels]
    for spec in specs:
        channels.append(attention_block_channels(channels[-1], spec[2]) if spec[0] == "attention"
                        else tc_block_channels(channels[-1], sequence_length, spec[1]))
    return channels


# ----- initialisers (host float64) -----
def uniform_init(rng, fan_in, shape):
    """U(±1/√fan_in) of ``shape``, host float64: PyTorch's default for weights and biases."""
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape)


def dense_block_init(rng, in_channels, filters, kernel_size=2):
    """{"filter.w", "gate.w": (k, C_in, D), "filter.b", "gate.b": (D,)}, PyTorch Conv1d init."""
    fan_in = kernel_size * in_channels
    return {f"{part}.{leaf}": uniform_init(rng, fan_in, (kernel_size, in_channels, filters)
                                           if leaf == "w" else (filters,))
            for part in ("filter", "gate") for leaf in ("w", "b")}


def tc_block_init(rng, in_channels, sequence_length, filters, kernel_size=2):
    """"dense{i}.*" for the ⌈log₂T⌉ DenseBlocks, each seeing the channels before it."""
    params, channels = {}, in_channels
    for i in range(len(tc_dilations(sequence_length))):
        params.update({f"dense{i}.{k}": v for k, v in
                       dense_block_init(rng, channels, filters, kernel_size).items()})
        channels = dense_block_channels(channels, filters)
    return params


def attention_block_init(rng, in_channels, key_size, value_size, query_key_gain=1.0):
    """{"query.w", "key.w": (C, K), "value.w": (C, V), and biases}, PyTorch Linear init
    U(±1/√C), except that the query and key weights are multiplied by ``query_key_gain``
    (the same draws: gain 1 is PyTorch's init exactly)."""
    sizes = {"query": key_size, "key": key_size, "value": value_size}
    params = {}
    for part, size in sizes.items():
        gain = query_key_gain if part in ("query", "key") else 1.0
        params[f"{part}.w"] = gain * uniform_init(rng, in_channels, (in_channels, size))
        params[f"{part}.b"] = uniform_init(rng, in_channels, (size,))
    return params


def stack_init(rng, in_channels, specs, sequence_length, kernel_size=2, query_key_gain=1.0):
    """"block{j}.*" for the blocks of ``specs`` in order, each seeing the channels before it."""
    channels, params = stack_channels(in_channels, specs, sequence_length), {}
    for j, spec in enumerate(specs):
        block = (attention_block_init(rng, channels[j], spec[1], spec[2], query_key_gain)
                 if spec[0] == "attention" else
                 tc_block_init(rng, channels[j], sequence_length, spec[1], kernel_size))
        params.update({f"block{j}.{k}": v for k, v in block.items()})
    return params
