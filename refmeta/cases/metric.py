"""The reference cases of the metric-based learners: Prototypical Networks and Matching Networks
(with and without full context embeddings), each on one synthetic episode."""

import numpy as np
from autograd import value_and_grad

from refmeta import matching, protonet
from refmeta.data import tasks
from refmeta.nn import models, optimizers
from refmeta.cases.parts import (CONV_BIAS_BEFORE_BN, NOT_APPLICABLE, ONE_TASK, Array, Recipe, host,
                                 lstm_layer, perturbed_batch_norm, prefixed, query_counts,
                                 synthetic_episode, tree_arrays, values_under, with_layouts)

LR = 0.01            # the one plain gradient step of every single-episode case
METRIC_CONVENTIONS = {
    "task_reduction": ONE_TASK,
    "inner_reduction": NOT_APPLICABLE + "no inner loop",
    "query_reduction": "mean over the query points",
    "inner_steps": NOT_APPLICABLE + "no inner loop", "test_inner_steps": NOT_APPLICABLE + "no inner loop",
    "first_order": NOT_APPLICABLE + "no inner loop", "adapt_bn": NOT_APPLICABLE + "no inner loop",
    "inner_optimizer_state": NOT_APPLICABLE + "no inner loop",
    "batch_norm": "transductive: support and query go through the net in one call (support first), "
                  "so the statistics are over all N·K + n_query_total images; offset and scale, "
                  "eps 1e-5",
    "sinusoid": NOT_APPLICABLE + "classification",
    "rotations": NOT_APPLICABLE + "synthetic images, no rotation classes"}
METRIC_UPDATE_PROCEDURE = [
    "gradient/<name> = ∂ loss / ∂ params/<name>, for every parameter.",
    f"updated/<name> = params/<name> − lr · gradient/<name> (hyperparameters.lr = {LR}): one plain "
    "gradient step, so that updated checks the gradient at the scale of the params.  (Training "
    "takes Adam steps of meta_lr; Adam's first step, meta_lr·g/(|g| + eps), is about "
    "meta_lr·sign(g) and would turn the rounding noise of a gradient that is 0 in exact arithmetic, "
    "such as a conv bias ahead of batch norm, into differences of up to meta_lr.)"]
NOT_ADAM = NOT_APPLICABLE + (f"the case takes one plain gradient step of lr = {LR} (hyperparameters.lr)"
                             ", not the Adam step of training")


def embed_procedure(prefix):
    """Step 1 of both metric learners: one call of the conv4 embedding on all the images."""
    return [f"z = conv4(params/{prefix}<name>, concatenate(support_x, query_x)): the layers of "
            "model.layers in order (max-pool variant; transductive batch norm, so its statistics "
            "cover all N·K + n_query_total images of the one call), each image flattened in (C, H, "
            "W) order to d = filters·⌊H/16⌋·⌊W/16⌋; embeddings/support = z[:N·K], "
            "embeddings/query = z[N·K:]."]


def metric_case(algorithm, description, seed, model, conventions, hyperparameters, procedure,
                params, episode, intermediates, loss_fn, zero_because=None):
    """The shared tail of the single-episode cases: inputs, loss, gradient and one plain gradient
    step of LR on every parameter.  ``procedure`` is the family's steps up to the loss;
    ``intermediates(params, episode)`` {name: Array} and ``loss_fn(params, episode)`` compute
    the family's outputs from any (device) values; ``zero_because`` {param: why} marks the
    gradients that are 0 in exact arithmetic."""
    inputs = dict(tree_arrays("params", params, "the parameters"),
                  support_x=Array(episode.support_x, "(N·K, 1, H, W) support images, class-major"),
                  support_y=Array(episode.support_y, "(N·K,) support labels 0..N−1"),
                  query_x=Array(episode.query_x, "(n_query_total, 1, H, W) query images, shuffled"),
                  query_y=Array(episode.query_y, "(n_query_total,) query labels 0..N−1"))
    loss_description = {"type": "negative log-likelihood", "per_example": "−log p(y | x) of the "
                        "true class", "labels": "integers 0..n_way−1 stored as float64",
                        "reduction_over_examples": "mean over the n_query_total queries"}
    training = conventions.get("task_reduction")         # the Config's, for meta-batches
    conventions = {**METRIC_CONVENTIONS, **conventions, "meta_lr": NOT_ADAM,
                   "task_reduction": METRIC_CONVENTIONS["task_reduction"]}
    if training is not None:
        conventions["task_reduction_in_training"] = (f"{training}: the Config's task_reduction, over "
                                                     "the tasks of a meta-batch in training")
    header = {"algorithm": algorithm, "description": description, "seed": seed,
              "model": dict(model, layers=with_layouts(model["layers"])),
              "loss": loss_description, "conventions": conventions,
              "hyperparameters": dict(hyperparameters, lr=LR, optimizer="one plain gradient step"),
              "procedure": procedure + METRIC_UPDATE_PROCEDURE}
    return Recipe(header, inputs, lambda values: episode_outputs(
        values, intermediates, loss_fn, "(): mean over the n_query_total queries of −log p(y | x)",
        zero_because))


