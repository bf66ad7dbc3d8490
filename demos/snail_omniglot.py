"""SNAIL on Omniglot, 5-way (Mishra et al. 2018, Section 5.1), on the small background sets.

Data (``--data DIR``): images_background_small1.zip + small2.zip, merged (242 characters, 8
alphabets), 28×28 BOX-resized; split by character with ``default_rng(split_seed)`` into
train / validation / test (70 / 10 / 20 %).  Training classes are the training characters and
their 90/180/270° rotations; validation and test characters are unrotated and never trained on.

Model (``refmeta.snail``, the paper's Omniglot stack): conv4 max-pool embedding + linear to 64,
then Attn(64, 32) → TC(T, 128) → Attn(256, 128) → TC(T, 128) → Attn(512, 256) → linear to N,
the TC blocks built for the longest sequence, T_max = N·max K + 1 (26 for 5-way, K ≤ 5); every
weight starts as PyTorch's default init, except that the attention blocks' query and key
weights start ``--attention-init-gain`` (default 4) times larger, so the attention is not
uniform at the start (``SNAILConfig.attention_init_gain``; 1 gives the ports' init).

Training, the paper's protocol: one model for every K.  Each step draws K uniformly from
``--train-shots`` (default 1,2,3,4,5; ``--train-shots 1`` is fixed-K training at K = 1, the
earlier default) and takes ``snail.step``, Adam on the mean query cross-entropy at step N·K + 1,
on a meta-batch of episodes: each draws N classes (labels 0..N−1 in draw order), shuffles the
order of its N·K support steps, and reads each of its N·Q queries as its own sequence, the support
steps then the query (computed once per episode, the queries as branches: ``snail.query_logits``).  The paper draws K per episode; here the episodes of one step share
their K (one array per step): every episode's K is still uniform, so the objective is the same.
Batch norm uses the statistics of the meta-batch's images and tracks running statistics
(momentum 0.1), which validation and test use (``SNAILConfig.bn_mode`` "running").

Test: the one model on N-way K-shot episodes of the held-out characters for each K of
``--test-shots`` (default: 1 and 5, Table 1's columns, those in --train-shots), with running
batch norm statistics, so every test image is embedded once and episodes are scored from the
cached embeddings (the same numbers as embedding each episode anew).  Reported: the mean
per-episode accuracy and its 95% CI (``options.mean_and_ci95``), at the checkpoint with the best
validation accuracy (its mean over the test shots).

Lake's 20 official runs are 20-way 1-shot.  A SNAIL's N is fixed by its label slots and output
layer, so a 5-way model cannot read 20 labelled examples.  Our choice: a knockout in two rounds,
using only the trained 5-way model: the 20 candidates in four groups of five (file order) give
four winners (argmax of the 5-way softmax); the final is those four plus the runner-up with the
highest first-round probability.  It is reported as that, not as the paper's protocol.  With
``--n-way 20`` the model is trained 20-way (T_max = 101) and reads each run directly (one round).
"""

import dataclasses
import os
import platform
import time

import numpy as np

from refmeta import snail
from refmeta.data import lake_runs, omniglot
from refmeta.device import backend
from refmeta.demos import files, options, train

PAPER = {"5-way 1-shot": 99.07, "5-way 5-shot": 99.78, "20-way 1-shot": 97.64,
         "20-way 5-shot": 99.36}
SPLIT = (0.7, 0.1, 0.2)
FULL = {"iterations": 10000, "max_train_minutes": 12.0, "meta_batch_size": 8, "test_episodes": 600,
        "validation_episodes": 100, "validate_every": 200, "lake_runs": 20}
FAST = {"iterations": 8, "max_train_minutes": 1.0, "meta_batch_size": 2, "test_episodes": 10,
        "validation_episodes": 6, "validate_every": 8, "lake_runs": 2}


