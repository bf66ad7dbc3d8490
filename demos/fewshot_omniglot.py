"""What the ProtoNet and Matching Net Omniglot demos share: data, training, evaluation, report.

Not a demo itself: ``protonet_omniglot`` and ``matching_omniglot`` each pass an ``Algorithm``.

Data.  images_background_small1.zip + small2.zip (merged: 242 characters of 8 alphabets,
20 drawings each, 28×28) are split *by character* (seeded): ``test_fraction`` of the characters
are held out.  The training characters get their 90/180/270° rotations as new classes.  Lake's
20 official runs (all_runs.zip) come from the evaluation alphabets, never seen in training.

Training (``train.train``, the algorithm's ``step``).  Episodes of train_way classes ×
(train_shot + train_query) drawings through the conv4 max-pool net in one call, on the batch's
statistics (as the authors' code), which ``step`` tracks as running statistics (momentum 0.1,
unbiased variance, as PyTorch) for evaluation; Adam, lr halved every ``lr_halve_every``
episodes (ProtoNets, Section 3.1).  The learning curve: at episode 0, every ``curve_every``
episodes and at the end, 5-way 1-shot accuracy on ``curve_episodes`` held-out episodes (the
same ones each time) and Lake's error.  The final parameters are tested: the curve is drawn on
the held-out characters, so choosing a checkpoint by it would choose on the test set.

Evaluation (BN in running mode: the embedding's bn_mode).  Every held-out image is embedded
once; 600 episodes per setting (5-way 1-shot, 5-way 5-shot, 20-way 1-shot; 15 queries per
class) are scored from those cached embeddings, a task axis at a time, which gives the numbers
per-episode re-embedding would, much faster.  Accuracy: mean over episodes ± 1.96·std/√600
(sample std).  Lake's runs: each run's 20 training drawings are a 20-way 1-shot support set;
the error is by ``lake_runs.evaluate_runs`` (argmax of log p over the 20 classes).
"""

import os
import platform
import time
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Callable, NamedTuple

import numpy as np

from refmeta import protonet
from refmeta.data import lake_runs, omniglot
from refmeta.device import backend
from refmeta.nn import trees
from refmeta.demos import files, options, train

EVAL_SETTINGS = ((5, 1), (5, 5), (20, 1))
BN_EPS, BN_MOMENTUM = 1e-5, 0.1
LAKE = {"MHD (measured here)": 38.8, "people": 4.5, "Bayesian Program Learning": 3.3,
        "Siamese ConvNet (Koch et al. 2015)": 8.0}
ZIPS = ("images_background_small1.zip", "images_background_small2.zip")
FULL = {"episodes": 6000, "max_train_minutes": 12.0, "hidden": 64, "eval_episodes": 600,
        "curve_every": 250, "curve_episodes": 200}
FAST = {"episodes": 10, "max_train_minutes": 1.0, "hidden": 8, "eval_episodes": 40,
        "curve_every": 5, "curve_episodes": 20}


class Algorithm(NamedTuple):
    """What a metric demo supplies: its algorithm module (``init``, ``init_state``, ``step``)
    and Config, and the algorithm's log p(y | x) on cached embeddings z (..., n, d)."""
    name: str
    module: ModuleType        # protonet or matching
    configure: Callable       # (hidden, n_way, meta_lr) -> the Config, its embedding ``embedding(hidden)``
    net: str                  # the embedding's prefix in params and state.bn ("embed"), or "" for none
    log_probs: Callable       # (params, z_support, support_y, z_query, n_way, config) -> (..., n_q, N)
    paper: dict               # "5-way 1-shot" -> published accuracy %
    learned: Callable = lambda params: {}   # params -> learned hyperparameters worth reporting


def embedding(hidden):
    """The conv4 max-pool embedding both demos train: batch norm eps BN_EPS, its running
    statistics kept with momentum BN_MOMENTUM and read at evaluation (bn_mode "running")."""
    return protonet.conv4_embedding(hidden, bn_mode="running", bn_eps=BN_EPS, bn_momentum=BN_MOMENTUM)


