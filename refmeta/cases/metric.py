"""The reference cases of the metric-based learners: Prototypical Networks and Matching Networks
(with and without full context embeddings), each on one synthetic episode."""

import numpy as np
from autograd import value_and_grad

from refmeta import matching, protonet
from refmeta.data import tasks
from refmeta.nn import layers, optimizers
from refmeta.cases.parts import (NOT_APPLICABLE, Array, perturbed_batch_norm, synthetic_episode,
                                 tree_arrays)


METRIC_CONVENTIONS = {
    "task_reduction": NOT_APPLICABLE + "one task",
    "inner_reduction": NOT_APPLICABLE + "no inner loop",
    "query_reduction": "mean over the query points",
    "inner_steps": NOT_APPLICABLE + "no inner loop", "test_inner_steps": NOT_APPLICABLE + "no inner loop",
    "first_order": NOT_APPLICABLE + "no inner loop", "adapt_bn": NOT_APPLICABLE + "no inner loop",
    "inner_optimizer_state": NOT_APPLICABLE + "no inner loop",
    "batch_norm": "transductive: support and query go through the net in one call (support first), "
                  "so the statistics are over all N·K + n_query images; offset and scale, eps 1e-5",
    "sinusoid": NOT_APPLICABLE + "classification",
    "rotations": NOT_APPLICABLE + "synthetic images, no rotation classes"}
METRIC_EMBED_PROCEDURE = [
    "z = conv4(params, concatenate(support_x, query_x)) in one call (max-pool variant, "
    "transductive batch norm over all the images); embeddings/support = z[:N·K], "
    "embeddings/query = z[N·K:].  Matching Networks: the net's params are params/embed.<name>."]
METRIC_UPDATE_PROCEDURE = [
    "gradient/<name> = ∂ loss / ∂ params/<name>.",
    "updated/<name> = params/<name> − lr · gradient/<name>: one plain gradient step.  (Adam's first "
    "step, lr·g/(|g| + eps), would turn the rounding noise in the gradients that are exactly 0 in "
    "exact arithmetic, such as a conv bias ahead of batch norm, into differences of up to lr/eps = "
    "1e5 times that noise.)"]


def metric_case(algorithm, description, seed, model, conventions, hyperparameters, procedure,
                params, episode, loss_fn, outputs):
    """The shared tail: inputs, loss, gradient and one gradient step (lr 0.01) on every parameter."""
    lr = 0.01
    loss, gradient = value_and_grad(loss_fn)(params)
    updated = optimizers.sgd_update(params, gradient, lr)
    outputs = dict(outputs, loss=Array(np.asarray(loss), "(): mean over queries of −log p(y | x)"))
    outputs.update(tree_arrays("gradient", gradient, "∂ loss / ∂ params"))
    outputs.update(tree_arrays("updated", updated, "params after one gradient step of lr"))
    inputs = dict(tree_arrays("params", params, "the parameters"),
                  support_x=Array(episode.support_x, "(N·K, 1, H, W) support images, class-major"),
                  support_y=Array(episode.support_y, "(N·K,) support labels 0..N−1"),
                  query_x=Array(episode.query_x, "(n_query, 1, H, W) query images, shuffled"),
                  query_y=Array(episode.query_y, "(n_query,) query labels 0..N−1"))
    loss_description = {"type": "negative log-likelihood", "per_example": "−log p(y | x) of the "
                        "true class", "labels": "integers 0..n_way−1 stored as float64"}
    conventions = {**METRIC_CONVENTIONS, **conventions,
                   "meta_lr": NOT_APPLICABLE + "the case takes one plain gradient step of lr, not Adam's"}
    return {"algorithm": algorithm, "description": description, "seed": seed, "model": model,
            "loss": loss_description, "conventions": conventions,
            "hyperparameters": dict(hyperparameters, lr=lr, optimizer="one plain gradient step"),
            "procedure": METRIC_EMBED_PROCEDURE + procedure + METRIC_UPDATE_PROCEDURE,
            "inputs": inputs, "outputs": outputs}