def add_arguments(parser):
    """The demo's options; sizes left at None take FULL's values, or FAST's with --fast."""
    add, at_least = parser.add_argument, options.integer_at_least
    positive = at_least(1)
    options.add_omniglot_folders(parser, "snail-omniglot")
    add("--seed", type=options.seed, default=0, help="training seed: init and training episodes")
    add("--split-seed", type=options.seed, default=0, help="seed of the character split (default 0)")
    add("--eval-seed", type=options.seed, default=2018, help="seed of the test episodes (default 2018)")
    add("--n-way", type=at_least(2), default=5,
        help="N (default 5; 20 trains a 20-way model that reads Lake's runs directly)")
    add("--train-shots", type=options.increasing_integers(1), default=(1, 2, 3, 4, 5),
        help="the Ks a training step draws from, uniformly (default 1,2,3,4,5, Section 5.1; "
             "one K is fixed-K training)")
    add("--test-shots", type=options.increasing_integers(1),
        help="the Ks tested, each one of --train-shots (default: 1 and 5 where trained, else all)")
    add("--n-query", type=positive, default=1,
        help="training queries per class and episode, each read as its own sequence (default 1)")
    add("--test-queries", type=positive, default=5, help="test queries per class (default 5)")
    add("--attention-init-gain", type=options.positive_float, default=4.0,
        help="the attention blocks' query and key weights start this many times PyTorch's "
             "default init (default 4; 1 is the ports' init)")
    add("--lr", type=options.nonnegative_float, default=1e-3, help="Adam step size (default 1e-3)")
    add("--lr-halve-every", type=at_least(0), default=0,
        help="halve the step size every this many iterations (default 0: never)")
    add("--dtype", choices=("float32", "float64"), default="float32",
        help="training and evaluation precision (default float32, as PyTorch trains)")
    add("--iterations", type=at_least(0), help=f"at most (default {FULL['iterations']})")
    add("--max-train-minutes", type=options.positive_float,
        help=f"stop training after this long, validating once more (default {FULL['max_train_minutes']})")
    add("--meta-batch-size", type=positive, help=f"episodes per step (default {FULL['meta_batch_size']})")
    add("--test-episodes", type=positive, help=f"default {FULL['test_episodes']}")
    add("--validation-episodes", type=positive, help=f"default {FULL['validation_episodes']}")
    add("--validate-every", type=positive, help=f"default {FULL['validate_every']}")
    add("--lake-runs", type=at_least(0), help="how many of Lake's 20 runs to score, in "
        f"order (default {FULL['lake_runs']}; 0 skips them)")
    options.add_size_switches(parser, FAST)


def run(args):
    """Train, select the checkpoint, test, score Lake's runs; print, save JSON and the figure."""
    start, sizes = time.perf_counter(), options.sizes(args, FULL, FAST)
    check_args(args, sizes)
    config = snail.SNAILConfig(n_way=args.n_way, k_shot=None, train_shots=args.train_shots,
                               attention_init_gain=args.attention_init_gain, bn_mode="running",
                               meta_lr=args.lr)
    data = load_data(args, sizes)
    init_rng, train_rng, validation_rng = np.random.default_rng(args.seed).spawn(3)
    params = {k: backend.asarray(v, args.dtype) for k, v in snail.init(init_rng, config).items()}
    trained = train_snail(params, data, config, args, sizes, train_rng, validation_rng)
    best = trained.best
    test_start = time.perf_counter()
    test = {f"{config.n_way}-way {k}-shot": summarise(evaluate(
        best.params, best.state.bn, data["test"], config, np.random.default_rng(args.eval_seed),
        sizes["test_episodes"], args.test_queries, k)) for k in args.test_shots}
    results = {"test": test, "test_seconds": time.perf_counter() - test_start}
    if sizes["lake_runs"]:
        lake_start = time.perf_counter()
        results["lake"] = lake_error(best.params, best.state.bn, data["lake_runs"], config)
        results["lake"]["seconds"] = time.perf_counter() - lake_start
    report = build_report(args, sizes, config, data, trained, results)
    report["table"] = format_table(report)
    print(report["table"])
    os.makedirs(args.out, exist_ok=True)
    if not args.no_plots:
        report["figures"] = save_figure(args.out, trained.curve)
    files.save_results(args.out, report, start)
    return report


