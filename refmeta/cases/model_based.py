"""The reference cases of the model-based learners: Meta Networks (first and second order) and
SNAIL, each on one synthetic episode."""

import numpy as np
from autograd import value_and_grad

from refmeta import metanet, snail
from refmeta.data import tasks
from refmeta.nn import layers, losses, metanet_parts, optimizers, trees
from refmeta.cases.metric import METRIC_UPDATE_PROCEDURE, metric_case
from refmeta.cases.parts import (NOT_APPLICABLE, Array, perturbed_batch_norm, synthetic_episode,
                                 tree_arrays)


METANET_PROCEDURE = [
    "Networks b (params/base.<name>) and u (params/rep.<name>) as model.learner; m and d as model.m, "
    "model.d; pre(g) = (log(max(|g|, e^-p)) / p, clip(e^p g, -1, 1)) per coordinate, p = "
    "conventions.preprocess_p.",
    "meta_info/task/<name>[t] = ∂/∂Q_<name> of the mean cross-entropy of u's slow head "
    "(relu(f Q_fc1) Q_out) on support chunk t (T = representation_chunks chunks of consecutive "
    "support examples), for u's augmented layers (every conv block and fc1).",
    "meta_info/example/<name>[i] = ∂/∂W_<name> of the cross-entropy of b's slow network on support "
    "example i alone, for every layer of b.",
    "task_fast_weights/<name> = d(pre(meta_info/task/<name>[0..T-1])): the LSTM run over t, per coordinate.",
    "memory/<name>[i] = m(pre(meta_info/example/<name>[i])), per coordinate.",
    "support_representations = u(Q, Q*, support_x), query_representations = u(Q, Q*, query_x).",
    "attention[q, i] = r_q·R_i / sqrt(|r_q|² |R_i|² + attention_eps).",
    "read/<name>[q] = Σ_i softmax_i(attention[q])_i memory/<name>[i].",
    "logits[q] = b(W, read[q], query_x[q]) with layer augmentation.",
    "loss = Σ_q −log softmax(logits[q])[query_y[q]] (conventions.query_reduction).",
    "gradient/<name> = ∂ loss / ∂ params/<name>: through the gradients meta_info if "
    "conventions.second_order, else with meta_info held constant.",
    "updated/<name> = params/<name> − 0.01 · gradient/<name>: one plain gradient step (the demo "
    "takes Adam with global-norm clipping)."]