def protonet_case(distance="sqeuclidean", seed=0, n_way=3, k_shot=2, n_query=4, hidden=8, image_size=28):
    """A ProtoNet (conv4 with max-pool) on one fixed tiny episode."""
    rng = np.random.default_rng(seed)
    config = protonet.ProtoNetConfig(protonet.conv4_embedding(hidden, image_size=image_size), n_way=n_way,
                                     distance=distance)
    params = perturbed_batch_norm(rng, protonet.init(rng, config), hidden)
    episode = tasks.Episode(*synthetic_episode(rng, n_way, k_shot, n_query, image_size))
    z_support, z_query = protonet.embed_episode(params, episode, config.embedding.apply)
    prototypes = protonet.prototypes(z_support, episode.support_y, n_way)
    distances = protonet.pairwise_distance(z_query, prototypes, distance)
    outputs = {"embeddings/support": Array(z_support, "(N·K, d) f(support_x)"),
               "embeddings/query": Array(z_query, "(n_query, d) f(query_x)"),
               "prototypes": Array(prototypes, "(N, d) class means of embeddings/support"),
               "distances": Array(distances, f"(n_query, N) {distance} distance query-prototype"),
               "log_probabilities": Array(protonet.log_probabilities(
                   z_support, episode.support_y, z_query, n_way, distance), "(n_query, N) log p(k | x)")}
    procedure = ["prototypes[k] = mean of embeddings/support over the rows with support_y = k.",
                 f"distances[q, k] = d(embeddings/query[q], prototypes[k]), d = {distance} "
                 "(sqeuclidean ‖a−b‖², euclidean ‖a−b‖, cosine 1 − aᵀb/(‖a‖‖b‖)).",
                 "log_probabilities = log_softmax(−distances) over k.",
                 "loss = mean over q of −log_probabilities[q, query_y[q]]."]
    return metric_case(
        "Prototypical Networks", f"A ProtoNet ({distance} distance, conv4 with max-pool, {hidden} "
        f"filters, {image_size}×{image_size}) on one synthetic {n_way}-way {k_shot}-shot episode with "
        f"{n_query} queries: embeddings, prototypes, distances, log-probabilities, loss, gradient and "
        "one gradient step.", seed,
        layers.conv4_describe(1, None, hidden, "maxpool", "both", "transductive", 1e-5, image_size),
        config.conventions(), {"n_way": n_way, "k_shot": k_shot, "n_query": n_query},
        procedure, params, episode, lambda p: protonet.loss(p, episode, config), outputs)


def _lstm_layers(name, d, recurrent):
    return [{"type": "dense", "role": f"LSTM {name}: input to gates (i, f, g, o)", "in_features": d,
             "out_features": 4 * d, "weight": f"{name}.w_x", "bias": f"{name}.b",
             "weight_layout": "(in, out): x @ w + b"},
            {"type": "dense", "role": f"LSTM {name}: recurrent input to gates, no bias",
             "in_features": recurrent, "out_features": 4 * d, "weight": f"{name}.w_h", "bias": None,
             "weight_layout": "(in, out): h @ w"},
            {"type": "lstm_gates", "role": f"LSTM {name}", "gate_order": "i, f, g, o",
             "update": "c' = σ(f) c + σ(i) tanh(g); h' = σ(o) tanh(c')"}]