def check_args(args, sizes):
    """options.UsageError naming the option, before anything is read; then the output folder is
    created and written to, before any training.  Fills in the default --test-shots."""
    if args.test_shots is None:
        args.test_shots = tuple(k for k in (1, 5) if k in args.train_shots) or args.train_shots
    if not set(args.test_shots) <= set(args.train_shots):
        raise options.UsageError(f"--test-shots {','.join(map(str, args.test_shots))}: the model "
                                 f"reads only the Ks of --train-shots "
                                 f"{','.join(map(str, args.train_shots))}")
    zips = ("images_background_small1.zip", "images_background_small2.zip")
    options.check_data_folder(args.data, zips + (("all_runs.zip",) if sizes["lake_runs"] else ()))
    groups = 20 // args.n_way
    if sizes["lake_runs"] and 1 in args.train_shots and (20 % args.n_way or groups > args.n_way):
        raise options.UsageError(f"--n-way {args.n_way}: Lake's 20-way runs are scored by a knockout "
                                 "of g groups of N with g <= N (N = 5, 10 or 20); --lake-runs 0 "
                                 "skips them")
    pixels = args.n_way * (max(args.train_shots) + args.n_query) * 28 * 28      # of one episode
    per_pixel = 8 + snail.SNAILConfig.embedding_filters * np.dtype(args.dtype).itemsize
    options.check_memory((f"--meta-batch-size {sizes['meta_batch_size']}", "a meta-batch's images "
                          "(drawn in float64) and first conv layer's outputs",
                          sizes["meta_batch_size"] * pixels * per_pixel))
    options.check_out_folder(args.out, ("results.json", "learning_curve.png"))


def check_data(args, data):
    """options.UsageError unless the episodes the options ask for fit the characters."""
    drawings, train_k, test_k = data["test"].images.shape[1], max(args.train_shots), max(args.test_shots)
    options.check_needs(*((f"--n-way {args.n_way} on the {part} characters", args.n_way,
                           len(data[part].names), "classes") for part in ("train", "validation", "test")),
                        (f"K = {train_k} of --train-shots + --n-query {args.n_query}",
                         train_k + args.n_query, drawings, "drawings per class"),
                        (f"K = {test_k} of --test-shots + --test-queries {args.test_queries}",
                         test_k + args.test_queries, drawings, "drawings per class"))


def load_data(args, sizes):
    """{"train": rotated training classes, "validation", "test": unrotated Characters,
    "lake_runs": the first ``lake_runs`` of Lake's runs}; data that cannot be read, or that the
    episodes do not fit, is an options.UsageError."""
    with options.input_errors():
        sets = [omniglot.load_characters(os.path.join(args.data, f"images_background_small{i}.zip"),
                                         cache_dir=args.cache or os.path.join(args.out, "cache"))
                for i in (1, 2)]
        merged = omniglot.merge_characters(*sets)
        train, validation, test = omniglot.split_characters(
            merged, np.random.default_rng(args.split_seed), SPLIT)
        runs = (lake_runs.load_lake_runs(os.path.join(args.data, "all_runs.zip"), image_size=28)
                if sizes["lake_runs"] else ())
    data = {"train": omniglot.with_rotations(train), "validation": validation, "test": test,
            "n_characters": len(merged.names), "lake_runs": runs[:sizes["lake_runs"]]}
    check_data(args, data)
    return data