def metanet_case(second_order, seed=0, n_way=3, n_query=4, hidden=3, image_size=8, n_blocks=3, chunks=3):
    """Meta Networks (every layer augmented, as MetaNetFull) on one fixed tiny 1-shot episode."""
    rng = np.random.default_rng(seed)
    config = metanet.MetaNetConfig(n_way=n_way, hidden=hidden, n_blocks=n_blocks, second_order=second_order,
                                   representation_chunks=chunks)
    params = metanet.init(rng, config)
    support_x, support_y, query_x, query_y = synthetic_episode(rng, n_way, 1, n_query, image_size)
    episode = tasks.Episode(support_x, support_y, query_x, query_y)
    out = metanet.episode_outputs(params, episode, config)
    loss, gradient = value_and_grad(metanet.loss)(params, episode, config)
    outputs = {**tree_arrays("meta_info/task", out["meta_info"]["task"], "(T, ...) ∇_Q L_t (3)"),
               **tree_arrays("meta_info/example", out["meta_info"]["example"], "(N, ...) ∇_W L_i (10)"),
               **tree_arrays("task_fast_weights", out["task_fast_weights"], "Q* (4)"),
               **tree_arrays("memory", out["memory"], "(N, ...) M, slot i = W*_i (1)"),
               **tree_arrays("read", out["read"], "(n_query, ...) softmax(a_q)ᵀ M (8)"),
               "support_representations": Array(out["support_representations"], "(N, F) R (5)"),
               "query_representations": Array(out["query_representations"], "(n_query, F) r_q"),
               "attention": Array(out["attention"], "(n_query, N) cosine a_q (7)"),
               "logits": Array(out["logits"], "(n_query, N) b(W, W*_q, x_q) (11)"),
               "loss": Array(np.asarray(loss), "() L_train")}
    outputs.update(tree_arrays("gradient", gradient, "∂ loss / ∂ params"))
    outputs.update(tree_arrays("updated", optimizers.sgd_update(params, gradient, 0.01), "one step of 0.01"))
    base, rep = trees.subtree(params, "base"), trees.subtree(params, "rep")
    model = metanet_parts.describe(config.in_channels, hidden, n_blocks, n_way,
                                   metanet.fast_layers(base, config, True),
                                   metanet.fast_layers(rep, config, False))
    conventions = dict(config.conventions(), first_order=not second_order,
                       batch_norm="none: b and u have no batch norm (the authors' MetaNetFull)",
                       distance="cosine attention over representations, softmax over support examples",
                       rotations=NOT_APPLICABLE + "synthetic images",
                       sinusoid=NOT_APPLICABLE + "classification",
                       **{k: NOT_APPLICABLE + "no inner loop: fast weights are generated, not stepped"
                          for k in ("task_reduction", "inner_reduction", "inner_steps", "test_inner_steps",
                                    "adapt_bn", "inner_optimizer_state")})
    inputs = dict(tree_arrays("params", params, "θ = {W, Q, Z, G}"),
                  support_x=Array(support_x, "(N, 1, H, W) support images, one per class"),
                  support_y=Array(support_y, "(N,) support labels 0..N−1"),
                  query_x=Array(query_x, "(n_query, 1, H, W) query images, shuffled"),
                  query_y=Array(query_y, "(n_query,) query labels 0..N−1"))
    return {"algorithm": "Meta Networks", "seed": seed, "model": model,
            "description": f"MetaNet ({'second' if second_order else 'first'} order in the meta-information "
                           f"gradients, every layer fast, {n_blocks} conv blocks × {hidden} filters, "
                           f"{image_size}×{image_size}) on one synthetic {n_way}-way 1-shot episode with "
                           f"{n_query} queries: gradients, fast weights, memory, attention read, logits, "
                           "loss, gradient and one gradient step.",
            "loss": {"type": "cross-entropy", "per_example": "−log softmax(logits)[y]",
                     "labels": "integers 0..n_way−1 stored as float64"},
            "conventions": conventions, "procedure": METANET_PROCEDURE,
            "hyperparameters": {"n_way": n_way, "k_shot": 1, "n_query": n_query, "lr": 0.01,
                                "representation_chunks": chunks},
            "inputs": inputs, "outputs": outputs}


SNAIL_PROCEDURE = [
    "z = embed(concatenate(support_x, query_x)): the conv4 layers of model.layers (max-pool variant, "
    "transductive batch norm over all N·K + n_query images), flatten, then the dense layer "
    "embed.out; embeddings/support = z[:N·K], embeddings/query = z[N·K:].",
    "sequences[q] (T = N·K + 1 steps, d + N channels): step t < N·K is [embeddings/support[t], "
    "one_hot(support_y[t], N)], the last step is [embeddings/query[q], 0 … 0] (the label slot zero).",
    "Then model.layers from 'block0' on, per query sequence, time-major (T, C): causal_conv1d "
    "y_t = b + Σ_j x_{t−(k−1−j)·dilation} @ w[j] (x_s = 0 for s < 0; w[k−1] reads step t itself); "
    "a DenseBlock concatenates tanh(filter) ⊙ sigmoid(gate) onto its input; an AttentionBlock "
    "concatenates P @ values onto its input, P = softmax over keys s ≤ t of queries_t · keys_s / "
    "√key_size (entries s > t exactly 0).  blocks/block{j} is the output of block j, "
    "attention/block{j} its P.",
    "logits = blocks/block{last} @ out.w + out.b at every step; log_probabilities = "
    "log_softmax(logits[:, T−1]) (the query step); loss = mean over q of "
    "−log_probabilities[q, query_y[q]]."]


def _snail_layers(config, embedding):
    """model.layers of a SNAIL: the embedding's, then every block's as named primitive layers."""
    layers_ = [{k: (f"embed.{v}" if k in ("weight", "bias", "offset", "scale") and v else v)
                for k, v in layer.items()} for layer in embedding["layers"]]
    layers_.append({"type": "sequence", "channels": config.embedding_dim + config.n_way,
                    "computes": "one sequence per query: N·K support steps [z, one_hot(y)], then "
                                "[z_query, 0]"})
    conv = lambda name, c_in, filters, dilation: {
        "type": "causal_conv1d", "weight": f"{name}.w", "bias": f"{name}.b", "in_channels": c_in,
        "out_channels": filters, "kernel_size": config.kernel_size, "dilation": dilation,
        "weight_layout": "(k, in, out): y_t = b + Σ_j x_{t-(k-1-j)·dilation} @ w[j]; PyTorch "
                         "Conv1d weight = w.permute(2, 1, 0), left padding (k-1)·dilation"}
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


