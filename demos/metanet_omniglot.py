"""Meta Networks on Omniglot one-shot (Munkhdalai & Yu 2017, Section 4.1): held-out characters, Lake's runs.

Data.  images_background_small1.zip + small2.zip (merged: 242 characters of 8 alphabets, 20
drawings each, 28×28) are split *by character* (seeded): ``--test-fraction`` of the characters
are held out.  Training characters get their 90/180/270° rotations as new classes (MAML's and
ProtoNets' convention; the MetaNet authors instead rotate each class of an episode by a random
multiple of 90°).  Lake's 20 runs (all_runs.zip) come from the evaluation alphabets.

Model (``refmeta.metanet``).  b and u are the authors' MetaNetFull learner: 5 conv blocks (3×3
conv, ReLU, 2×2 max-pool rounding up, as Chainer's max_pooling_2d does by default: 28 → 14 → 7
→ 4 → 2 → 1; ``--hidden`` filters, no biases, no batch norm) with fc1 and an output layer.
``--n-blocks 4 --pool-rounding floor`` gives the network of the runs measured before (28 → 14 →
7 → 3 → 1).  ``--fast-conv-blocks`` says how many of the top conv blocks are layer-augmented (fc1
and the output layer always are): "all" is MetaNetFull, a small number the authors'
MetaNetPartial idea; it is the main lever on CPU time.

Training.  ``--train-way``-way 1-shot episodes with ``--train-query`` queries per class, one
episode per Adam step on L_train (sum over queries), gradient-norm clipping at 10, until
``--episodes`` or ``--max-train-minutes`` (``metanet.step`` through ``train.train``).  At
episode 0, every ``--curve-every`` episodes and at the end the model is scored on
``--curve-episodes`` 5-way 1-shot held-out episodes (a separate seed): the learning curve.
No checkpoint is selected: the final model is the one tested.

Test.  600 5-way 1-shot and 600 20-way 1-shot episodes on the held-out characters
(``--eval-query`` queries per class), accuracy mean ± 1.96·std/√600 (sample std) over episodes.  A model
trained with N ≥ n output units answers an n-way task with its first n (``with_n_way``: the
units are exchangeable, labels being random per episode).  20-way tasks need N ≥ 20, which is
why ``--train-way`` defaults to 20.  Lake's runs: each run's 20 training drawings are a 20-way
1-shot support set and its 20 test drawings the queries; error by ``lake_runs.evaluate_runs``
(argmax of the logits).  The paper's 98.95% (5-way) and 97.00% (20-way) one-shot come from
training on Omniglot's standard 1200-character split, about 6× the characters used here.

Defaults chosen for ~15 minutes on 2 CPU cores (the authors' values in brackets): 32 filters
[64], 5 blocks with ceil pools [the same], fast weights on fc1 and the output layer only [every
layer], m's and d's last layers initialised ×0.1 [×1; at ×1 a 64-filter net started with logits
~20 and stalled at chance], Adam 3e-3 [1e-3], 20-way 1-shot episodes with one query per class
[5-way, 10 queries per class], float32, 13 minutes of training [their script: up to 100000
epochs of 100 episodes].  These were chosen, and the runs in docs/demo-metanet-omniglot.md
measured, with 4 floor-pooled blocks.
"""

import dataclasses
import os
import platform
import time
from pathlib import Path

import numpy as np

from refmeta import contract, metanet
from refmeta.nn import metanet_parts
from refmeta.data import lake_runs, omniglot
from refmeta.device import backend
from refmeta.demos import files, options, train

ZIPS = ("images_background_small1.zip", "images_background_small2.zip")
PAPER = {"5-way 1-shot": 98.95, "20-way 1-shot": 97.00}
LAKE = {"people": 4.5, "Bayesian Program Learning": 3.3, "Siamese ConvNet (Koch et al. 2015)": 8.0,
        "MHD (measured here)": 38.8}
FULL = {"episodes": 100000, "max_train_minutes": 13.0, "hidden": 32, "eval_episodes": 600,
        "curve_every": 500, "curve_episodes": 100}
FAST = {"episodes": 6, "max_train_minutes": 1.0, "hidden": 4, "eval_episodes": 8,
        "curve_every": 3, "curve_episodes": 4}