def shuffled_support(rng, episode):
    """The episode with each task's support steps in a random order (labels move with them)."""
    n_tasks, n_support = np.shape(episode.support_y)
    order = np.stack([rng.permutation(n_support) for _ in range(n_tasks)])  # (T, N·K)
    rows = np.arange(n_tasks)[:, None]
    return episode._replace(support_x=episode.support_x[rows, order],
                            support_y=episode.support_y[rows, order])


def train_snail(params, data, config, args, sizes, rng, validation_rng):
    """``snail.step`` on the query loss (``train.train``), the step size halved every
    ``--lr-halve-every`` iterations; every ``validate_every`` steps the validation accuracy for
    each tested K on the same episodes, and the checkpoint with the best mean kept."""
    validation_seed = int(validation_rng.integers(2**32))

    def step(params, state, meta_lr):
        k_shot = draw_shots(rng, config.shots)
        episode = shuffled_support(rng, omniglot.sample_episodes(
            rng, data["train"].images, sizes["meta_batch_size"], config.n_way, k_shot,
            args.n_query, dtype=args.dtype))
        return snail.step(params, state, episode, dataclasses.replace(config, meta_lr=meta_lr))

    def check(params, state):
        by_shot = {str(k): float(np.mean(evaluate(params, state.bn, data["validation"], config,
                                                  np.random.default_rng(validation_seed),
                                                  sizes["validation_episodes"], 1, k)))
                   for k in args.test_shots}
        return {"validation_accuracy": float(np.mean(list(by_shot.values()))),   # selects the checkpoint
                "validation_accuracy_by_shot": by_shot}

    plan = train.Plan(sizes["iterations"], sizes["validate_every"], 60 * sizes["max_train_minutes"],
                      "SNAIL", train.lower(("--lr", args.lr)))
    return train.train(step, params, snail.init_state(params, config), plan, check,
                       schedule=lambda progress: {"meta_lr": train.halved_every(args.lr, args.lr_halve_every,
                                                                                progress)},
                       select=("validation_accuracy", "max"))


def draw_shots(rng, shots):
    """This step's K, uniform over ``shots`` (one K: no draw, so fixed-K runs use the rng as before)."""
    return shots[0] if len(shots) == 1 else int(shots[rng.integers(len(shots))])


def embed_all(params, bn_state, images, config, chunk=200):
    """images (n, ...) on the host -> (n, d) embeddings, running batch-norm statistics."""
    flat = np.reshape(images, (-1, 1) + np.shape(images)[-2:])
    dtype = params["out.w"].dtype
    parts = [backend.to_host(snail.embed(params, backend.asarray(flat[i:i + chunk], dtype), config,
                                         bn_state=bn_state))
             for i in range(0, len(flat), chunk)]
    return np.concatenate(parts).reshape(np.shape(images)[:-2] + (-1,))


