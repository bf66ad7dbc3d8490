"""The reference cases of Meta Networks: first and second order on a 3-way 1-shot episode, and
first order on a 4-way 1-shot episode whose representation loss is taken on chunks of two.

Why the case is drawn as it is (docs/reference-cases.md, "Meta Networks"): a coordinate whose
gradient is exactly 0 gets the fast weight ``ZERO_GRADIENT_FAST_WEIGHT`` of its kind, −0.05 for
a conv kernel and +0.05 for a dense matrix, never 0: a fast weight of 0 up to rounding puts its
ReLU's input at ±1e-17, where rounding picks the side.
"""

import numpy as np
from autograd import value_and_grad

from refmeta import metanet
from refmeta.data import tasks
from refmeta.nn import metanet_parts, optimizers
from refmeta.cases.metric import LR
from refmeta.cases.parts import (NOT_APPLICABLE, ONE_TASK, Array, Recipe, group_scales, host,
                                 lstm_layer, power_of_ten_above, query_counts, synthetic_episode,
                                 tree_arrays, values_under, with_layouts)

ZERO_GRADIENT_FAST_WEIGHT = (("conv", -0.05), ("dense", 0.05))
# The fast weights are m and d applied to pre(g): pre divides a small gradient's absolute rounding
# error by p·|g| (its log part) or multiplies it by e^p (its clip part), so their rounding error
# is up to ~100 times the default's assumption: atol = 1e-9 × the group's scale (docs, "Tolerances")
FAST_WEIGHT_GROUPS = ("task_fast_weights/", "memory/", "read/")
FAST_WEIGHT_ATOL = 1e-9
REP_OUT_UNUSED = ("first order: params/rep.out.w is read only by u's slow head in the losses of "
                  "meta_info/task, whose gradients are constants here; nothing else reads it, so "
                  "the loss does not depend on it")


