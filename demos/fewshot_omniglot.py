"""What the ProtoNet and Matching Net Omniglot demos share: data, training, evaluation, report.

Not a demo itself: ``protonet_omniglot`` and ``matching_omniglot`` each pass a ``Model``.

Data.  images_background_small1.zip + small2.zip (merged: 242 characters of 8 alphabets,
20 drawings each, 28×28) are split *by character* (seeded): ``test_fraction`` of the characters
are held out.  The training characters get their 90/180/270° rotations as new classes.  Lake's
20 official runs (all_runs.zip) come from the evaluation alphabets, never seen in training.

Training.  Episodes of train_way classes × (train_shot + train_query) drawings through the
conv4 max-pool net in one call (transductive batch norm, as the authors' code); Adam, lr halved
every ``lr_halve_every`` episodes (ProtoNets, Section 3.1).  Running BN statistics are kept
(momentum 0.1, unbiased variance, as PyTorch) for evaluation.

Evaluation (BN in running mode).  Every held-out image is embedded once; 600 episodes per
setting (5-way 1-shot, 5-way 5-shot, 20-way 1-shot; 15 queries per class) are scored from
those cached embeddings, a task axis at a time, which gives the numbers per-episode
re-embedding would, much faster.  Accuracy: mean over episodes ± 1.96·std/√600 (sample std).  Lake's runs:
each run's 20 training drawings are a 20-way 1-shot support set; the error is by
``lake_runs.evaluate_runs`` (argmax of log p over the 20 classes).
"""

import os
import platform
import time
from pathlib import Path
from typing import Callable, NamedTuple

import autograd.numpy as anp
import numpy as np
from autograd import grad_and_aux
from autograd.tracer import getval

from refmeta.data import lake_runs, omniglot
from refmeta.device import backend
from refmeta.nn import layers, models, optimizers
from refmeta.demos import divergence, files, options
from refmeta.progress import progress

EVAL_SETTINGS = ((5, 1), (5, 5), (20, 1))
BN_EPS, BN_MOMENTUM = 1e-5, 0.1
LAKE = {"MHD (measured here)": 38.8, "people": 4.5, "Bayesian Program Learning": 3.3,
        "Siamese ConvNet (Koch et al. 2015)": 8.0}
ZIPS = ("images_background_small1.zip", "images_background_small2.zip")
FULL = {"episodes": 6000, "max_train_minutes": 12.0, "hidden": 64, "eval_episodes": 600,
        "curve_every": 250, "curve_episodes": 200}
FAST = {"episodes": 10, "max_train_minutes": 1.0, "hidden": 8, "eval_episodes": 40,
        "curve_every": 5, "curve_episodes": 20}


class Model(NamedTuple):
    """What a demo supplies: its algorithm's Config and init, and the algorithm's equations on
    conv4 embeddings z_* (..., n, d), with a task axis or not.  ``run`` sets ``config``."""
    name: str
    configure: Callable       # (hidden, n_way, meta_lr) -> the algorithm's Config
    init: Callable            # (rng, config) -> host params: the algorithm's init
    conv_params: Callable     # params -> the conv4 net's params
    loss: Callable            # (params, z_support, support_y, z_query, query_y, config) -> scalar
    log_probs: Callable       # (params, z_support, support_y, z_query, n_way, config) -> (..., n_q, N)
    paper: dict               # "5-way 1-shot" -> published accuracy %
    learned: Callable = lambda params: {}   # params -> learned hyperparameters worth reporting
    config: object = None     # configure(hidden, train_way, lr), recorded by its conventions()


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


def check_data(args, train, test):
    """options.UsageError unless the training and test episodes the options ask for fit the data."""
    drawings = test.images.shape[1]
    options.check_needs(
        (f"--train-way {args.train_way}", args.train_way, len(train.names), "training classes"),
        (f"--train-shot {args.train_shot} + --train-query {args.train_query}",
         args.train_shot + args.train_query, drawings, "drawings per class"),
        (f"--eval-query {args.eval_query}: 5-shot episodes need 5 + {args.eval_query}",
         max(k for _, k in EVAL_SETTINGS) + args.eval_query, drawings, "drawings per class"),
        ("the 20-way test episodes", max(n for n, _ in EVAL_SETTINGS), len(test.names),
         "held-out characters (raise --test-fraction)"))