def evaluate(params, bn_state, characters, config, rng, n_episodes, n_query, k_shot, chunk=100):
    """Per-episode accuracy (n_episodes,) of N-way k_shot episodes with N·n_query queries, in
    chunks of ``chunk // k_shot`` episodes (each one sequence of N·K + N·n_query steps, the queries
    as branches)."""
    features = embed_all(params, bn_state, characters.images, config)      # (classes, 20, d)
    as_images = features[:, :, None, :]                  # (classes, 20, H=1, W=d): sampled as images
    accuracies, chunk = [], max(1, chunk // k_shot)
    for begin in range(0, n_episodes, chunk):
        count = min(chunk, n_episodes - begin)
        episode = omniglot.sample_episodes(rng, as_images, count, config.n_way, k_shot,
                                           n_query, dtype=params["out.w"].dtype)
        episode = shuffled_support(rng, episode)
        logits = backend.to_host(snail.query_logits(params, episode.support_x[..., 0, 0, :],
                                                    episode.support_y, episode.query_x[..., 0, 0, :],
                                                    config))               # (episodes, NQ, N)
        correct = np.argmax(logits, axis=-1) == backend.to_host(episode.query_y)
        accuracies.extend(np.mean(correct, axis=-1).tolist())
    return np.array(accuracies)


def knockout_scores(params, support_z, query_z, config):
    """(n_test, C) scores whose argmax is a knockout winner among C = g·N candidates, g ≤ N.

    Round 1: candidates in g groups of N (in order), one N-way sequence per group and query;
    score = that group's softmax probability.  Final (g > 1): the g group winners plus the
    N − g runners-up of highest round-1 probability; finalists score 1 + final probability.
    """
    n_way, (n_candidates, dim), n_test = config.n_way, np.shape(support_z), len(query_z)
    groups = n_candidates // n_way
    if n_candidates % n_way or groups > n_way:
        raise ValueError(f"a knockout with a {n_way}-way model needs g·{n_way} candidates with "
                         f"g <= {n_way}; got {n_candidates}")
    labels = np.tile(np.arange(n_way), (n_test, groups, 1))                # (n_test, g, N)
    support = np.broadcast_to(support_z.reshape(groups, n_way, dim), (n_test, groups, n_way, dim))
    query = np.broadcast_to(query_z[:, None, None, :], (n_test, groups, 1, dim))
    scores = _probabilities(params, support, labels, query, config)
    scores = scores.reshape(n_test, n_candidates)                          # round 1
    if groups == 1:
        return scores
    winners = scores.reshape(n_test, groups, n_way).argmax(-1) + np.arange(groups) * n_way
    rest = scores.copy()
    np.put_along_axis(rest, winners, -np.inf, axis=-1)
    finalists = np.concatenate([winners, np.argsort(-rest, axis=-1)[:, :n_way - groups]], -1)
    final = _probabilities(params, support_z[finalists][:, None], labels[:, :1],
                           query_z[:, None, None, :], config)[:, 0]       # (n_test, N)
    np.put_along_axis(scores, finalists, 1.0 + final, axis=-1)
    return scores


def _probabilities(params, support, labels, query, config):
    """softmax at the query step: support (..., N·K, d), labels (..., N·K), query (..., 1, d)."""
    dtype = params["out.w"].dtype
    logits = backend.to_host(snail.query_logits(params, backend.asarray(support, dtype),
                                                backend.asarray(labels, dtype=None),
                                                backend.asarray(query, dtype), config)[..., 0, :])
    exps = np.exp(logits - logits.max(-1, keepdims=True))
    return exps / exps.sum(-1, keepdims=True)


def lake_error(params, bn_state, runs, config):
    """Lake's protocol (``lake_runs.evaluate_runs``) with knockout (or direct) SNAIL scores."""
    if 1 not in config.shots:
        return {"error": None, "method": "not applicable: the runs are 1-shot; this model reads "
                                          f"K in {list(config.shots)}"}

    def score(test_images, train_images):
        return knockout_scores(params, embed_all(params, bn_state, train_images, config),
                               embed_all(params, bn_state, test_images, config), config)
    errors = lake_runs.evaluate_runs(runs, score, kind="score")
    method = ("direct: one 20-way sequence per test item" if config.n_way == 20 else
              f"knockout with the {config.n_way}-way model (see the module docstring)")
    return {"error": errors.mean, "per_run": errors.per_run.tolist(), "n_runs": len(runs),
            "method": method}


def summarise(accuracies):
    """Mean accuracy (%) and 95% CI half-width (``options.mean_and_ci95``) over episodes."""
    mean, ci95 = options.mean_and_ci95(accuracies)
    return {"n_episodes": len(accuracies), "accuracy": 100 * mean, "ci95": 100 * ci95}


def build_report(args, sizes, config, data, trained, results):
    train_seconds, check_seconds = trained.seconds, trained.check_seconds
    return {
        "demo": "snail-omniglot",
        "paper": {"citation": "Mishra, Rohaninejad, Chen & Abbeel 2018, A Simple Neural Attentive "
                              "Meta-Learner (ICLR), Table 1", "omniglot_accuracy": PAPER,
                  "note": "the paper trains on the full background set (1200 characters + "
                          "rotations); this demo on the small sets"},
        "config": {"snail": config.conventions(), **sizes, "iterations_done": trained.iterations,
                   "dtype": args.dtype, "lr": args.lr, "lr_halve_every": args.lr_halve_every,
                   "optimizer": "Adam", "train_shots": list(args.train_shots),
                   "test_shots": list(args.test_shots),
                   "shots_per_step": "K uniform over train_shots, shared by the step's episodes",
                   "n_query": args.n_query, "test_queries_per_class": args.test_queries,
                   "split": dict(zip(("train", "validation", "test"), SPLIT)),
                   "characters": {"merged": data["n_characters"],
                                  "train_classes_with_rotations": len(data["train"].names),
                                  "validation": len(data["validation"].names),
                                  "test": len(data["test"].names)},
                   "batch_norm": "train: statistics of the meta-batch's images; test: running "
                                 "statistics, momentum 0.1",
                   "checkpoint": "best validation accuracy (1 query per class), mean over test_shots",
                   "fast": args.fast},
        "seeds": {"seed": args.seed, "split_seed": args.split_seed, "eval_seed": args.eval_seed,
                  "streams": "default_rng(seed).spawn(3): init, training episodes, validation"},
        "checkpoint": {"iteration": trained.best.iteration,
                       "validation_accuracy": 100 * trained.best.value},
        "timing": {"train_seconds": train_seconds, "validation_seconds": check_seconds,
                   "seconds_per_iteration": (train_seconds - check_seconds) / max(trained.iterations, 1),
                   "stopped": trained.stopped,
                   "test_seconds": results["test_seconds"],
                   "load_average_at_end": list(os.getloadavg())},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "numpy": np.__version__, "backend": backend.current()},
        "results": {k: v for k, v in results.items() if k != "test_seconds"},
        "learning_curve": trained.curve,
    }


