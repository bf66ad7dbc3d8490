"""The reference cases of the model-based learners: Meta Networks (first and second order) and
SNAIL, each on one synthetic episode."""

import numpy as np
from autograd import value_and_grad

from refmeta import metanet, snail
from refmeta.data import tasks
from refmeta.nn import layers, losses, metanet_parts, optimizers
from refmeta.cases.metric import LR, metric_case
from refmeta.cases.parts import (CONV_BIAS_BEFORE_BN, KEY_BIAS, NOT_APPLICABLE, Array, lstm_layer,
                                 perturbed_batch_norm, prefixed, query_counts, synthetic_episode,
                                 tree_arrays, with_layouts)

# ----- Meta Networks -----
METANET_PROCEDURE = [
    "Notation.  Two learner networks share one layout (model.layers, network \"b\" and \"u\"): b "
    "reads params/base.<name>, u reads params/rep.<name>; <name> is conv0.w … conv{n_blocks−1}.w, "
    "fc1.w, out.w (no biases).  feat(X, x, W*) runs X's conv blocks on images x: h ← maxpool2x2("
    "φ(conv(h, X.conv{i}.w)) + φ(conv(h, W*[conv{i}.w]))), the second term only for the layers W* "
    "names, φ = ReLU, conv 3×3 with zero padding 1 and no bias; after n_blocks blocks h is (F, 1, 1) "
    "and is read as a vector of F = hidden features.  The slow head of X is slow(X, x) = "
    "φ(feat(X, x) @ X.fc1.w) @ X.out.w (no fast weights).  pre(g) = (log(max(|g|, e^−p)) / p, "
    "clip(e^p g, −1, 1)), per coordinate, p = conventions.preprocess_p.",
    "meta_info/task/<name>[t] = ∂/∂ params/rep.<name> of the mean cross-entropy of slow(u, ·) on "
    "support chunk t, for <name> in conv0.w … fc1.w (u's augmented layers; not out.w).  The chunks: "
    "T = min(conventions.representation_chunks, N) runs of N/T consecutive support examples (here "
    "T = N = 3: one example each); a T that does not divide N is refused by refmeta (ValueError).",
    "meta_info/example/<name>[i] = ∂/∂ params/base.<name> of the cross-entropy of slow(b, "
    "support_x[i]) against support_y[i], for every <name> of b (conv0.w … fc1.w, out.w).",
    "First order (conventions.second_order false, the authors' code): both meta_info groups are "
    "constants, no derivative flows through them.  Second order: they are functions of params and "
    "gradient/ differentiates through them.",
    "task_fast_weights/<name> = d_kind(pre(meta_info/task/<name>[0]), …, pre(meta_info/task/<name>"
    "[T−1])) for every coordinate separately, kind = conv for conv kernels and dense for fc1.w.  "
    "d_kind is the lstm_gates layer d.<kind> then the dense layer d.<kind>.out of model.layers: "
    "z_t = pre_t @ d.<kind>.wx + s_{t−1} @ d.<kind>.wh + d.<kind>.b split into contiguous blocks "
    "(a, i, f, o) of 20 columns, c_t = tanh(a) ⊙ σ(i) + σ(f) ⊙ c_{t−1}, s_t = σ(o) ⊙ tanh(c_t), "
    "s_0 = c_0 = 0; the output is s_T @ d.<kind>.out.w + d.<kind>.out.b.",
    "memory/<name>[i] = m_kind(pre(meta_info/example/<name>[i])) for every coordinate, with m_kind "
    "(x) = φ(φ(x @ m.<kind>.l0.w + m.<kind>.l0.b) @ m.<kind>.l1.w + m.<kind>.l1.b) @ "
    "m.<kind>.l2.w + m.<kind>.l2.b.",
    "support_representations[i] = u(support_x[i]) and query_representations[q] = u(query_x[q]) with "
    "u(x) = h @ rep.fc1.w + h @ task_fast_weights/fc1.w, h = feat(u, x, task_fast_weights) (fc1 "
    "linear: no φ in u).",
    "attention[q, i] = r_q · R_i / sqrt(|r_q|² |R_i|² + conventions.attention_eps), r = "
    "query_representations, R = support_representations.",
    "read/<name>[q] = Σ_i softmax_i(attention[q])_i · memory/<name>[i] (softmax over the N support "
    "examples).",
    "logits[q] = h1 @ base.out.w + h1 @ read/out.w[q] with h1 = φ(h @ base.fc1.w) + φ(h @ "
    "read/fc1.w[q]) and h = feat(b, query_x[q], read[q]): b with the fast weights read for query q.",
    "loss = Σ over q of −log softmax(logits[q])[query_y[q]] (conventions.query_reduction = sum).",
    "gradient/<name> = ∂ loss / ∂ params/<name>, for every parameter.",
    f"updated/<name> = params/<name> − lr · gradient/<name> (hyperparameters.lr = {LR}): one plain "
    "gradient step, so that updated checks the gradient at the scale of the params (training, "
    "metanet.step, takes Adam on the clipped gradient instead: see conventions.meta_lr)."]