def add_arguments(parser, name):
    add = parser.add_argument
    options.add_omniglot_folders(parser, name)
    add("--seed", type=options.seed, default=0, help="init, split and training episodes (default 0)")
    add("--eval-seed", type=options.seed, default=2016, help="test episodes (default 2016)")
    add("--episodes", type=int, help=f"training episodes (default {FULL['episodes']})")
    add("--max-train-minutes", type=options.positive_float,
        help=f"stop training early after this long (default {FULL['max_train_minutes']})")
    add("--train-way", type=int, default=60, help="classes per training episode (default %(default)s)")
    add("--train-shot", type=int, default=1, help="support drawings per class (default %(default)s)")
    add("--train-query", type=int, default=1, help="query drawings per class (default %(default)s)")
    add("--lr", type=options.nonnegative_float, default=1e-3, help="Adam step size (default 1e-3)")
    add("--lr-halve-every", type=int, default=2000, help="halve lr every this many episodes")
    add("--hidden", type=int, help=f"conv filters (default {FULL['hidden']})")
    add("--dtype", choices=("float32", "float64"), default="float32",
        help="training and evaluation precision (default float32, as PyTorch trains; "
             "float64 is about 2.2x slower here)")
    add("--test-fraction", type=options.finite_float, default=0.2,
        help="characters held out (default 0.2)")
    add("--eval-episodes", type=int, help=f"test episodes per setting (default {FULL['eval_episodes']})")
    add("--eval-query", type=int, default=15, help="queries per class at test (default 15)")
    add("--curve-every", type=int, help="held-out check every this many episodes")
    add("--curve-episodes", type=int, help="5-way 1-shot episodes per held-out check")
    options.add_size_switches(parser, FAST)


def check_args(args, size):
    """options.UsageError (a ValueError) naming the option, before anything is read; then the
    output folder is created and written to, before any training."""
    for name in ("train_way", "train_shot", "train_query", "eval_query", "lr_halve_every"):
        minimum = 2 if name == "train_way" else 1
        if getattr(args, name) < minimum:
            raise options.UsageError(f"--{name.replace('_', '-')} must be >= {minimum}; "
                                     f"got {getattr(args, name)}")
    for name in ("episodes", "hidden", "eval_episodes", "curve_every", "curve_episodes"):
        if size[name] < (2 if name == "eval_episodes" else 1):
            raise options.UsageError(f"--{name.replace('_', '-')} must be a positive integer; "
                                     f"got {size[name]}")
    if not 0 < args.test_fraction < 1:
        raise options.UsageError(f"--test-fraction must lie in (0, 1); got {args.test_fraction}")
    options.check_data_folder(args.data, ZIPS + ("all_runs.zip",))
    options.check_out_folder(args.out, ("results.json", "learning_curve.png"))


def check_data(args, train_chars, test_chars):
    """options.UsageError unless the training and test episodes the options ask for fit the data."""
    drawings = test_chars.images.shape[1]
    options.check_needs(
        (f"--train-way {args.train_way}", args.train_way, len(train_chars.names), "training classes"),
        (f"--train-shot {args.train_shot} + --train-query {args.train_query}",
         args.train_shot + args.train_query, drawings, "drawings per class"),
        (f"--eval-query {args.eval_query}: 5-shot episodes need 5 + {args.eval_query}",
         max(k for _, k in EVAL_SETTINGS) + args.eval_query, drawings, "drawings per class"),
        ("the 20-way test episodes", max(n for n, _ in EVAL_SETTINGS), len(test_chars.names),
         "held-out characters (raise --test-fraction)"))


def load_data(args, rng):
    """(train Characters with rotations, held-out Characters, Lake runs at 28×28); data that
    cannot be read is an options.UsageError."""
    folder = Path(args.data)
    cache = args.cache or os.path.join(args.out, "cache")
    with options.input_errors():
        merged = omniglot.merge_characters(*(omniglot.load_characters(folder / z, 28, cache) for z in ZIPS))
        train_chars, test_chars = omniglot.split_characters(merged, rng, (1 - args.test_fraction,
                                                                          args.test_fraction))
        runs = lake_runs.load_lake_runs(folder / "all_runs.zip", 28)
    return omniglot.with_rotations(train_chars), test_chars, runs


def embedder(algorithm, config, params, state):
    """f_φ as evaluation runs it, x (n, 1, H, W) -> (n, d): batch norm by the running statistics."""
    pick = (lambda tree: trees.subtree(tree, algorithm.net)) if algorithm.net else (lambda tree: tree)
    net, running = pick(params), pick(state.bn)
    return lambda x: config.embedding.batch_norm.apply(net, x, running)[0]