def format_table(report):
    test, lake = report["results"]["test"], report["results"].get("lake", {})
    lines = ["| | accuracy (%) | Lake's 20 runs, error (%) |", "|---|---|---|"]
    for i, (task, result) in enumerate(test.items()):
        error = f"{lake['error']:.2f}" if i == 0 and lake.get("error") is not None else ""
        lines.append(f"| ours, {task} (iteration {report['checkpoint']['iteration']}) | "
                     f"{result['accuracy']:.2f} ± {result['ci95']:.2f} ({result['n_episodes']} "
                     f"episodes) | {error or ('n/a' if i == 0 else '')} |")
    for task in test:
        paper = PAPER.get(task)
        lines.append(f"| paper, {task} (full background set) | {paper if paper else 'n/a'} | |")
    if "lake" in report["results"]:
        lines.append(f"Lake's runs scored by {report['results']['lake']['method']}.")
    return "\n".join(lines)


def save_figure(out_dir, curve):
    """Training loss and validation accuracy against iteration; [] without matplotlib."""
    fig = options.figure((10, 4))
    if fig is None:
        return []
    loss_ax, accuracy_ax = fig.subplots(1, 2)
    loss_ax.plot(curve["iteration"][1:], curve["train_loss"][1:])
    loss_ax.set(xlabel="iteration", ylabel="query cross-entropy (window mean)", title="training")
    for k, accuracies in curve["validation_accuracy_by_shot"].items():
        accuracy_ax.plot(curve["iteration"], np.multiply(accuracies, 100), "o-", label=f"{k}-shot")
    accuracy_ax.set(xlabel="iteration", ylabel="accuracy (%)", title="validation characters")
    accuracy_ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, "learning_curve.png")
    files.save_figure_atomically(path, fig)
    print(f"wrote {path}")
    return [path]


def main(argv=None):
    """``python demos/snail_omniglot.py [options]``, the same as ``refmeta demo snail-omniglot``."""
    options.main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