REP_OUT_UNUSED = ("first order: params/rep.out.w is read only by u's slow head in the losses of "
                  "meta_info/task, whose gradients are constants here; nothing else reads it, so "
                  "the loss does not depend on it")


def _metanet_layers(config, base_fast, rep_fast):
    """model.layers of a MetaNet case: b, u, then m and d for each kind, every parameter named."""
    hidden, out = [], []
    for net, role, fast, source in (("base", "b", base_fast, "read/<name>[q]"),
                                    ("rep", "u", rep_fast, "task_fast_weights/<name>")):
        for i in range(config.n_blocks):
            augmented = f"conv{i}.w" in fast
            hidden.append({
                "type": "conv2d", "network": role, "role": f"{role}: conv block {i}",
                "weight": f"{net}.conv{i}.w", "bias": None,
                "in_channels": config.hidden if i else config.in_channels,
                "out_channels": config.hidden, "kernel_size": [3, 3], "stride": 1,
                "padding": {"top": 1, "bottom": 1, "left": 1, "right": 1},
                "weight_layout": "OIHW (out, in, kh, kw)",
                "operation": "cross-correlation (PyTorch Conv2d, padding=1), no bias",
                "activation": "relu", "augmented": augmented,
                "fast_weight": source.replace("<name>", f"conv{i}.w") if augmented else None,
                "computes": "φ(conv(h, W)) + φ(conv(h, W*)), W* the fast_weight" if augmented
                            else "φ(conv(h, W))"})
            hidden.append({"type": "max_pool", "network": role, "kernel_size": [2, 2], "stride": 2,
                           "padding": 0, "ceil_mode": getattr(config, "pool_rounding", "floor") == "ceil",
                           "ties": "gradient to the first max, row-major"})
        hidden.append({"type": "flatten", "network": role, "order": "C, H, W (H = W = 1 here)"})
        nonlinear = net == "base"
        hidden.append({"type": "dense", "network": role, "role": f"{role}: fc1", "weight": f"{net}.fc1.w",
                       "bias": None, "in_features": config.hidden, "out_features": config.hidden,
                       "weight_layout": "(in, out): x @ w", "activation": "relu" if nonlinear else None,
                       "augmented": True, "fast_weight": source.replace("<name>", "fc1.w"),
                       "computes": "φ(h W) + φ(h W*)" if nonlinear else "h W + h W* (linear)"})
        augmented = "out.w" in fast
        hidden.append({"type": "dense", "network": role, "weight": f"{net}.out.w", "bias": None,
                       "role": f"{role}: output layer" if augmented else
                               f"{role}: output layer, read only by u's slow head in meta_info/task",
                       "in_features": config.hidden, "out_features": config.n_way,
                       "weight_layout": "(in, out): x @ w", "activation": None, "augmented": augmented,
                       "fast_weight": source.replace("<name>", "out.w") if augmented else None,
                       "computes": "h W + h W* (linear)" if augmented else "h W (linear)"})
    for kind in metanet_parts.KINDS:
        widths = [2, metanet_parts.HIDDEN_M, metanet_parts.HIDDEN_M, 1]
        for i in range(3):
            out.append({"type": "dense", "network": f"m.{kind}", "role": f"m for {kind} weights, layer {i}",
                        "weight": f"m.{kind}.l{i}.w", "bias": f"m.{kind}.l{i}.b",
                        "in_features": widths[i], "out_features": widths[i + 1],
                        "weight_layout": "(in, out): y = x @ w + b"})
            if i < 2:
                out.append({"type": "relu", "network": f"m.{kind}"})
        h = metanet_parts.HIDDEN_D
        out.append(dict(lstm_layer(f"d for {kind} weights: the LSTM over t = 1..T, s_0 = c_0 = 0",
                                   f"d.{kind}.wx", f"d.{kind}.wh", f"d.{kind}.b", 2, h, h, "aifo", "s"),
                        network=f"d.{kind}"))
        out.append({"type": "dense", "network": f"d.{kind}", "role": f"d for {kind} weights: output s_T w + b",
                    "weight": f"d.{kind}.out.w", "bias": f"d.{kind}.out.b", "in_features": h,
                    "out_features": 1, "weight_layout": "(in, out): y = x @ w + b"})
    return hidden + out