def matching_case(fce, seed=0, n_way=3, k_shot=2, n_query=4, hidden=8, image_size=28, read_steps=3):
    """A Matching Network (conv4 with max-pool as f′ = g′, cosine attention), with or without FCE."""
    rng = np.random.default_rng(seed)
    config = matching.MatchingConfig(protonet.conv4_embedding(hidden, image_size=image_size),
                                     embedding_dim=hidden, n_way=n_way, fce=fce, read_steps=read_steps)
    params = perturbed_batch_norm(rng, matching.init(rng, config), hidden, prefix="embed.")
    episode = tasks.Episode(*synthetic_episode(rng, n_way, k_shot, n_query, image_size))
    g_prime, f_prime = matching.base_embeddings(params, episode, config)
    g, f = matching.full_context_embeddings(params, g_prime, f_prime, config)
    outputs = {"embeddings/support": Array(g_prime, "(N·K, d) g′(support_x)"),
               "embeddings/query": Array(f_prime, "(n_query, d) f′(query_x)"),
               "attention": Array(matching.attention(f, g), "(n_query, N·K) a(x̂_q, x_i)"),
               "log_probabilities": Array(matching.class_log_probabilities(f, g, episode.support_y, n_way),
                                          "(n_query, N) log p(k | x̂)")}
    net = layers.conv4_describe(1, None, hidden, "maxpool", "both", "transductive", 1e-5, image_size)
    conv_layers = [{k: (f"embed.{v}" if k in ("weight", "bias", "offset", "scale") and v else v)
                    for k, v in layer.items()} for layer in net["layers"]]
    procedure = ["g = g′ = embeddings/support and f = f′ = embeddings/query without FCE."]
    if fce:
        outputs.update({"fce/support": Array(g, "(N·K, d) g(x_i, S) (Appendix A.2)"),
                        "fce/query": Array(f, "(n_query, d) f(x̂, S) (Appendix A.1)")})
        procedure = [
            "fce/support: h⃗_i, c⃗_i = LSTM_fw(g′_i, h⃗_{i−1}, c⃗_{i−1}) for i = 1..N·K in the support "
            "order, h⃗_0 = c⃗_0 = 0; h⃖_i, c⃖_i = LSTM_bw(g′_i, h⃖_{i+1}, c⃖_{i+1}) for i = N·K..1, "
            "starting from 0; g_i = h⃗_i + h⃖_i + g′_i.",
            f"fce/query, per query: h_0 = f′, c_0 = 0; for k = 1..{read_steps}: "
            "r = Σ_i softmax_i(h_{k−1}ᵀ g_i) g_i; ĥ, c_k = LSTM_att(f′, concatenate(h_{k−1}, r), c_{k−1}); "
            f"h_k = ĥ + f′; f = h_{read_steps}.",
            "LSTM(x, h, c): gates = x @ w_x + h @ w_h + b split as (i, f, g, o); "
            "c' = σ(f) c + σ(i) tanh(g); h' = σ(o) tanh(c')."]
        conv_layers += sum((_lstm_layers(f"fce.{name}", hidden, r) for name, r in
                            (("fw", hidden), ("bw", hidden), ("att", 2 * hidden))), [])
    procedure += ["attention[q, i] = softmax_i(cos(f_q, g_i)), cos(a, b) = aᵀb / (‖a‖ ‖b‖).",
                  "log_probabilities[q, k] = log Σ_{i: support_y[i] = k} attention[q, i], computed as "
                  "logsumexp_{i in k} cos(f_q, g_i) − logsumexp_i cos(f_q, g_i).",
                  "loss = mean over q of −log_probabilities[q, query_y[q]]."]
    model = {"model": "matching_network", "embedding": net, "fce": fce, "read_steps": read_steps if fce else None,
             "layers": conv_layers, "dtype": "float64",
             "init": "conv as layers.conv4_init; LSTM w_x, w_h, b ~ U(±1/sqrt(d))"}
    return metric_case(
        "Matching Networks", f"A Matching Network ({'with FCE, K = ' + str(read_steps) if fce else 'without FCE'}"
        f", cosine attention, conv4 with max-pool shared by f′ and g′, {hidden} filters) on one synthetic "
        f"{n_way}-way {k_shot}-shot episode with {n_query} queries: embeddings, attention, log-probabilities, "
        "loss, gradient and one gradient step.", seed, model,
        config.conventions(), {"n_way": n_way, "k_shot": k_shot, "n_query": n_query, "read_steps": read_steps},
        procedure, params, episode, lambda p: matching.loss(p, episode, config), outputs)