def embed_images(embed, images, dtype, chunk=256):
    """images (..., H, W) host -> (..., d) host embeddings by ``embed`` (``embedder``)."""
    flat = images.reshape((-1, 1) + images.shape[-2:])
    parts = [backend.to_host(embed(backend.asarray(flat[i:i + chunk], dtype)))
             for i in range(0, len(flat), chunk)]
    return np.concatenate(parts).reshape(images.shape[:-2] + (-1,))


def draw_episodes(rng, n_classes, n_drawings, n_tasks, n_way, k_shot, n_query):
    """Index arrays (classes (T, N), drawings (T, N, K+Q)) of T episodes."""
    classes = np.stack([rng.choice(n_classes, n_way, replace=False) for _ in range(n_tasks)])
    drawings = np.stack([rng.permuted(np.tile(np.arange(n_drawings), (n_way, 1)), axis=1)[:, :k_shot + n_query]
                         for _ in range(n_tasks)])
    return classes, drawings


def episode_accuracies(algorithm, config, params, z, rng, n_tasks, n_way, k_shot, n_query, chunk=25):
    """Accuracy of each of n_tasks episodes scored from cached embeddings z (n_classes, n_drawings, d)."""
    classes, drawings = draw_episodes(rng, *z.shape[:2], n_tasks, n_way, k_shot, n_query)
    picked = z[classes[..., None], drawings]                               # (T, N, K+Q, d)
    z_support = picked[:, :, :k_shot].reshape(n_tasks, n_way * k_shot, -1)
    z_query = picked[:, :, k_shot:].reshape(n_tasks, n_way * n_query, -1)
    support_y, query_y = (np.tile(np.repeat(np.arange(n_way), n), (n_tasks, 1)) for n in (k_shot, n_query))
    accuracies = []
    for t in range(0, n_tasks, chunk):
        log_p = algorithm.log_probs(params, *(backend.asarray(a, dtype=None) for a in (
            z_support[t:t + chunk], support_y[t:t + chunk], z_query[t:t + chunk])), n_way, config)
        predicted = np.argmax(backend.to_host(log_p), axis=-1)
        accuracies.append(np.mean(predicted == query_y[t:t + chunk], axis=-1))
    return np.concatenate(accuracies)


def lake_error(algorithm, config, params, embed, runs, dtype):
    """Lake's protocol on the 20 runs: each run a 20-way 1-shot episode of its training drawings."""
    def score(test_images, train_images):
        z_test, z_train = (embed_images(embed, images, dtype) for images in (test_images, train_images))
        labels = np.arange(len(train_images))
        return algorithm.log_probs(params, *(backend.asarray(a, dtype=None) for a in (z_train, labels, z_test)),
                                   len(train_images), config)
    return lake_runs.evaluate_runs(runs, score, kind="score")


def summarise(accuracies):
    mean, ci95 = options.mean_and_ci95(accuracies)
    return {"mean": 100 * mean, "n_episodes": len(accuracies), "ci95": 100 * ci95}