def load_data(args, rng):
    """(train Characters with rotations, held-out Characters, Lake runs at 28×28); data that
    cannot be read is an options.UsageError."""
    folder = Path(args.data)
    cache = args.cache or os.path.join(args.out, "cache")
    with options.input_errors():
        merged = omniglot.merge_characters(*(omniglot.load_characters(folder / z, 28, cache) for z in ZIPS))
        train, test = omniglot.split_characters(merged, rng, (1 - args.test_fraction, args.test_fraction))
        runs = lake_runs.load_lake_runs(folder / "all_runs.zip", 28)
    return omniglot.with_rotations(train), test, runs


def objective(params, episode, model):
    """The episode loss from one joint pass (support then query), and the BN batch moments."""
    n_support = episode.support_x.shape[0]
    x = anp.concatenate([episode.support_x, episode.query_x])
    z, moments = models.conv4_apply(model.conv_params(params), x, variant="maxpool", bn_eps=BN_EPS,
                                    return_bn_moments=True)
    loss = model.loss(params, z[:n_support], episode.support_y, z[n_support:], episode.query_y, model.config)
    return loss, (getval(loss), {name: getval(value) for name, value in moments.items()})


def embed_images(model, params, bn_state, images, chunk=256):
    """images (..., H, W) host -> (..., d) host embeddings, BN in running mode."""
    flat = images.reshape((-1, 1) + images.shape[-2:])
    dtype = model.conv_params(params)["conv0.w"].dtype
    parts = [backend.to_host(models.conv4_apply(model.conv_params(params), backend.asarray(flat[i:i + chunk], dtype),
                                                variant="maxpool", bn_mode="running",
                                                bn_state=bn_state, bn_eps=BN_EPS))
             for i in range(0, len(flat), chunk)]
    return np.concatenate(parts).reshape(images.shape[:-2] + (-1,))


def draw_episodes(rng, n_classes, n_drawings, n_tasks, n_way, k_shot, n_query):
    """Index arrays (classes (T, N), drawings (T, N, K+Q)) of T episodes."""
    classes = np.stack([rng.choice(n_classes, n_way, replace=False) for _ in range(n_tasks)])
    drawings = np.stack([rng.permuted(np.tile(np.arange(n_drawings), (n_way, 1)), axis=1)[:, :k_shot + n_query]
                         for _ in range(n_tasks)])
    return classes, drawings


def episode_accuracies(model, params, z, rng, n_tasks, n_way, k_shot, n_query, chunk=25):
    """Accuracy of each of n_tasks episodes scored from cached embeddings z (n_classes, n_drawings, d)."""
    classes, drawings = draw_episodes(rng, *z.shape[:2], n_tasks, n_way, k_shot, n_query)
    picked = z[classes[..., None], drawings]                               # (T, N, K+Q, d)
    z_support = picked[:, :, :k_shot].reshape(n_tasks, n_way * k_shot, -1)
    z_query = picked[:, :, k_shot:].reshape(n_tasks, n_way * n_query, -1)
    support_y, query_y = (np.tile(np.repeat(np.arange(n_way), n), (n_tasks, 1)) for n in (k_shot, n_query))
    accuracies = []
    for t in range(0, n_tasks, chunk):
        log_p = model.log_probs(params, *(backend.asarray(a, dtype=None) for a in (
            z_support[t:t + chunk], support_y[t:t + chunk], z_query[t:t + chunk])), n_way, model.config)
        predicted = np.argmax(backend.to_host(log_p), axis=-1)
        accuracies.append(np.mean(predicted == query_y[t:t + chunk], axis=-1))
    return np.concatenate(accuracies)


def lake_error(model, params, bn_state, runs):
    """Lake's protocol on the 20 runs: each run a 20-way 1-shot episode of its training drawings."""
    def score(test_images, train_images):
        z_test, z_train = (embed_images(model, params, bn_state, im) for im in (test_images, train_images))
        labels = np.arange(len(train_images))
        return model.log_probs(params, *(backend.asarray(a, dtype=None) for a in (z_train, labels, z_test)),
                               len(train_images), model.config)
    return lake_runs.evaluate_runs(runs, score, kind="score")


def summarise(accuracies):
    mean, ci95 = options.mean_and_ci95(accuracies)
    return {"mean": 100 * mean, "n_episodes": len(accuracies), "ci95": 100 * ci95}