def episode_outputs(values, intermediates, loss_fn, loss_meaning, zero_because=None):
    """The outputs of a single-episode case on the host, {name: Array}: ``intermediates``, then
    loss, gradient and one plain gradient step of LR, from the input values (host or device)."""
    params = values_under(values, "params")
    episode = tasks.Episode(*(values[k] for k in ("support_x", "support_y", "query_x", "query_y")))
    found = intermediates(params, episode)                                 # {name: Array}
    loss, gradient = value_and_grad(loss_fn)(params, episode)
    updated = optimizers.sgd_update(params, gradient, LR)
    arrays, loss, gradient, updated = host(({k: a.value for k, a in found.items()}, loss, gradient,
                                            updated))
    outputs = {name: array._replace(value=arrays[name]) for name, array in found.items()}
    outputs["loss"] = Array(np.asarray(loss), loss_meaning)
    outputs.update(tree_arrays("gradient", gradient, "∂ loss / ∂ params", zero_because))
    outputs.update(tree_arrays("updated", updated, f"params − {LR} · gradient: one plain gradient "
                                                   "step"))
    return outputs


def _counts(n_way, k_shot, n_query):
    return {"n_way": n_way, "k_shot": k_shot, "n_support_total": n_way * k_shot,
            **query_counts(n_way, n_query)}


def _queries(n_way, n_query):
    return f"{n_query} queries per class ({n_way * n_query} in all)"


def protonet_case(distance="sqeuclidean", seed=0, n_way=3, k_shot=2, n_query=4, hidden=8, image_size=28):
    """A ProtoNet (conv4 with max-pool) on one fixed tiny episode; n_query per class."""
    rng = np.random.default_rng(seed)
    config = protonet.ProtoNetConfig(protonet.conv4_embedding(hidden, image_size=image_size), n_way=n_way,
                                     distance=distance)
    params = perturbed_batch_norm(rng, protonet.init(rng, config), hidden)
    episode = tasks.Episode(*synthetic_episode(rng, n_way, k_shot, n_query, image_size))

    def intermediates(params, episode):
        z_support, z_query = protonet.embed_episode(params, episode, config.embedding.apply)
        prototypes = protonet.prototypes(z_support, episode.support_y, n_way)
        distances = protonet.pairwise_distance(z_query, prototypes, distance)
        return {"embeddings/support": Array(z_support, "(N·K, d) f(support_x)"),
                "embeddings/query": Array(z_query, "(n_query_total, d) f(query_x)"),
                "prototypes": Array(prototypes, "(N, d) class means of embeddings/support"),
                "distances": Array(distances, f"(n_query_total, N) {distance} distance from each "
                                              "query to each prototype"),
                "log_probabilities": Array(protonet.log_probabilities(
                    z_support, episode.support_y, z_query, n_way, distance),
                    "(n_query_total, N) log p(y = k | x)")}
    procedure = embed_procedure("") + [
        "prototypes[k] = mean of the rows of embeddings/support with support_y = k (Eq. 1).",
        f"distances[q, k] = d(embeddings/query[q], prototypes[k]), d = {distance} "
        "(sqeuclidean ‖a − b‖², euclidean ‖a − b‖, cosine 1 − aᵀb/(‖a‖ ‖b‖)).",
        "log_probabilities[q] = log_softmax(−distances[q]) over the N classes (Eq. 2).",
        "loss = mean over q of −log_probabilities[q, query_y[q]] (Algorithm 1)."]
    return metric_case(
        "Prototypical Networks", f"A ProtoNet ({distance} distance, conv4 with max-pool, {hidden} "
        f"filters, {image_size}×{image_size}) on one synthetic {n_way}-way {k_shot}-shot episode with "
        f"{_queries(n_way, n_query)}: embeddings, prototypes, distances, log-probabilities, loss, "
        "gradient and one gradient step.", seed,
        models.conv4_describe(1, None, hidden, "maxpool", "both", "transductive", 1e-5, image_size),
        config.conventions(), _counts(n_way, k_shot, n_query),
        procedure, params, episode, intermediates, lambda p, e: protonet.loss(p, e, config),
        {f"conv{i}.b": CONV_BIAS_BEFORE_BN for i in range(4)})


