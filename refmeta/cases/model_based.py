"""The reference case of SNAIL on one synthetic episode (Meta Networks' are in ``meta_networks``)."""

import autograd.numpy as anp
import numpy as np

from refmeta import snail
from refmeta.data import tasks
from refmeta.nn import losses, models
from refmeta.cases.metric import metric_case
from refmeta.cases.parts import (CONV_BIAS_BEFORE_BN, KEY_BIAS, NOT_APPLICABLE, Array,
                                 perturbed_batch_norm, prefixed, query_counts, synthetic_episode)

# ----- SNAIL -----
SNAIL_PROCEDURE = [
    "z = embed(concatenate(support_x, query_x)): the conv4 layers of model.layers (max-pool variant, "
    "transductive batch norm over all N·K + n_query_total images), flatten in (C, H, W) order, then "
    "the dense layer embed.out (to d = embedding_dim); embeddings/support = z[:N·K], "
    "embeddings/query = z[N·K:].",
    "sequences[q] (S = N·K + 1 steps, d + N channels): step t < N·K is [embeddings/support[t], "
    "one_hot(support_y[t], N)], the last step is [embeddings/query[q], 0 … 0] (the label slot zero).",
    "Then model.layers from 'block0' on, on every query's sequence separately, time-major (S, C): "
    "causal_conv1d y_t = b + Σ_j x_{t−(k−1−j)·dilation} @ w[j] (x_s = 0 for s < 0; w[k−1] reads step t "
    "itself); a DenseBlock (filter conv, gate conv, gated_concat) concatenates tanh(filter) ⊙ "
    "σ(gate) onto its input; an AttentionBlock (dense query, key, value, then causal_attention) "
    "concatenates P @ values onto its input, P_ts = softmax over keys s ≤ t of query_t · key_s / "
    "√key_size (entries s > t exactly 0).  blocks/block{j} is the output of block j, "
    "attention/block{j} its P (attention blocks only).",
    "logits = blocks/block{last} @ out.w + out.b at every step; log_probabilities = "
    "log_softmax(logits[:, S−1]) (the query step); loss = mean over q of "
    "−log_probabilities[q, query_y[q]]."]
# The outputs as computed: an attention block's P (attention/block{j}) before the block's output
SNAIL_ORDER = ["embeddings/<name>", "sequences", "attention/block{j}, then blocks/block{j}", "logits",
               "log_probabilities", "loss", "gradient/<name>", "updated/<name>"]


def _snail_layers(config, embedding):
    """model.layers of a SNAIL: the embedding's, then every block's as named primitive layers."""
    layers_ = prefixed(embedding["layers"], "embed.")
    layers_.append({"type": "sequence", "channels": config.embedding_dim + config.n_way,
                    "computes": "one sequence per query: N·K support steps [z, one_hot(y)], then "
                                "[z_query, 0]"})
    conv = lambda name, c_in, filters, dilation: {
        "type": "causal_conv1d", "weight": f"{name}.w", "bias": f"{name}.b", "in_channels": c_in,
        "out_channels": filters, "kernel_size": config.kernel_size, "dilation": dilation,
        "weight_layout": "(k, in, out): y_t = b + Σ_j x_{t-(k-1-j)·dilation} @ w[j]"}
    channels = snail.channel_plan(config)
    for j, spec in enumerate(config.blocks):
        c_in = channels[j]
        if spec[0] == "attention":
            layers_ += [{"type": "dense", "role": f"block{j} {part}", "in_features": c_in,
                         "out_features": size, "weight": f"block{j}.{part}.w", "bias": f"block{j}.{part}.b",
                         "weight_layout": "(in, out): y = x @ w + b"}
                        for part, size in (("query", spec[1]), ("key", spec[1]), ("value", spec[2]))]
            layers_.append({"type": "causal_attention", "block": f"block{j}", "key_size": spec[1],
                            "value_size": spec[2], "output_channels": channels[j + 1],
                            "computes": "concat(x, softmax_keys(mask(q kᵀ / √key_size)) @ v)"})
            continue
        for i, dilation in enumerate(config.dilations()):
            name = f"block{j}.dense{i}"
            layers_ += [conv(f"{name}.filter", c_in, spec[1], dilation),
                        conv(f"{name}.gate", c_in, spec[1], dilation),
                        {"type": "gated_concat", "block": name, "output_channels": c_in + spec[1],
                         "computes": "concat(x, tanh(filter) ⊙ sigmoid(gate))"}]
            c_in += spec[1]
    layers_.append({"type": "dense", "role": "output, every step", "in_features": channels[-1],
                    "out_features": config.n_way, "weight": "out.w", "bias": "out.b",
                    "weight_layout": "(in, out): y = x @ w + b"})
    return layers_


