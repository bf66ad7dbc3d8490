"""Which reference-case outputs carry each equation's result (docs/reading.md, "exported in").

``EXPORTED[page]`` is (the ``algorithm`` its cases record, {label: what carries it}), or, for a
page no case is computed with, the reason as a string.  What carries a label is a tuple of
output patterns, or a string saying why no output does.  A pattern is ``OUTPUT`` or
``CASE:OUTPUT`` in shell-glob form: ``OUTPUT`` matches an output name or the group before its
"/" (``meta_gradient`` matches ``meta_gradient/dense0.w``); ``CASE`` narrows it to the matching
case ids.  The case ids and full output names on a page come from ``refmeta.cases.CASES``;
tests/test_read.py checks that every pattern matches an output of a case of the algorithm,
that every equation of a page is listed, and that an output whose meaning cites an equation
is listed under it.
"""

EXPORTED = {
    "maml": ("MAML", {
        "(1)": ("adapted_step*",),
        "(2)": ("query_loss", "meta_loss"),
        "(3)": ("meta_gradient",),
    }),
    "reptile": ("Reptile", {
        "(1)": ("*-serial:task_start", "*-serial:updated"),
        "(2)": ("*-batched:updated",),
    }),
    "protonet": ("Prototypical Networks", {
        "(1)": ("prototypes",),
        "(2)": ("distances", "log_probabilities"),
        "(3)": ("loss", "gradient"),
    }),
    "matching": ("Matching Networks", {
        "(A)": ("attention",),
        "(P)": ("log_probabilities",),
        "(L)": ("log_probabilities", "loss"),
        "(G)": ("*-fce:fce/support",),
        "(R)": ("*-fce:fce/query",),
        "(F1)": ("*-fce:fce/query",),
        "(F2)": ("*-fce:fce/query",),
    }),
    "snail": ("SNAIL", {
        "(1)": ("sequences",),
        "(2)": ("logits", "log_probabilities", "loss"),
        "(3)": ("blocks", "attention"),
        "(4)": ("blocks",),                       # the channel counts: the blocks' last axes
    }),
    "metanet": ("Meta Networks", {
        "(1)": ("memory",),
        "(2)": "not an output: the cases record its gradient, (3)",
        "(3)": ("meta_info/task",),
        "(4)": ("task_fast_weights",),
        "(5)": ("support_representations",),
        "(7)": ("attention",),
        "(8)": ("read",),
        "(9)": "not an output: the cases record its gradient, (10)",
        "(10)": ("meta_info/example",),
        "(11)": ("logits", "loss"),
    }),
    "snail_blocks": ("SNAIL", {
        "(1)": ("blocks/block1", "blocks/block3"),   # inside every DenseBlock of the TC blocks
        "(2)": ("blocks/block1", "blocks/block3"),
        "(3)": ("blocks/block1", "blocks/block3"),
        "(4)": ("attention", "blocks/block0", "blocks/block2", "blocks/block4"),
    }),
    "metanet_parts": ("Meta Networks", {
        "(B)": ("support_representations", "query_representations", "logits"),
        "(F)": ("support_representations", "query_representations", "logits"),
        "(L)": ("logits",),
        "(P)": "not an output: m and d read it; their outputs are memory and task_fast_weights",
        "(M)": ("memory",),
        "(D)": ("task_fast_weights",),
    }),
    "fused_mlp": "no reference case is computed with it; its tests hold it equal to the generic "
                 "MLP, whose MAML cases are exported",
    "gradcheck": "the gradient checker exports nothing: it checks the gradients the cases export",
}