def metanet_procedure(n_support, chunks):
    """The steps of a MetaNet case, in terms of its array names (J = chunks of the support set)."""
    size = n_support // chunks
    members = "support example j" if size == 1 else \
        f"support examples {size}j … {size}j + {size - 1}" if size > 2 else "support examples 2j and 2j + 1"
    return [
        "Notation.  Two learner networks share one layout (model.layers, network \"b\" and \"u\"): b "
        "reads params/base.<name>, u reads params/rep.<name>; <name> is conv0.w … conv{n_blocks−1}.w, "
        "fc1.w, out.w (no biases).  feat(X, x, W*) runs X's conv blocks on images x: h ← maxpool2x2("
        "φ(conv(h, X.conv{i}.w)) + φ(conv(h, W*[conv{i}.w]))), the second term only for the layers W* "
        "names, φ = ReLU, conv 3×3 with zero padding 1 and no bias; after n_blocks blocks h is (F, 1, "
        "1) and is read as a vector of F = hidden features.  The slow head of X is slow(X, x) = "
        "φ(feat(X, x) @ X.fc1.w) @ X.out.w (no fast weights; the layer entries used_by \"slow "
        "head\").  pre(g) = (log(max(|g|, e^−p)) / p, clip(e^p g, −1, 1)), per coordinate, p = "
        "conventions.preprocess_p.",
        f"meta_info/task/<name>[j] = ∂/∂ params/rep.<name> of the cross-entropy of slow(u, ·) on "
        f"support chunk j, averaged over the chunk's examples (conventions.chunk_loss_reduction = "
        f"mean), for <name> in conv0.w … fc1.w (u's augmented layers; not out.w).  The chunks: J = "
        f"min(conventions.representation_chunks, N) runs of N/J consecutive support examples (here J = "
        f"{chunks}, chunk j = {members}); a J that does not divide N is refused by refmeta (ValueError).",
        "meta_info/example/<name>[i] = ∂/∂ params/base.<name> of the cross-entropy of slow(b, "
        "support_x[i]) against support_y[i], for every <name> of b (conv0.w … fc1.w, out.w).",
        "First order (conventions.second_order false, the authors' code): both meta_info groups are "
        "constants, no derivative flows through them.  Second order: they are functions of params and "
        "gradient/ differentiates through them.",
        "task_fast_weights/<name> = d_kind(pre(meta_info/task/<name>[0]), …, pre(meta_info/task/<name>"
        "[J−1])) for every coordinate separately, kind = conv for conv kernels and dense for fc1.w.  "
        "d_kind is the lstm_gates layer d.<kind> then the dense layer d.<kind>.out of model.layers: "
        "z_j = pre_j @ d.<kind>.wx + s_{j−1} @ d.<kind>.wh + d.<kind>.b split into contiguous blocks "
        "(a, i, f, o) of 20 columns, c_j = tanh(a) ⊙ σ(i) + σ(f) ⊙ c_{j−1}, s_j = σ(o) ⊙ tanh(c_j), "
        "s_{−1} = c_{−1} = 0; the output is s_{J−1} @ d.<kind>.out.w + d.<kind>.out.b.",
        "memory/<name>[i] = m_kind(pre(meta_info/example/<name>[i])) for every coordinate, with m_kind"
        "(x) = φ(φ(x @ m.<kind>.l0.w + m.<kind>.l0.b) @ m.<kind>.l1.w + m.<kind>.l1.b) @ "
        "m.<kind>.l2.w + m.<kind>.l2.b.",
        "support_representations[i] = u(support_x[i]) and query_representations[q] = u(query_x[q]) with "
        "u(x) = h @ rep.fc1.w + h @ task_fast_weights/fc1.w, h = feat(u, x, task_fast_weights) (u's "
        "fc1 is linear here, used_by \"representation\"; its slow head applies φ).",
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


def _learner_layers(config, net, name, fast, source, uses):
    """The layer entries of one learner network (b or u); ``uses``: the computations it runs in."""
    entries = []
    for i in range(config.n_blocks):
        augmented = f"conv{i}.w" in fast
        entries.append({
            "type": "conv2d", "network": name, "role": f"{name}: conv block {i}", "used_by": uses,
            "weight": f"{net}.conv{i}.w", "bias": None,
            "in_channels": config.hidden if i else config.in_channels,
            "out_channels": config.hidden, "kernel_size": [3, 3], "stride": 1,
            "padding": {"top": 1, "bottom": 1, "left": 1, "right": 1},
            "weight_layout": "OIHW (out, in, kh, kw)",
            "operation": "cross-correlation (PyTorch Conv2d, padding=1), no bias",
            "activation": "relu", "augmented": augmented,
            "fast_weight": source.replace("<name>", f"conv{i}.w") if augmented else None,
            "computes": "φ(conv(h, W)) + φ(conv(h, W*)), W* the fast_weight (the slow head: "
                        "φ(conv(h, W)))" if augmented else "φ(conv(h, W))"})
        entries.append({"type": "max_pool", "network": name, "used_by": uses, "kernel_size": [2, 2],
                        "stride": 2, "padding": 0, "ceil_mode": config.pool_rounding == "ceil",
                        "ties": "gradient to the first max, row-major"})
    entries.append({"type": "flatten", "network": name, "used_by": uses,
                    "order": "C, H, W (H = W = 1 here)"})
    return entries


def _dense(name, role, weight, config, out_features, activation, fast_weight, uses):
    relu = activation == "relu"
    computes = ("φ(h W) + φ(h W*)" if relu else "h W + h W* (linear)") if fast_weight else \
               ("φ(h W)" if relu else "h W (linear)")
    return {"type": "dense", "network": name, "role": role, "used_by": uses, "weight": weight,
            "bias": None, "in_features": config.hidden, "out_features": out_features,
            "weight_layout": "(in, out): x @ w", "activation": activation,
            "augmented": fast_weight is not None, "fast_weight": fast_weight, "computes": computes}


def _metanet_layers(config, base_fast, rep_fast):
    """model.layers of a MetaNet case: b, u (its representation, then its slow head), then m and d
    for each kind, every parameter named; ``used_by`` says which computations run each entry."""
    read, task = "read/<name>[q]".replace, "task_fast_weights/<name>".replace
    both_b, both_u = ["classifier", "slow head"], ["representation", "slow head"]
    layers_ = _learner_layers(config, "base", "b", base_fast, "read/<name>[q]", both_b)
    layers_ += [_dense("b", "b: fc1; the classifier reads it with W* (φ(h W) + φ(h W*)), b's slow "
                       "head (meta_info/example) without", "base.fc1.w", config, config.hidden, "relu",
                       read("<name>", "fc1.w"), both_b),
                _dense("b", "b: output layer; the classifier reads it with W*, b's slow head without",
                       "base.out.w", config, config.n_way, None, read("<name>", "out.w"), both_b)]
    layers_ += _learner_layers(config, "rep", "u", rep_fast, "task_fast_weights/<name>", both_u)
    layers_ += [_dense("u", "u: fc1 of the representation r = h Q + h Q* (linear: no φ)",
                       "rep.fc1.w", config, config.hidden, None, task("<name>", "fc1.w"),
                       ["representation"]),
                _dense("u", "u's slow head, fc1: φ(h Q), the same params/rep.fc1.w as the entry above, "
                       "read again with φ and no fast weight (meta_info/task only)", "rep.fc1.w", config,
                       config.hidden, "relu", None, ["slow head"]),
                _dense("u", "u's slow head, output layer: read only by the losses of meta_info/task",
                       "rep.out.w", config, config.n_way, None, None, ["slow head"])]
    for kind in metanet_parts.KINDS:
        widths = [2, metanet_parts.HIDDEN_M, metanet_parts.HIDDEN_M, 1]
        for i in range(3):
            layers_.append({"type": "dense", "network": f"m.{kind}", "role": f"m for {kind} weights, "
                            f"layer {i}", "weight": f"m.{kind}.l{i}.w", "bias": f"m.{kind}.l{i}.b",
                            "in_features": widths[i], "out_features": widths[i + 1],
                            "weight_layout": "(in, out): y = x @ w + b"})
            if i < 2:
                layers_.append({"type": "relu", "network": f"m.{kind}"})
        h = metanet_parts.HIDDEN_D
        layers_.append(dict(lstm_layer(f"d for {kind} weights: the LSTM over the chunks j = 0 … J−1, "
                                       "s_{−1} = c_{−1} = 0", f"d.{kind}.wx", f"d.{kind}.wh",
                                       f"d.{kind}.b", 2, h, h, "aifo", "s"), network=f"d.{kind}"))
        layers_.append({"type": "dense", "network": f"d.{kind}", "role": f"d for {kind} weights: "
                        "output s_{J−1} w + b", "weight": f"d.{kind}.out.w", "bias": f"d.{kind}.out.b",
                        "in_features": h, "out_features": 1, "weight_layout": "(in, out): y = x @ w + b"})
    return layers_


def _generator_biases(rng, params, config, zero_gradient_fast_weight):
    """The case's initialisation of m's and d's biases (docs, "Meta Networks"): every one drawn
    U(±0.1) (draws in sorted name order), then m's and d's output biases shifted so that a
    coordinate whose gradient is exactly 0 gets the fast weight ``zero_gradient_fast_weight[kind]``."""
    biases = sorted(k for k in params if k.startswith(("m.", "d.")) and k.endswith(".b"))
    params = dict(params, **{k: params[k] + rng.uniform(-0.1, 0.1, params[k].shape) for k in biases})
    zero = metanet_parts.preprocess(np.zeros(1), config.preprocess_p)                 # pre(0)
    chunks = min(config.representation_chunks, config.n_way)
    for kind in metanet_parts.KINDS:
        params[f"m.{kind}.l2.b"] = params[f"m.{kind}.l2.b"] - metanet_parts.example_generator(
            params, kind, zero) + zero_gradient_fast_weight[kind]
        params[f"d.{kind}.out.b"] = params[f"d.{kind}.out.b"] - metanet_parts.task_generator(
            params, kind, np.stack([zero] * chunks)) + zero_gradient_fast_weight[kind]
    return params


def metanet_case(second_order, seed=19, n_way=3, n_query=4, hidden=6, image_size=8, n_blocks=3, chunks=3,
                 fast_init_scale=0.3, class_offset=1.0, zero_gradient_fast_weight=ZERO_GRADIENT_FAST_WEIGHT):
    """Meta Networks (every layer augmented, as MetaNetFull) on one fixed tiny 1-shot episode;
    n_query per class.  Why it is drawn so: the module docstring and the docs."""
    rng = np.random.default_rng(seed)
    config = metanet.MetaNetConfig(n_way=n_way, hidden=hidden, n_blocks=n_blocks, second_order=second_order,
                                   representation_chunks=chunks, fast_init_scale=fast_init_scale)
    zero_fast = dict(zero_gradient_fast_weight)
    params = _generator_biases(rng, metanet.init(rng, config), config, zero_fast)
    support_x, support_y, query_x, query_y = synthetic_episode(rng, n_way, 1, n_query, image_size)
    offsets = np.linspace(-class_offset, class_offset, n_way)       # one brightness per class
    support_x = support_x - 0.5 + offsets[support_y][:, None, None, None]
    query_x = query_x - 0.5 + offsets[query_y][:, None, None, None]
    n_chunks = min(chunks, n_way)                                   # J
    base_fast = metanet.fast_layers({k[5:]: v for k, v in params.items() if k.startswith("base.")},
                                    config, True)
    rep_fast = metanet.fast_layers({k[4:]: v for k, v in params.items() if k.startswith("rep.")},
                                   config, False)
    model = {"model": "metanet", "networks": {
                 "b": "the base learner, params/base.*: logits = h1 W_out + h1 W*_out, h1 = φ(f W_fc1) + "
                      "φ(f W*_fc1), f = feat(b, x, W*); its slow head φ(f W_fc1) W_out, f = feat(b, x)",
                 "u": "the representation function, params/rep.*: r = f Q_fc1 + f Q*_fc1 (no φ), "
                      "f = feat(u, x, Q*); its slow head φ(f Q_fc1) Q_out, f = feat(u, x)",
                 "m.conv, m.dense": "the example-level generator m: an MLP 2 → 20 → 20 → 1 applied to "
                                    "pre(g) of every coordinate; m.conv serves conv kernels, m.dense "
                                    "fc1 and out",
                 "d.conv, d.dense": "the task-level generator d: an LSTM (hidden 20, gates a, i, f, o) "
                                    "over the J chunks' gradients of every coordinate, then 20 → 1"},
             "layers": with_layouts(_metanet_layers(config, base_fast, rep_fast)),
             "input_layout": "images (n, C, H, W); m and d read pre(g) (2,) per coordinate",
             "dtype": "float64",
             "init": f"metanet.init (Chainer 1.x defaults: W ~ N(0, 1/fan_in), biases 0; m's and d's "
                     f"last-layer weights × fast_init_scale = {fast_init_scale}); then every bias of m "
                     "and d += U(±0.1) (drawn in sorted name order); then m.<kind>.l2.b and "
                     "d.<kind>.out.b shifted so that m_kind(pre(0)) = d_kind(pre(0), …, pre(0)) = "
                     f"{zero_fast['conv']:g} for kind conv and {zero_fast['dense']:g} for kind dense: "
                     "the fast weight of a coordinate whose gradient is exactly 0"}
    conventions = dict(
        config.conventions(), first_order=not second_order,
        fast_conv_blocks=("all: MetaNetConfig.fast_conv_blocks = null (None) means every conv block of "
                          "b and u is augmented, as the authors' MetaNetFull; an int k would augment "
                          "the top k only.  Each layer entry says augmented: true/false"),
        representation_chunks_rule=("J = min(representation_chunks, N) chunks of N/J consecutive "
                                    "support examples; refmeta refuses a J that does not divide N "
                                    "(ValueError at the door), as the authors' chunks are equal"),
        chunk_loss_reduction=(f"mean: u's cross-entropy on a chunk is averaged over its {n_way // n_chunks} "
                              "examples (Chainer's softmax_cross_entropy, the authors'); a sum would "
                              f"multiply meta_info/task by {n_way // n_chunks}" if n_way // n_chunks > 1
                              else "mean over the chunk's examples (the authors'); with one example per "
                                   "chunk here, mean and sum agree"),
        meta_lr=NOT_APPLICABLE + f"the case takes one plain gradient step of lr = {LR} "
                                 "(hyperparameters.lr); training (metanet.step) takes Adam(meta_lr) on "
                                 "the gradient clipped to global norm grad_clip_norm, whose first step "
                                 "is about meta_lr·sign(g) whatever the clipping, so it would check "
                                 "neither",
        grad_clip_norm=NOT_APPLICABLE + "the case's one plain gradient step is not clipped; see meta_lr",
        batch_norm="none: b and u have no batch norm (the authors' MetaNetFull)",
        distance="cosine attention over representations, softmax over support examples",
        rotations=NOT_APPLICABLE + "synthetic images", sinusoid=NOT_APPLICABLE + "classification",
        task_reduction=ONE_TASK,
        **{k: NOT_APPLICABLE + "no inner loop: fast weights are generated, not stepped"
           for k in ("inner_reduction", "inner_steps", "test_inner_steps", "adapt_bn",
                     "inner_optimizer_state")})
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
    chunked = f"J = {n_chunks} chunks of {n_way // n_chunks} support examples"
    header = {"algorithm": "Meta Networks", "seed": seed, "model": model,
              "description": f"MetaNet ({order} order in the meta-information gradients, every layer "
                             f"fast, {n_blocks} conv blocks × {hidden} filters, {image_size}×{image_size}, "
                             f"u's loss on {chunked}) on one synthetic {n_way}-way 1-shot episode with "
                             f"{n_query} queries per class ({n_way * n_query} in all): gradients, fast "
                             "weights, memory, attention read, logits, loss, gradient and one gradient "
                             "step.",
              "loss": {"type": "cross-entropy", "per_example": "−log softmax(logits)[y]",
                       "labels": "integers 0..n_way−1 stored as float64",
                       "reduction_over_examples": "sum over the n_query_total queries (query_reduction)"},
              "conventions": conventions, "procedure": metanet_procedure(n_way, n_chunks),
              "hyperparameters": {"n_way": n_way, "k_shot": 1, "n_support_total": n_way,
                                  **query_counts(n_way, n_query), "lr": LR,
                                  "optimizer": "one plain gradient step", "representation_chunks": chunks,
                                  "chunks_used": n_chunks, "chunk_size": n_way // n_chunks,
                                  "image_size": image_size, "hidden": hidden, "n_blocks": n_blocks,
                                  "fast_init_scale": fast_init_scale, "class_offset": class_offset,
                                  "zero_gradient_fast_weight": zero_fast}}
    return Recipe(header, inputs, lambda values: metanet_outputs(values, config))


def metanet_outputs(values, config):
    """Every Meta Networks output of a case, as {name: Array} on the host, from the case's input
    values (host or device): params/<name>, support_x, support_y, query_x, query_y."""
    params = values_under(values, "params")
    episode = tasks.Episode(*(values[k] for k in ("support_x", "support_y", "query_x", "query_y")))
    out = metanet.episode_outputs(params, episode, config)
    loss, gradient = value_and_grad(metanet.loss)(params, episode, config)
    updated = optimizers.sgd_update(params, gradient, LR)
    out, loss, gradient, updated = host((out, loss, gradient, updated))
    outputs = {**tree_arrays("meta_info/task", out["meta_info"]["task"], "(J, ...) ∇_Q L_j (3), one per "
                                                                          "chunk"),
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
                               None if config.second_order else {"rep.out.w": REP_OUT_UNUSED}))
    outputs.update(tree_arrays("updated", updated, f"params − {LR} · gradient: one plain gradient step"))
    scales = group_scales(outputs)
    return {name: array._replace(atol=power_of_ten_above(FAST_WEIGHT_ATOL * scales[name.split("/")[0]]))
            if name.startswith(FAST_WEIGHT_GROUPS) else array for name, array in outputs.items()}