def add_arguments(parser):
    add = parser.add_argument
    options.add_omniglot_folders(parser, "metanet-omniglot")
    at_least = options.integer_at_least
    add("--seed", type=options.seed, default=0, help="init, split and training episodes (default 0)")
    add("--eval-seed", type=options.seed, default=2017, help="test episodes (default 2017)")
    add("--episodes", type=at_least(1), help=f"training episodes at most (default {FULL['episodes']})")
    add("--max-train-minutes", type=options.positive_float,
        help=f"stop training after this long (default {FULL['max_train_minutes']})")
    add("--train-way", type=int, default=20, help="classes per training episode (default 20)")
    add("--train-query", type=int, default=1, help="queries per class in training (default 1)")
    add("--hidden", type=at_least(1), help=f"conv filters (default {FULL['hidden']})")
    add("--n-blocks", type=at_least(1), default=5, help="conv blocks (default 5, the authors')")
    add("--pool-rounding", choices=("floor", "ceil"), default="ceil",
        help="the max-pools' output size, ⌊s/2⌋ or ⌈s/2⌉ (default ceil, Chainer's and the authors')")
    add("--fast-conv-blocks", default="0", help="top conv blocks with fast weights: an integer or 'all'")
    add("--fast-init-scale", type=options.positive_float, default=0.1,
        help="scale of m's and d's last-layer init (default 0.1; 1 is Chainer's default)")
    add("--second-order", action="store_true", help="differentiate through the meta-information gradients")
    add("--dtype", choices=("float32", "float64"), default="float32",
        help="training and evaluation precision (default float32, as PyTorch trains)")
    add("--lr", type=options.nonnegative_float, default=3e-3, help="Adam step size (default 3e-3; the authors' 1e-3 is slower)")
    add("--test-fraction", type=options.finite_float, default=0.2,
        help="characters held out (default 0.2)")
    add("--eval-episodes", type=at_least(2),
        help=f"test episodes per setting (default {FULL['eval_episodes']})")
    add("--eval-query", type=int, default=5, help="queries per class at test (default 5)")
    add("--curve-every", type=at_least(1),
        help=f"held-out check every this many episodes ({FULL['curve_every']})")
    add("--curve-episodes", type=at_least(1), help=f"5-way episodes per check ({FULL['curve_episodes']})")
    options.add_size_switches(parser, FAST)


def run(args):
    """Train, test, print the table, write results.json (and learning_curve.png)."""
    start = time.perf_counter()
    size = options.sizes(args, FULL, FAST)
    config = make_config(args, size)
    rng = np.random.default_rng(args.seed)
    train_chars, test_chars, runs = load_data(args, rng)
    params = {k: backend.asarray(v, args.dtype) for k, v in metanet.init(rng, config).items()}
    trained = train_model(params, train_chars, test_chars, config, args, size, rng)
    results = evaluate(trained.params, test_chars, runs, config, args, size)
    report = build_report(args, size, config, trained, results, len(train_chars.names), len(test_chars.names))
    report["table"] = format_table(report)
    print(report["table"])
    os.makedirs(args.out, exist_ok=True)
    if not args.no_plots:
        report["figures"] = save_figure(args.out, trained.curve)
    files.save_results(args.out, report, start)
    return report


def make_config(args, size):
    """MetaNetConfig from the options, after checking them (options.UsageError naming the
    option) and the data and output folders (the output folder is created and written to)."""
    for name, minimum in (("train_way", 2), ("train_query", 1), ("eval_query", 1)):
        if getattr(args, name) < minimum:
            raise options.UsageError(f"--{name.replace('_', '-')} must be >= {minimum}; "
                                     f"got {getattr(args, name)}")
    if not 0 < args.test_fraction < 1:
        raise options.UsageError(f"--test-fraction must lie in (0, 1); got {args.test_fraction}")
    blocks, (low, high) = args.fast_conv_blocks, metanet_parts.image_sides(args.n_blocks, args.pool_rounding)
    if blocks != "all" and not (blocks.isdigit() and int(blocks) <= args.n_blocks):
        raise options.UsageError(f"--fast-conv-blocks must be 0..{args.n_blocks} (--n-blocks) or 'all'; "
                                 f"got {blocks!r}")
    if not low <= 28 <= high:
        raise options.UsageError(f"--n-blocks {args.n_blocks} --pool-rounding {args.pool_rounding}: the "
                                 f"blocks take images of side {low}..{high} to 1×1, not Omniglot's 28")
    options.check_data_folder(args.data, ZIPS + ("all_runs.zip",))
    options.check_out_folder(args.out, ("results.json", "learning_curve.png"))
    return metanet.MetaNetConfig(n_way=args.train_way, hidden=size["hidden"], n_blocks=args.n_blocks,
                                 pool_rounding=args.pool_rounding,
                                 fast_init_scale=args.fast_init_scale,
                                 fast_conv_blocks=None if blocks == "all" else int(blocks),
                                 second_order=args.second_order, meta_lr=args.lr)


