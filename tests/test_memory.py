"""Memory grows with the work asked for, and a size that cannot fit is refused before it is
allocated (with one line naming the option and the size it would need).

Every case runs in a fresh Python under an address-space limit (RLIMIT_AS) a few hundred MiB
above what the imports take, so it behaves the same on any machine: a computation that keeps
what it should not dies with a MemoryError there, and a refused size is refused by the limit.
"""

import os
import re
import subprocess
import sys
import textwrap

import pytest

from helpers import omniglot_folder

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="RLIMIT_AS and /proc/self/status are Linux's")

HEADROOM_MIB = 400
PRELUDE = """
import resource, sys
import numpy as np, autograd.numpy as anp
from refmeta import contract, maml, reptile, snail, metanet, matching
from refmeta.nn import layers
import refmeta.cli
size = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (size * 1024 + {headroom} * 2 ** 20, resource.RLIM_INFINITY))
def report(f):
    try:
        print("RETURNED", f())
    except Exception as error:
        print(type(error).__name__ + ":", error)
"""


def run_limited(code, headroom_mib=HEADROOM_MIB):
    """Run ``code`` after PRELUDE in a fresh Python: its stdout and stderr, and its exit status."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    script = PRELUDE.format(headroom=headroom_mib) + textwrap.dedent(code)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, env=env)
    return result.stdout.strip(), result.stderr.strip(), result.returncode


# A linear model with 500 × 500 params (1.9 MiB): 400 steps of kept params would be 760 MiB.
WIDE_MODEL = """
model = contract.Model(lambda rng: {"w": rng.normal(size=(500, 500)) * 0.01},
                       lambda p, x: anp.matmul(x, p["w"]),
                       lambda p, x, y, r: anp.mean((anp.matmul(x, p["w"]) - y) ** 2, axis=(-1, -2)),
                       "linear 500-500")
params = model.init(np.random.default_rng(0))
episode = contract.Episode(*(np.random.default_rng(i).normal(size=(1, 4, 500)) for i in range(4)))
"""


def test_maml_adapt_keeps_only_the_current_params():
    out, err, status = run_limited(WIDE_MODEL + """
config = maml.MAMLConfig(model=model)
report(lambda: maml.adapt(params, episode, config, steps=400)["w"].shape)
""")
    assert out == "RETURNED (1, 500, 500)", (out, err)


def test_reptile_predict_keeps_only_the_current_params():
    out, err, status = run_limited(WIDE_MODEL + """
config = reptile.ReptileConfig(model=model, inner_optimizer="adam")
report(lambda: reptile.predict(params, episode, config, steps=400).shape)
""")
    assert out == "RETURNED (1, 4, 500)", (out, err)


def test_a_class_count_check_costs_the_labels_not_n_way():
    out, err, status = run_limited("""
config = maml.MAMLConfig(n_way=10 ** 9)
episode = contract.Episode(np.zeros((1, 3, 1)), np.array([[0, 1, 2]]), np.zeros((1, 3, 1)),
                           np.array([[0, 1, 2]]))
report(lambda: maml.loss(maml.init(np.random.default_rng(0), config), episode, config))
""")
    assert out == ("ValueError: support_y: every class 0..999999999 needs at least one example, "
                   "1000000000 in all; a task has 3"), (out, err)


@pytest.mark.parametrize("call, message", [
    ("snail.init(np.random.default_rng(0), snail.SNAILConfig(n_way=10 ** 6))",
     r"ValueError: n_way=1000000, sequence_length=1000001, image_size=28: SNAIL's float64 params "
     r"would need 7.48 TiB; this process may use at most \d"),
    ("metanet.init(np.random.default_rng(0), metanet.MetaNetConfig(n_way=10 ** 6))",
     r"ValueError: n_way=1000000, hidden=64: MetaNet's float64 params would need 978 MiB; "
     r"this process may use at most \d"),
    ("matching.init(np.random.default_rng(0), matching.MatchingConfig(embedding_dim=10 ** 5, fce=True))",
     r"ValueError: embedding_dim=100000: the FCE LSTMs' float64 params would need 2.04 TiB; "
     r"this process may use at most \d"),
])
def test_params_that_cannot_fit_are_refused_before_init_allocates(call, message):
    out, err, status = run_limited(f"report(lambda: len({call}))")
    assert re.fullmatch(message + r"[\d.]+ [KMGT]iB", out), (out, err)


@pytest.mark.parametrize("demo, options, option", [
    ("maml-sinusoid", ["--meta-batch-size", "1000000"], "--meta-batch-size 1000000"),
    ("maml-sinusoid", ["--test-query-points", "1000000000"], "--test-query-points 1000000000"),
    ("maml-omniglot", ["--meta-batch-size", "1000000"], "--meta-batch-size 1000000"),
    ("reptile-omniglot", ["--meta-batch-size", "1000000"], "--meta-batch-size 1000000"),
    ("snail-omniglot", ["--meta-batch-size", "1000000"], "--meta-batch-size 1000000"),
])
def test_a_demo_refuses_a_size_that_cannot_fit_in_one_line(demo, options, option, tmp_path):
    data = ["--data", str(omniglot_folder())] if demo.endswith("omniglot") else []
    argv = ["demo", demo, "--fast", "--no-plots", "--out", str(tmp_path / "out"), *data, *options]
    out, err, status = run_limited(f"sys.exit(refmeta.cli.main({argv!r}))")
    assert status == 2, (out, err)
    assert err.count("\n") == 0 and err.startswith(f"refmeta: error: {option}"), err
    assert "would need at least" in err and "this process may use at most" in err, err