def _generator_biases(rng, params, config):
    """The case's initialisation of m's and d's biases (docs, "Meta Networks"): every one drawn
    U(±0.1) (draws in sorted name order), then m's and d's output biases shifted so that a
    coordinate whose gradient is exactly 0 gets fast weight exactly 0."""
    biases = sorted(k for k in params if k.startswith(("m.", "d.")) and k.endswith(".b"))
    params = dict(params, **{k: params[k] + rng.uniform(-0.1, 0.1, params[k].shape) for k in biases})
    zero = metanet_parts.preprocess(np.zeros(1), config.preprocess_p)                 # pre(0)
    chunks = min(config.representation_chunks, config.n_way)
    for kind in metanet_parts.KINDS:
        params[f"m.{kind}.l2.b"] = params[f"m.{kind}.l2.b"] - metanet_parts.example_generator(
            params, kind, zero)
        params[f"d.{kind}.out.b"] = params[f"d.{kind}.out.b"] - metanet_parts.task_generator(
            params, kind, np.stack([zero] * chunks))
    return params


def metanet_case(second_order, seed=7, n_way=3, n_query=4, hidden=4, image_size=8, n_blocks=3, chunks=3,
                 fast_init_scale=0.3, class_offset=1.0):
    """Meta Networks (every layer augmented, as MetaNetFull) on one fixed tiny 1-shot episode;
    n_query per class.  The design choices that make every output carry signal are in the docs."""
    rng = np.random.default_rng(seed)
    config = metanet.MetaNetConfig(n_way=n_way, hidden=hidden, n_blocks=n_blocks, second_order=second_order,
                                   representation_chunks=chunks, fast_init_scale=fast_init_scale)
    params = _generator_biases(rng, metanet.init(rng, config), config)
    support_x, support_y, query_x, query_y = synthetic_episode(rng, n_way, 1, n_query, image_size)
    offsets = np.linspace(-class_offset, class_offset, n_way)       # one brightness per class
    support_x = support_x - 0.5 + offsets[support_y][:, None, None, None]
    query_x = query_x - 0.5 + offsets[query_y][:, None, None, None]
    episode = tasks.Episode(support_x, support_y, query_x, query_y)
    out = metanet.episode_outputs(params, episode, config)
    loss, gradient = value_and_grad(metanet.loss)(params, episode, config)
    outputs = {**tree_arrays("meta_info/task", out["meta_info"]["task"], "(T, ...) ∇_Q L_t (3)"),
               **tree_arrays("meta_info/example", out["meta_info"]["example"], "(N, ...) ∇_W L_i (10)"),
               **tree_arrays("task_fast_weights", out["task_fast_weights"], "Q* (4)"),
               **tree_arrays("memory", out["memory"], "(N, ...) M, slot i = W*_i (1)"),
               **tree_arrays("read", out["read"], "(n_query_total, ...) softmax(a_q)ᵀ M (8)"),
               "support_representations": Array(out["support_representations"], "(N, F) R (5)"),
               "query_representations": Array(out["query_representations"], "(n_query_total, F) r_q"),
               "attention": Array(out["attention"], "(n_query_total, N) cosine a_q (7)"),
               "logits": Array(out["logits"], "(n_query_total, N) b(W, W*_q, x_q) (11)"),
               "loss": Array(np.asarray(loss), "() L_train, summed over the queries")}
    outputs.update(tree_arrays("gradient", gradient, "∂ loss / ∂ params",
                               None if second_order else {"rep.out.w": REP_OUT_UNUSED}))
    outputs.update(tree_arrays("updated", optimizers.sgd_update(params, gradient, LR),
                               f"params − {LR} · gradient: one plain gradient step"))
    base_fast = metanet.fast_layers({k[5:]: v for k, v in params.items() if k.startswith("base.")},
                                    config, True)
    rep_fast = metanet.fast_layers({k[4:]: v for k, v in params.items() if k.startswith("rep.")},
                                   config, False)
    model = {"model": "metanet", "networks": {
                 "b": "the base learner, params/base.*: logits = h1 W_out + h1 W*_out, h1 = φ(f W_fc1) + "
                      "φ(f W*_fc1), f = feat(b, x, W*)",
                 "u": "the representation function, params/rep.*: r = f Q_fc1 + f Q*_fc1 (no φ), "
                      "f = feat(u, x, Q*)",
                 "m.conv, m.dense": "the example-level generator m: an MLP 2 → 20 → 20 → 1 applied to "
                                    "pre(g) of every coordinate; m.conv serves conv kernels, m.dense "
                                    "fc1 and out",
                 "d.conv, d.dense": "the task-level generator d: an LSTM (hidden 20, gates a, i, f, o) "
                                    "over the T gradients of every coordinate, then 20 → 1"},
             "layers": with_layouts(_metanet_layers(config, base_fast, rep_fast)),
             "input_layout": "images (n, C, H, W); m and d read pre(g) (2,) per coordinate",
             "dtype": "float64",
             "init": f"metanet.init (Chainer 1.x defaults: W ~ N(0, 1/fan_in), biases 0; m's and d's "
                     f"last-layer weights × fast_init_scale = {fast_init_scale}); then every bias of m "
                     "and d += U(±0.1) (drawn in sorted name order); then m.<kind>.l2.b and "
                     "d.<kind>.out.b shifted so that m_kind(pre(0)) = 0 and d_kind(pre(0), …, pre(0)) "
                     "= 0: a coordinate whose gradient is exactly 0 gets fast weight exactly 0"}
    conventions = dict(
        config.conventions(), first_order=not second_order,
        fast_conv_blocks=("all: MetaNetConfig.fast_conv_blocks = null (None) means every conv block of "
                          "b and u is augmented, as the authors' MetaNetFull; an int k would augment "
                          "the top k only.  Each layer entry says augmented: true/false"),
        representation_chunks_rule=("T = min(representation_chunks, N) chunks of N/T consecutive "
                                    "support examples; refmeta refuses a T that does not divide N "
                                    "(ValueError at the door), as the authors' chunks are equal"),
        meta_lr=NOT_APPLICABLE + f"the case takes one plain gradient step of lr = {LR} "
                                 "(hyperparameters.lr); training (metanet.step) takes Adam(meta_lr) on "
                                 "the gradient clipped to global norm grad_clip_norm, whose first step "
                                 "is about meta_lr·sign(g) whatever the clipping, so it would check "
                                 "neither",
        grad_clip_norm=NOT_APPLICABLE + "the case's one plain gradient step is not clipped; see meta_lr",
        batch_norm="none: b and u have no batch norm (the authors' MetaNetFull)",
        distance="cosine attention over representations, softmax over support examples",
        rotations=NOT_APPLICABLE + "synthetic images", sinusoid=NOT_APPLICABLE + "classification",
        **{k: NOT_APPLICABLE + "no inner loop: fast weights are generated, not stepped"
           for k in ("task_reduction", "inner_reduction", "inner_steps", "test_inner_steps",
                     "adapt_bn", "inner_optimizer_state")})
    inputs = dict(tree_arrays("params", params, "θ = {W, Q, Z, G}"),
                  support_x=Array(support_x, "(N, 1, H, W) support images, one per class, class-major: "
                                             "a random character U(0, 1) + N(0, 0.1²) noise − 0.5 + the "
                                             "class's brightness offset"),
                  support_y=Array(support_y, "(N,) support labels 0..N−1"),
                  query_x=Array(query_x, "(n_query_total, 1, H, W) query images, shuffled, drawn as "
                                         "support_x"),
                  query_y=Array(query_y, "(n_query_total,) query labels 0..N−1"),
                  class_offsets=Array(offsets, "(N,) the brightness offset of each class, already in "
                                               "the images"))
    order = "second" if second_order else "first"
    return {"algorithm": "Meta Networks", "seed": seed, "model": model,
            "description": f"MetaNet ({order} order in the meta-information gradients, every layer fast, "
                           f"{n_blocks} conv blocks × {hidden} filters, {image_size}×{image_size}) on one "
                           f"synthetic {n_way}-way 1-shot episode with {n_query} queries per class "
                           f"({n_way * n_query} in all): gradients, fast weights, memory, attention read, "
                           "logits, loss, gradient and one gradient step.",
            "loss": {"type": "cross-entropy", "per_example": "−log softmax(logits)[y]",
                     "labels": "integers 0..n_way−1 stored as float64",
                     "reduction_over_examples": "sum over the n_query_total queries (query_reduction)"},
            "conventions": conventions, "procedure": METANET_PROCEDURE,
            "hyperparameters": {"n_way": n_way, "k_shot": 1, "n_support_total": n_way,
                                **query_counts(n_way, n_query), "lr": LR, "optimizer": "one plain gradient "
                                "step", "representation_chunks": chunks,
                                "chunks_used": min(chunks, n_way), "image_size": image_size,
                                "hidden": hidden, "n_blocks": n_blocks, "fast_init_scale": fast_init_scale,
                                "class_offset": class_offset},
            "inputs": inputs, "outputs": outputs}