def load_data(args, rng):
    """(train Characters with rotations, held-out Characters, Lake runs at 28×28); data that
    cannot be read, or that the episodes do not fit, is an options.UsageError."""
    folder = Path(args.data)
    cache = args.cache or os.path.join(args.out, "cache")
    with options.input_errors():
        merged = omniglot.merge_characters(*(omniglot.load_characters(folder / z, 28, cache) for z in ZIPS))
        train_chars, test_chars = omniglot.split_characters(merged, rng, (1 - args.test_fraction,
                                                                          args.test_fraction))
        runs = lake_runs.load_lake_runs(folder / "all_runs.zip", 28)
    drawings, test_way = test_chars.images.shape[1], 20 if args.train_way >= 20 else 5
    options.check_needs(
        (f"--train-way {args.train_way}", args.train_way, len(train_chars.names) * 4, "training classes"),
        (f"the {test_way}-way test episodes", test_way, len(test_chars.names),
         "held-out characters (raise --test-fraction)"),
        (f"1 shot + --train-query {args.train_query}", 1 + args.train_query, drawings, "drawings per class"),
        (f"1 shot + --eval-query {args.eval_query}", 1 + args.eval_query, drawings, "drawings per class"))
    return omniglot.with_rotations(train_chars), test_chars, runs


def train_model(params, train_chars, test_chars, config, args, size, rng):
    """``metanet.step`` on one episode at a time (``train.train``); the curve's training loss is
    the mean cross-entropy per query, its check 5-way accuracy on the same held-out episodes."""
    queries = args.train_way * args.train_query

    def step(params, state):
        episode = omniglot.sample_episode(rng, train_chars.images, args.train_way, 1, args.train_query,
                                          dtype=args.dtype)
        taken = metanet.step(params, state, episode, config)
        return taken._replace(loss=float(taken.loss) / queries)         # L_train sums over the queries

    def check(params, state):
        return {"heldout_5way": float(np.mean(episode_accuracies(
            params, test_chars, config, 5, size["curve_episodes"], args.eval_query,
            np.random.default_rng(args.eval_seed + 1))))}

    plan = train.Plan(size["episodes"], size["curve_every"], 60 * size["max_train_minutes"], "MetaNet",
                      train.lower(("--lr", args.lr)), "episode", "held-out check")
    return train.train(step, params, metanet.init_state(params, config), plan, check)


def _dtype(params):
    return next(iter(params.values())).dtype


def episode_accuracies(params, characters, config, n_way, n_episodes, n_query, rng):
    """Query accuracy of each of n_episodes n_way 1-shot episodes (the first n_way output units)."""
    narrowed, config = metanet.with_n_way(params, n_way), dataclasses.replace(config, n_way=n_way)
    accuracies = []
    for _ in range(n_episodes):
        episode = omniglot.sample_episode(rng, characters.images, n_way, 1, n_query, dtype=_dtype(params))
        logits = metanet.predict(narrowed, episode, config)
        hits = np.argmax(backend.to_host(logits), axis=1) == backend.to_host(episode.query_y)
        accuracies.append(float(np.mean(hits)))
    return np.array(accuracies)


def evaluate(params, test, runs, config, args, size):
    """Accuracy ± CI on held-out characters (5- and 20-way 1-shot) and the error on Lake's runs."""
    start, results = time.perf_counter(), {}
    for n_way in (5, 20):
        if n_way > args.train_way:
            results[f"{n_way}-way 1-shot"] = None  # no n_way output units to answer with
            continue
        acc = 100 * episode_accuracies(params, test, config, n_way, size["eval_episodes"], args.eval_query,
                                       np.random.default_rng(args.eval_seed))
        mean, ci95 = options.mean_and_ci95(acc)
        results[f"{n_way}-way 1-shot"] = {"accuracy": mean, "n_episodes": len(acc), "ci95": ci95}
    if args.train_way >= 20:
        errors = lake_runs.evaluate_runs(runs, lake_score(params, config), kind="score")
        results["lake_runs"] = {"error": errors.mean, "per_run": errors.per_run.tolist()}
    else:
        results["lake_runs"] = None
    results["eval_seconds"] = time.perf_counter() - start
    return results