FCE_LSTMS = (("fw", "the forward LSTM of g (Appendix A.2)", 1),
             ("bw", "the backward LSTM of g (Appendix A.2)", 1),
             ("att", "the attention LSTM of f (Appendix A.1); recurrent input [h, r]", 2))


def _fce_layers(d):
    return [lstm_layer(f"fce.{name}: {role}", f"fce.{name}.w_x", f"fce.{name}.w_h", f"fce.{name}.b",
                       d, width * d, d, "ifgo", "[h, r]" if width == 2 else "h")
            for name, role, width in FCE_LSTMS]


def matching_procedure(fce, read_steps, scale):
    """Matching Networks' steps after the embedding, in terms of the case's array names."""
    steps = ["g = embeddings/support (g′) and f = embeddings/query (f′) as they are: no FCE."]
    if fce:
        steps = [
            "LSTM_name(x, r, c) is the lstm_gates layer fce.<name> of model.layers: z = x @ w_x + "
            "r @ w_h + b (params/fce.<name>.w_x, .w_h, .b), split into 4 contiguous blocks of d "
            "columns in the order (i, f, g, o); c′ = σ(f) ⊙ c + σ(i) ⊙ tanh(g), h′ = σ(o) ⊙ "
            "tanh(c′); it returns (h′, c′).",
            "fce/support (Appendix A.2): with g′_i = embeddings/support[i] in the given order "
            "(i = 1..N·K), h⃗_0 = c⃗_0 = 0 and (h⃗_i, c⃗_i) = LSTM_fw(g′_i, h⃗_{i−1}, c⃗_{i−1}); "
            "h⃖_{N·K+1} = c⃖_{N·K+1} = 0 and (h⃖_i, c⃖_i) = LSTM_bw(g′_i, h⃖_{i+1}, c⃖_{i+1}) "
            "for i = N·K..1; g_i = h⃗_i + h⃖_i + g′_i.",
            f"fce/query (Appendix A.1), each query on its own, f′ = embeddings/query[q]: h_0 = f′, "
            f"c_0 = 0; for k = 1..{read_steps} (read_steps): a = softmax over i of h_{{k−1}}ᵀ g_i "
            "(a plain dot product: no cosine and no scale s here), r = Σ_i a_i g_i, (ĥ, c_k) = "
            "LSTM_att(f′, concatenate(h_{k−1}, r), c_{k−1}), h_k = ĥ + f′; f = h_K.",
            "g = fce/support, f = fce/query."]
    return steps + [
        f"attention[q, i] = softmax over the N·K support points i of s·cos(f_q, g_i), with s = "
        f"conventions.attention_scale = {scale:g} (not learned: conventions.learn_attention_scale is "
        "false, so there is no params/attention.log_scale) and cos(a, b) = aᵀb / (‖a‖ ‖b‖) (each "
        "norm floored at 1e-12).  s multiplies every cosine before the softmax; this is the only "
        "place s enters.",
        "log_probabilities[q, k] = log Σ_{i: support_y[i] = k} attention[q, i], computed as "
        "logsumexp_{i: support_y[i] = k} s·cos(f_q, g_i) − logsumexp_i s·cos(f_q, g_i).",
        "loss = mean over q of −log_probabilities[q, query_y[q]]."]