def run(algorithm, args):
    """Train through ``train.train``, evaluate, print the tables, write results.json (and
    learning_curve.png)."""
    start, size = time.perf_counter(), options.sizes(args, FULL, FAST)
    load_at_start = os.getloadavg()
    check_args(args, size)
    config = algorithm.configure(size["hidden"], args.train_way, args.lr)
    train_chars, test_chars, runs = load_data(args, np.random.default_rng(args.seed))
    check_data(args, train_chars, test_chars)
    rng = np.random.default_rng([args.seed, 1])                            # init, then the episodes
    params = {k: backend.asarray(v, args.dtype) for k, v in algorithm.module.init(rng, config).items()}

    def step(params, state, meta_lr):
        episode = omniglot.sample_episode(rng, train_chars.images, args.train_way, args.train_shot,
                                          args.train_query, dtype=args.dtype)
        return algorithm.module.step(params, state, episode, replace(config, meta_lr=meta_lr))

    def check(params, state):              # the same 5-way 1-shot held-out episodes every time
        embed = embedder(algorithm, config, params, state)
        z = embed_images(embed, test_chars.images, args.dtype)
        accuracy = episode_accuracies(algorithm, config, params, z, np.random.default_rng(args.eval_seed + 1),
                                      size["curve_episodes"], 5, 1, args.eval_query)
        return {"heldout_5w1s": 100 * float(np.mean(accuracy)),
                "lake_error": lake_error(algorithm, config, params, embed, runs, args.dtype).mean}

    trained = train.train(
        step, params, algorithm.module.init_state(params, config),
        train.Plan(size["episodes"], size["curve_every"], 60 * size["max_train_minutes"], algorithm.name,
                   train.lower(("--lr", args.lr)), "episode", "held-out check"),
        check, schedule=lambda progress: {"meta_lr": train.halved_every(args.lr, args.lr_halve_every,
                                                                         progress)})
    eval_start = time.perf_counter()
    embed = embedder(algorithm, config, trained.params, trained.state)
    z = embed_images(embed, test_chars.images, args.dtype)                 # (n_chars, 20, d)
    eval_rng = np.random.default_rng(args.eval_seed)
    results = {f"{n}-way {k}-shot": summarise(episode_accuracies(
        algorithm, config, trained.params, z, eval_rng, size["eval_episodes"], n, k, args.eval_query))
        for n, k in EVAL_SETTINGS}
    lake = lake_error(algorithm, config, trained.params, embed, runs, args.dtype)
    report = {
        "model": algorithm.name, "conventions": config.conventions(),
        "config": {**vars(args), **size, "bn_eps": BN_EPS, "bn_momentum": BN_MOMENTUM,
                   "eval": "BN running mode, cached embeddings, held-out characters, no rotations",
                   "tested_params": "the final ones (no checkpoint selection)"},
        "data": {"train_classes": len(train_chars.names), "train_characters": len(train_chars.names) // 4,
                 "heldout_characters": len(test_chars.names), "lake_runs": len(runs)},
        "results": results,
        "lake_runs": {"error": lake.mean, "per_run": lake.per_run.tolist(), "references": LAKE},
        "learned": algorithm.learned(trained.params), "paper_full_data": algorithm.paper,
        "learning_curve": trained.curve,
        "timing": {"episodes_done": trained.iterations, "train_seconds": trained.seconds,
                   "curve_check_seconds": trained.check_seconds, "stopped": trained.stopped,
                   "eval_seconds": time.perf_counter() - eval_start},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_start": load_at_start, "loadavg_end": os.getloadavg()},
    }
    report["table"] = format_table(report)
    print(report["table"])
    if not args.no_plots:
        report["figure"] = save_figure(args.out, algorithm.name, trained.curve)
    files.save_results(args.out, report, start)
    return report


def format_table(report):
    lines = ["| setting | ours: held-out characters, small background sets | paper: full background set |",
             "|---|---|---|"]
    for setting, r in report["results"].items():
        paper = report["paper_full_data"].get(setting)
        lines.append(f"| {setting} | {r['mean']:.1f} ± {r['ci95']:.1f}% | "
                     f"{'' if paper is None else f'{paper}%'} |")
    lines += ["", "| Lake's 20 runs (20-way within-alphabet) | error |", "|---|---|",
              f"| ours ({report['model']}) | {report['lake_runs']['error']:.2f}% |"]
    lines += [f"| {name} | {value}% |" for name, value in LAKE.items()]
    return "\n".join(lines)


def save_figure(out_dir, name, curve):
    """Training loss, held-out 5-way 1-shot accuracy and Lake error against episodes."""
    fig = options.figure((12, 3.6))
    if fig is None:
        return None
    for ax, key, title in zip(fig.subplots(1, 3), ("train_loss", "heldout_5w1s", "lake_error"),
                              ("training loss (window mean)", "held-out 5-way 1-shot accuracy %",
                               "Lake's 20 runs: error %")):
        ax.plot(curve["episode"], curve[key], marker=".", label="ours")
        ax.set(title=title, xlabel="training episode")
    for (reference, value), style in zip(list(LAKE.items())[:2], (":", "--")):
        ax.axhline(value, linestyle=style, color="gray", label=reference)
    ax.legend(fontsize="small")
    fig.suptitle(name)
    fig.tight_layout()
    path = os.path.join(out_dir, "learning_curve.png")
    files.save_figure_atomically(path, fig)
    print(f"wrote {path}")
    return path