def train(model, args, size, train_chars, test_chars, runs, rng):
    """Adam on training episodes; returns (params, bn_state, curve, episodes done, seconds)."""
    params = {k: backend.asarray(v, args.dtype) for k, v in model.init(rng, model.config).items()}
    bn_state = {k: backend.asarray(v, args.dtype) for k, v in models.conv4_bn_state(size["hidden"]).items()}
    state, curve, window = optimizers.adam_init(params), {"episode": [], "train_loss": [],
                                                          "heldout_5w1s": [], "lake_error": []}, []
    start, done = time.perf_counter(), 0
    step = grad_and_aux(lambda p, episode: objective(p, episode, model))
    bar = progress(range(size["episodes"]), total=size["episodes"], desc=f"{model.name} training")
    for episode_index in bar:
        episode = omniglot.sample_episode(rng, train_chars.images, args.train_way, args.train_shot,
                                          args.train_query, dtype=args.dtype)
        with divergence.watch(episode_index + 1, divergence.lower(("--lr", args.lr)),
                              f"{model.name} training"):
            grads, (loss, moments) = step(params, episode)
            lr = args.lr * 0.5 ** (episode_index // args.lr_halve_every)
            params, state = optimizers.adam_update(params, grads, state, lr=lr)
            divergence.check(loss, params)
        bn_state = layers.update_running(bn_state, moments, BN_MOMENTUM)
        window.append(float(loss))
        done = episode_index + 1
        out_of_time = time.perf_counter() - start > 60 * size["max_train_minutes"]
        if done % size["curve_every"] == 0 or done == size["episodes"] or out_of_time:
            check_rng = np.random.default_rng(args.eval_seed + 1)  # the same check every time
            z = embed_images(model, params, bn_state, test_chars.images)
            accuracy = episode_accuracies(model, params, z, check_rng, size["curve_episodes"], 5, 1,
                                          args.eval_query)
            for key, value in (("episode", done), ("train_loss", float(np.mean(window))),
                               ("heldout_5w1s", 100 * float(np.mean(accuracy))),
                               ("lake_error", lake_error(model, params, bn_state, runs).mean)):
                curve[key].append(value)
            window = []
            bar.set_postfix(loss=f"{curve['train_loss'][-1]:.3f}", heldout=f"{curve['heldout_5w1s'][-1]:.1f}%",
                            lake=f"{curve['lake_error'][-1]:.1f}%")
        if out_of_time:
            break
    if hasattr(bar, "close"):
        bar.close()
    return params, bn_state, curve, done, time.perf_counter() - start


def run(model, args):
    """Train, evaluate, print the tables, write results.json (and learning_curve.png)."""
    start, size = time.perf_counter(), options.sizes(args, FULL, FAST)
    load_at_start = os.getloadavg()
    check_args(args, size)
    model = model._replace(config=model.configure(size["hidden"], args.train_way, args.lr))
    train_chars, test_chars, runs = load_data(args, np.random.default_rng(args.seed))
    check_data(args, train_chars, test_chars)
    params, bn_state, curve, done, train_seconds = train(
        model, args, size, train_chars, test_chars, runs, np.random.default_rng([args.seed, 1]))
    eval_start = time.perf_counter()
    z = embed_images(model, params, bn_state, test_chars.images)           # (n_chars, 20, d)
    eval_rng = np.random.default_rng(args.eval_seed)
    results = {f"{n}-way {k}-shot": summarise(episode_accuracies(
        model, params, z, eval_rng, size["eval_episodes"], n, k, args.eval_query)) for n, k in EVAL_SETTINGS}
    lake = lake_error(model, params, bn_state, runs)
    report = {
        "model": model.name, "conventions": model.config.conventions(),
        "config": {**vars(args), **size, "bn_eps": BN_EPS, "bn_momentum": BN_MOMENTUM,
                   "eval": "BN running mode, cached embeddings, held-out characters, no rotations"},
        "data": {"train_classes": len(train_chars.names), "train_characters": len(train_chars.names) // 4,
                 "heldout_characters": len(test_chars.names), "lake_runs": len(runs)},
        "results": results,
        "lake_runs": {"error": lake.mean, "per_run": lake.per_run.tolist(), "references": LAKE},
        "learned": model.learned(params), "paper_full_data": model.paper, "learning_curve": curve,
        "timing": {"episodes_done": done, "train_seconds": train_seconds,
                   "eval_seconds": time.perf_counter() - eval_start},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_start": load_at_start, "loadavg_end": os.getloadavg()},
    }
    report["table"] = format_table(report)
    print(report["table"])
    if not args.no_plots:
        report["figure"] = save_figure(args.out, model.name, curve)
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