def matching_case(fce, seed=0, n_way=3, k_shot=2, n_query=4, hidden=8, image_size=28, read_steps=3):
    """A Matching Network (conv4 with max-pool as f′ = g′, cosine attention), with or without FCE;
    n_query per class."""
    rng = np.random.default_rng(seed)
    config = matching.MatchingConfig(protonet.conv4_embedding(hidden, image_size=image_size),
                                     embedding_dim=hidden, n_way=n_way, fce=fce, read_steps=read_steps)
    params = perturbed_batch_norm(rng, matching.init(rng, config), hidden, prefix="embed.")
    episode = tasks.Episode(*synthetic_episode(rng, n_way, k_shot, n_query, image_size))
    scale = config.attention_scale

    def intermediates(params, episode):
        g_prime, f_prime = matching.base_embeddings(params, episode, config)
        g, f = matching.full_context_embeddings(params, g_prime, f_prime, config)
        found = {"embeddings/support": Array(g_prime, "(N·K, d) g′(support_x)"),
                 "embeddings/query": Array(f_prime, "(n_query_total, d) f′(query_x)"),
                 "attention": Array(matching.attention(f, g, config.distance, scale),
                                    "(n_query_total, N·K) a(x̂_q, x_i) = softmax_i(s·cos(f_q, g_i))"),
                 "log_probabilities": Array(matching.class_log_probabilities(
                     f, g, episode.support_y, n_way, config.distance, scale),
                     "(n_query_total, N) log p(y = k | x̂, S)")}
        if fce:
            found.update({"fce/support": Array(g, "(N·K, d) g(x_i, S) (Appendix A.2)"),
                          "fce/query": Array(f, "(n_query_total, d) f(x̂, S) (Appendix A.1)")})
        return found

    net = models.conv4_describe(1, None, hidden, "maxpool", "both", "transductive", 1e-5, image_size)
    model_layers = prefixed(net["layers"], "embed.")
    if fce:
        model_layers += _fce_layers(hidden)
    model = {"model": "matching_network", "embedding": net, "fce": fce,
             "read_steps": read_steps if fce else None, "lstm_hidden_size": hidden if fce else None,
             "layers": model_layers, "dtype": "float64",
             "input_layout": "images (n, C, H, W); the LSTMs read one d-vector per step",
             "init": "conv as layers.conv4_init, batch-norm offsets U(±0.1) and scales 1 + U(±0.1)"
                     + ("; LSTM w_x, w_h, b ~ U(±1/sqrt(d))" if fce else "")}
    fce_name = f"with FCE, K = {read_steps} read steps" if fce else "without FCE"
    return metric_case(
        "Matching Networks", f"A Matching Network ({fce_name}, cosine attention with s = {scale:g}, conv4 "
        f"with max-pool shared by f′ and g′, {hidden} filters) on one synthetic {n_way}-way {k_shot}-shot "
        f"episode with {_queries(n_way, n_query)}: embeddings, attention, log-probabilities, loss, "
        "gradient and one gradient step.", seed, model,
        dict(config.conventions(), read_steps=read_steps if fce else NOT_APPLICABLE + "no FCE (the "
             f"Config's read_steps = {read_steps} is read only with fce)"),
        dict(_counts(n_way, k_shot, n_query), read_steps=read_steps if fce else NOT_APPLICABLE + "no FCE"),
        embed_procedure("embed.") + matching_procedure(fce, read_steps, scale), params, episode,
        intermediates, lambda p, e: matching.loss(p, e, config),
        {f"embed.conv{i}.b": CONV_BIAS_BEFORE_BN for i in range(4)})