# ----- SNAIL -----
SNAIL_PROCEDURE = [
    "z = embed(concatenate(support_x, query_x)): the conv4 layers of model.layers (max-pool variant, "
    "transductive batch norm over all N·K + n_query_total images), flatten in (C, H, W) order, then "
    "the dense layer embed.out (to d = embedding_dim); embeddings/support = z[:N·K], "
    "embeddings/query = z[N·K:].",
    "sequences[q] (T = N·K + 1 steps, d + N channels): step t < N·K is [embeddings/support[t], "
    "one_hot(support_y[t], N)], the last step is [embeddings/query[q], 0 … 0] (the label slot zero).",
    "Then model.layers from 'block0' on, on every query's sequence separately, time-major (T, C): "
    "causal_conv1d y_t = b + Σ_j x_{t−(k−1−j)·dilation} @ w[j] (x_s = 0 for s < 0; w[k−1] reads step t "
    "itself); a DenseBlock (filter conv, gate conv, gated_concat) concatenates tanh(filter) ⊙ "
    "σ(gate) onto its input; an AttentionBlock (dense query, key, value, then causal_attention) "
    "concatenates P @ values onto its input, P_ts = softmax over keys s ≤ t of query_t · key_s / "
    "√key_size (entries s > t exactly 0).  blocks/block{j} is the output of block j, "
    "attention/block{j} its P (attention blocks only).",
    "logits = blocks/block{last} @ out.w + out.b at every step; log_probabilities = "
    "log_softmax(logits[:, T−1]) (the query step); loss = mean over q of "
    "−log_probabilities[q, query_y[q]]."]


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
    z = snail.embed(params, np.concatenate([episode.support_x, episode.query_x]), config)
    sequences = snail.make_sequences(z[:n_way * k_shot], episode.support_y, z[n_way * k_shot:], config)
    logits, found = snail.apply(params, sequences, config, return_intermediates=True)
    outputs = {"embeddings/support": Array(z[:n_way * k_shot], "(N·K, d) embed(support_x)"),
               "embeddings/query": Array(z[n_way * k_shot:], "(n_query_total, d) embed(query_x)"),
               "sequences": Array(sequences, "(n_query_total, T, d + N) the input sequences"),
               "logits": Array(logits, "(n_query_total, T, N) the output layer at every step"),
               "log_probabilities": Array(losses.log_softmax(logits[:, -1]),
                                          "(n_query_total, N) at the query step")}
    for name, value in found.items():
        group, meaning = (("attention", "(n_query_total, T, T) P, rows: queries t, columns: keys s")
                          if name.endswith(".probs") else
                          ("blocks", "(n_query_total, T, C) the block's output"))
        outputs[f"{group}/{name.split('.')[0]}"] = Array(value, meaning)
    embedding = layers.conv4_describe(1, config.embedding_dim, filters, "maxpool", "both", "transductive",
                                      config.bn_eps, image_size)
    model = {"model": "snail", "embedding": embedding, "layers": _snail_layers(config, embedding),
             "input_layout": "images (n, 1, H, W); sequences (n_query_total, T, C), time-major, channels "
                             "last", "architecture": config.conventions(), "dtype": "float64",
             "init": "conv4 as layers.conv4_init, bn offset U(±0.1), scale 1 + U(±0.1); causal_conv1d "
                     "w, b ~ U(±1/sqrt(k·in)); dense w, b ~ U(±1/sqrt(in)), the attention blocks' query "
                     f"and key w then × attention_init_gain = {attention_init_gain:g}"}
    conventions = {"query_reduction": "mean over the queries, one sequence each",
                   "batch_norm": "transductive: support and query images through the embedding in one "
                                 "call, statistics over all of them; offset and scale, eps 1e-5",
                   "support_order": "as given in support_x (shuffled once when the case was built)",
                   "dilations": f"{config.dilations()}: 2^i for i = 1 … ⌈log₂T⌉, T = N·K + 1",
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
        SNAIL_PROCEDURE, params, episode, lambda p: snail.loss(p, episode, config), outputs, zero)
    for name, meaning in (("support_x", "(N·K, 1, H, W) support images, in the sequence's order"),
                          ("support_y", "(N·K,) support labels 0..N−1, in the sequence's order")):
        case["inputs"][name] = Array(case["inputs"][name].value, meaning)
    return case