def lake_score(params, config):
    """score(test_images, train_images) -> logits (n_test, 20) for one of Lake's runs: its 20
    training drawings are the support set (classes 0..19), its test drawings the queries (their
    labels, unknown here and unused by predict, are given as 0)."""
    narrowed, config = metanet.with_n_way(params, 20), dataclasses.replace(config, n_way=20)
    images = lambda x: backend.asarray(x[:, None], _dtype(params))
    labels = lambda y: backend.asarray(y, dtype=None)
    return lambda test_images, train_images: metanet.predict(narrowed, contract.Episode(
        images(train_images), labels(np.arange(len(train_images))),
        images(test_images), labels(np.zeros(len(test_images), dtype=np.int64))), config)


def build_report(args, size, config, trained, results, n_train_classes, n_test_characters):
    episodes, seconds = trained.iterations, trained.seconds
    return {
        "demo": "metanet-omniglot",
        "paper": {"citation": "Munkhdalai & Yu 2017, Meta Networks, ICML, Section 4.1 (Omniglot), Table 1",
                  "accuracy": PAPER,
                  "note": "trained on Omniglot's standard 1200-character split (with rotations)"},
        "config": {"metanet": config.conventions(), "hidden": size["hidden"], "n_blocks": config.n_blocks,
                   "pool_rounding": config.pool_rounding,
                   "fast_init_scale": args.fast_init_scale, "dtype": args.dtype, "train_way": args.train_way,
                   "train_shot": 1, "train_query": args.train_query, "episodes_trained": episodes,
                   "max_train_minutes": size["max_train_minutes"], "test_fraction": args.test_fraction,
                   "training_classes": n_train_classes, "heldout_characters": n_test_characters,
                   "eval_episodes": size["eval_episodes"], "eval_query": args.eval_query,
                   "ci95": "1.96 * std(ddof=1) / sqrt(n_episodes) over episode accuracies",
                   "n_way_answered_by": "the first n_way output units (metanet.with_n_way)",
                   "rotations": "90/180/270 as new training classes", "fast": args.fast},
        "seeds": {"seed": args.seed, "eval_seed": args.eval_seed,
                  "streams": "default_rng(seed): split, init, training episodes; default_rng(eval_seed): "
                             "test episodes; default_rng(eval_seed + 1): learning-curve episodes"},
        "timing": {"train_seconds": seconds, "curve_check_seconds": trained.check_seconds,
                   "seconds_per_episode": (seconds - trained.check_seconds) / max(episodes, 1),
                   "stopped": trained.stopped, "eval_seconds": results["eval_seconds"]},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "backend": backend.current(), "load_average_at_end": list(os.getloadavg())},
        "results": {k: v for k, v in results.items() if k != "eval_seconds"},
        "lake_reference_errors": LAKE,
        "learning_curve": trained.curve,
    }


def format_table(report):
    r, lines = report["results"], ["| | 5-way 1-shot | 20-way 1-shot | error on Lake's 20 runs |",
                                   "|---|---|---|---|"]
    cell = lambda x: "n/a" if x is None else f"{x['accuracy']:.2f} ± {x['ci95']:.2f}%"
    lake = "n/a" if r["lake_runs"] is None else f"{r['lake_runs']['error']:.2f}%"
    lines.append(f"| ours (242 characters, {report['config']['episodes_trained']} episodes, "
                 f"{report['timing']['train_seconds'] / 60:.1f} min) | {cell(r['5-way 1-shot'])} | "
                 f"{cell(r['20-way 1-shot'])} | {lake} |")
    five, twenty = PAPER["5-way 1-shot"], PAPER["20-way 1-shot"]
    lines.append(f"| paper (1200 training characters) | {five:.2f}% | {twenty:.2f}% | |")
    return "\n".join(lines)


def save_figure(out_dir, curve):
    """learning_curve.png: training loss and held-out 5-way accuracy by episode; [] without matplotlib."""
    fig = options.figure((10, 4))
    if fig is None:
        return []
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(curve["episode"], curve["train_loss"])
    loss_ax.set(xlabel="episode", ylabel="mean query cross-entropy", title="training loss (per window)")
    acc_ax.plot(curve["episode"], 100 * np.array(curve["heldout_5way"]))
    acc_ax.axhline(PAPER["5-way 1-shot"], linestyle=":", color="gray", label="paper 98.95%")
    acc_ax.set(xlabel="episode", ylabel="%", title="held-out 5-way 1-shot accuracy")
    acc_ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, "learning_curve.png")
    files.save_figure_atomically(path, fig)
    return [path]


def main(argv=None):
    """``python demos/metanet_omniglot.py --data DIR``, the same as ``refmeta demo metanet-omniglot``."""
    options.main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