def snail_case(seed=0, n_way=3, k_shot=1, n_query=2, filters=4, image_size=16):
    """SNAIL (the paper's five-block pattern at small widths) on one fixed tiny episode."""
    rng = np.random.default_rng(seed)
    config = snail.SNAILConfig(n_way=n_way, k_shot=k_shot, embedding_dim=6, embedding_filters=filters,
                               image_size=image_size, blocks=(("attention", 4, 3), ("tc", 3),
                                                              ("attention", 5, 4), ("tc", 3), ("attention", 6, 5)))
    params = perturbed_batch_norm(rng, snail.init(rng, config), filters, prefix="embed.")
    support_x, support_y, query_x, query_y = synthetic_episode(rng, n_way, k_shot, n_query, image_size)
    order = rng.permutation(n_way * k_shot)                              # the support in random order
    episode = tasks.Episode(support_x[order], support_y[order], query_x, query_y)
    z = snail.embed(params, np.concatenate([episode.support_x, episode.query_x]), config)
    sequences = snail.make_sequences(z[:n_way * k_shot], episode.support_y, z[n_way * k_shot:], config)
    logits, found = snail.apply(params, sequences, config, return_intermediates=True)
    outputs = {"embeddings/support": Array(z[:n_way * k_shot], "(N·K, d) embed(support_x)"),
               "embeddings/query": Array(z[n_way * k_shot:], "(n_query, d) embed(query_x)"),
               "sequences": Array(sequences, "(n_query, T, d + N) the input sequences"),
               "logits": Array(logits, "(n_query, T, N) the output layer at every step"),
               "log_probabilities": Array(losses.log_softmax(logits[:, -1]), "(n_query, N) at the query step")}
    for name, value in found.items():
        group, meaning = (("attention", "(n_query, T, T) P, rows: queries t, columns: keys s")
                          if name.endswith(".probs") else ("blocks", "(n_query, T, C) the block's output"))
        outputs[f"{group}/{name.split('.')[0]}"] = Array(value, meaning)
    embedding = layers.conv4_describe(1, config.embedding_dim, filters, "maxpool", "both", "transductive",
                                      config.bn_eps, image_size)
    model = {"model": "snail", "embedding": embedding, "layers": _snail_layers(config, embedding),
             "input_layout": "images (n, 1, H, W); sequences (n_query, T, C), time-major, channels last",
             "architecture": config.conventions(), "dtype": "float64",
             "init": "conv4 as layers.conv4_init, bn offset/scale perturbed by U(±0.1); causal_conv1d "
                     "w, b ~ U(±1/sqrt(k·in)); dense w, b ~ U(±1/sqrt(in))"}
    conventions = {"query_reduction": "mean over the queries, one sequence each",
                   "batch_norm": "transductive: support and query images through the embedding in one "
                                 "call, statistics over all of them; offset and scale, eps 1e-5",
                   "support_order": "as given in support_x (shuffled once when the case was built)",
                   "dilations": f"{config.dilations()}: 2^i for i = 1 … ⌈log₂T⌉, T = N·K + 1",
                   "distance": NOT_APPLICABLE + "SNAIL compares through learned attention, not a metric"}
    case = metric_case(
        "SNAIL", f"SNAIL (Mishra et al. 2018) with the paper's block pattern Attn → TC → Attn → TC → Attn "
        f"at small widths, a conv4 max-pool embedding ({filters} filters, {image_size}×{image_size}) and a "
        f"linear map to d = {config.embedding_dim}, on one synthetic {n_way}-way {k_shot}-shot episode with "
        f"{n_query} queries: embeddings, sequences, every block's output, the attention weights, logits, "
        "loss, gradient and one gradient step.", seed, model, conventions,
        {"n_way": n_way, "k_shot": k_shot, "n_query": n_query, "sequence_length": config.sequence_length},
        [], params, episode, lambda p: snail.loss(p, episode, config), outputs)
    case["procedure"] = SNAIL_PROCEDURE + METRIC_UPDATE_PROCEDURE     # replaces the metric embed step
    for name, meaning in (("support_x", "(N·K, 1, H, W) support images, in the sequence's order"),
                          ("support_y", "(N·K,) support labels 0..N−1, in the sequence's order")):
        case["inputs"][name] = Array(case["inputs"][name].value, meaning)
    return case