def snail_case(seed=0, n_way=3, k_shot=1, n_query=2, filters=4, image_size=16, attention_init_gain=4.0):
    """SNAIL (the paper's five-block pattern at small widths) on one fixed tiny episode; n_query per
    class.  attention_init_gain 4 (the Omniglot demo's): with 1 the attention is nearly uniform and
    the query weights' gradients sit at the tolerance."""
    rng = np.random.default_rng(seed)
    config = snail.SNAILConfig(n_way=n_way, k_shot=k_shot, embedding_dim=6, embedding_filters=filters,
                               image_size=image_size, attention_init_gain=attention_init_gain,
                               blocks=(("attention", 4, 3), ("tc", 3), ("attention", 5, 4), ("tc", 3),
                                       ("attention", 6, 5)))
    params = perturbed_batch_norm(rng, snail.init(rng, config), filters, prefix="embed.")
    support_x, support_y, query_x, query_y = synthetic_episode(rng, n_way, k_shot, n_query, image_size)
    order = rng.permutation(n_way * k_shot)                              # the support in random order
    episode = tasks.Episode(support_x[order], support_y[order], query_x, query_y)
    n_support = n_way * k_shot

    def intermediates(params, episode):
        z = snail.embed(params, anp.concatenate([episode.support_x, episode.query_x]), config)
        sequences = snail.make_sequences(z[:n_support], episode.support_y, z[n_support:], config)
        logits, found = snail.apply(params, sequences, config, return_intermediates=True)
        outputs = {"embeddings/support": Array(z[:n_support], "(N·K, d) embed(support_x)"),
                   "embeddings/query": Array(z[n_support:], "(n_query_total, d) embed(query_x)"),
                   "sequences": Array(sequences, "(n_query_total, S, d + N) the input sequences"),
                   "logits": Array(logits, "(n_query_total, S, N) the output layer at every step"),
                   "log_probabilities": Array(losses.log_softmax(logits[:, -1]),
                                              "(n_query_total, N) at the query step")}
        for name, value in found.items():
            group, meaning = (("attention", "(n_query_total, S, S) P, rows: queries t, columns: keys s")
                              if name.endswith(".probs") else
                              ("blocks", "(n_query_total, S, C) the block's output"))
            outputs[f"{group}/{name.split('.')[0]}"] = Array(value, meaning)
        return outputs

    embedding = models.conv4_describe(1, config.embedding_dim, filters, "maxpool", "both", "transductive",
                                      config.bn_eps, image_size)
    model = {"model": "snail", "embedding": embedding, "layers": _snail_layers(config, embedding),
             "input_layout": "images (n, 1, H, W); sequences (n_query_total, S, C), time-major, channels "
                             "last", "architecture": config.conventions(), "dtype": "float64",
             "init": "conv4 as layers.conv4_init, bn offset U(±0.1), scale 1 + U(±0.1); causal_conv1d "
                     "w, b ~ U(±1/sqrt(k·in)); dense w, b ~ U(±1/sqrt(in)), the attention blocks' query "
                     f"and key w then × attention_init_gain = {attention_init_gain:g}"}
    conventions = {"query_reduction": "mean over the queries, one sequence each",
                   "batch_norm": "transductive: support and query images through the embedding in one "
                                 "call, statistics over all of them; offset and scale, eps 1e-5",
                   "support_order": "as given in support_x (shuffled once when the case was built)",
                   "dilations": f"{config.dilations()}: 2^i for i = 1 … ⌈log₂S⌉, S = N·K + 1 steps",
                   "attention_init_gain": attention_init_gain,
                   "distance": NOT_APPLICABLE + "SNAIL compares through learned attention, not a metric"}
    zero = {f"embed.conv{i}.b": CONV_BIAS_BEFORE_BN for i in range(4)}
    zero.update({f"block{j}.key.b": KEY_BIAS for j, spec in enumerate(config.blocks)
                 if spec[0] == "attention"})
    case = metric_case(
        "SNAIL", f"SNAIL (Mishra et al. 2018) with the paper's block pattern Attn → TC → Attn → TC → Attn "
        f"at small widths, a conv4 max-pool embedding ({filters} filters, {image_size}×{image_size}) and a "
        f"linear map to d = {config.embedding_dim}, on one synthetic {n_way}-way {k_shot}-shot episode with "
        f"{n_query} queries per class ({n_way * n_query} sequences): embeddings, sequences, every block's "
        "output, the attention weights, logits, loss, gradient and one gradient step.", seed, model,
        conventions, {"n_way": n_way, "k_shot": k_shot, "n_support_total": n_way * k_shot,
                      **query_counts(n_way, n_query), "sequence_length": config.sequence_length},
        SNAIL_PROCEDURE, params, episode, intermediates, lambda p, e: snail.loss(p, e, config), zero)
    for name, meaning in (("support_x", "(N·K, 1, H, W) support images, in the sequence's order"),
                          ("support_y", "(N·K,) support labels 0..N−1, in the sequence's order")):
        case.inputs[name] = Array(case.inputs[name].value, meaning)
    case.header["computation_order"] = SNAIL_ORDER
    return case
