"""Prototypical Networks on Omniglot (Snell et al. 2017): held-out accuracy and Lake's 20 runs.

Trains a ProtoNet (conv4 with max-pool, squared Euclidean distance) on the two small
background sets, split by character, and reports 5-way 1-shot, 5-way 5-shot and 20-way 1-shot
accuracy on held-out characters (600 episodes, 95% CI) and the error on Lake's 20 official
one-shot runs next to MHD's 38.8% and people's 4.5%.  ``demos/fewshot_omniglot.py`` holds the
protocol (data split, training through ``protonet.step``, cached-embedding evaluation).

Default training: 60-way 1-shot episodes with 1 query per class (the paper trains 60-way
with 5 queries; in 12 minutes here one query did as well: docs/demo-metric-omniglot.md), Adam
1e-3, float32, at most 6000 episodes or 12 minutes.  ``--fast`` runs in seconds.

    refmeta data fetch omniglot && refmeta demo protonet-omniglot
"""


from refmeta import protonet
from refmeta.demos import fewshot_omniglot as common, options

PAPER = {"5-way 1-shot": 98.8, "5-way 5-shot": 99.7, "20-way 1-shot": 96.0, "20-way 5-shot": 98.9}


def algorithm():
    return common.Algorithm(
        name="protonet", module=protonet,
        configure=lambda hidden, n_way, meta_lr: protonet.ProtoNetConfig(
            common.embedding(hidden), n_way=n_way, meta_lr=meta_lr),
        net="",
        log_probs=lambda params, z_s, y_s, z_q, n_way, config: protonet.log_probabilities(
            z_s, y_s, z_q, n_way, config.distance),
        paper=PAPER)


def add_arguments(parser):
    common.add_arguments(parser, "protonet-omniglot")


def run(args):
    return common.run(algorithm(), args)


def main(argv=None):
    """``python demos/protonet_omniglot.py --data DIR``, the same as ``refmeta demo protonet-omniglot``."""
    options.main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
