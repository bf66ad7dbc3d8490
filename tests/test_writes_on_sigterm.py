"""Every file refmeta writes is whole or absent, even when SIGTERM comes in the middle.

Each test runs refmeta in a child process whose ``os.replace`` (or a case's staging write)
pauses, the first time it names the file under test: the moment a temporary copy is complete
but not yet renamed.  The test sends a real SIGTERM, then tells the child to go on, and checks
that the folder holds the whole file, or the old state, and no temporary file.  refmeta holds
SIGTERM while it writes (refmeta.disk), so the signal acts only once the write is over; where
it is not held, it acts at once, in the pause (the last test shows that).
"""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import OMNIGLOT_FILES, omniglot_folder
from refmeta import cases
from refmeta.cases import verify

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals only")

PAUSE = """
import os, signal, sys, time

def pause_before(owner, attribute, name):
    '''owner.attribute(...) waits, the first time an argument's path ends in ``name``: it
    creates the file $MARKER, then waits for $MARKER.signalled (60 s at most).'''
    real = getattr(owner, attribute)
    def pausing(*args, **kwargs):
        paths = [os.fspath(a) for a in args if isinstance(a, (str, os.PathLike))]
        if not pausing.done and any(path.endswith(name) for path in paths):
            pausing.done = True
            open(os.environ["MARKER"], "w").close()
            deadline = time.monotonic() + 60
            while not os.path.exists(os.environ["MARKER"] + ".signalled") and time.monotonic() < deadline:
                time.sleep(0.01)
        return real(*args, **kwargs)
    pausing.done = False
    setattr(owner, attribute, pausing)

def pause_at_call(owner, attribute, n):
    '''owner.attribute(...) waits at its n-th call, as pause_before does.'''
    real, calls = getattr(owner, attribute), []
    def pausing(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            open(os.environ["MARKER"], "w").close()
            deadline = time.monotonic() + 60
            while not os.path.exists(os.environ["MARKER"] + ".signalled") and time.monotonic() < deadline:
                time.sleep(0.01)
        return real(*args, **kwargs)
    setattr(owner, attribute, pausing)

"""


def sigterm_midway(tmp_path, body, *argv):
    """Run PAUSE + ``body`` with ``argv``; SIGTERM it once paused; (exit status, stderr)."""
    marker = tmp_path / "paused"
    child = subprocess.Popen([sys.executable, "-c", PAUSE + body, *map(str, argv)],
                             env=dict(os.environ, MARKER=str(marker)), cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), child.communicate(timeout=30)
        child.send_signal(signal.SIGTERM)
        time.sleep(0.05)                                 # delivered by now
        (tmp_path / "paused.signalled").touch()
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    return child.returncode, err


def listing(folder):
    """Every path under ``folder``, relative, files and folders, hidden ones too."""
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, folders, files in os.walk(folder) for name in folders + files)


def last_line(err):
    return err.strip().splitlines()[-1] if err.strip() else ""


# ----- the demos: results.json and figures -----
DEMO = """
from refmeta import cli
pause_before(os, "replace", sys.argv[2])
sys.exit(cli.main(["demo", "maml-sinusoid", "--fast", "--out", sys.argv[1], *sys.argv[3:]]))
"""


def test_sigterm_while_a_demo_writes_results_json_leaves_it_whole(tmp_path):
    out = tmp_path / "out"
    status, err = sigterm_midway(tmp_path, DEMO, out, "results.json", "--no-plots")
    assert status == 128 + signal.SIGTERM, err
    assert last_line(err) == "refmeta demo maml-sinusoid: terminated; the files written are whole"
    assert listing(out) == ["results.json"]
    assert json.loads((out / "results.json").read_text())["timing"]["total_seconds"] > 0


def test_sigterm_mid_training_ends_training_and_the_demo_writes_what_it_trained(tmp_path):
    """The first SIGTERM during training (here in MAML's 100th step of 600) ends it after that
    step, in one line; the pretrained baseline trains nothing more, and the demo tests and writes
    its results whole."""
    body = """
from refmeta import cli, maml
pause_at_call(maml, "step", 100)
sys.exit(cli.main(["demo", "maml-sinusoid", "--fast", "--no-plots", "--out", sys.argv[1]]))
"""
    out = tmp_path / "out"
    status, err = sigterm_midway(tmp_path, body, out)
    assert status == 0, err
    assert ("MAML: SIGTERM after 100 of 600 iterations: training ends there, as at the time budget, "
            "and the run goes on with what it trained (a second signal stops it at once)") in err.splitlines()
    assert listing(out) == ["results.json"]
    saved = json.loads((out / "results.json").read_text())
    assert (saved["timing"]["maml_stopped"], saved["timing"]["maml_iterations_done"]) == ("SIGTERM", 100)
    assert saved["timing"]["pretrained_iterations_done"] == 0
    assert saved["learning_curves"]["maml"]["iteration"] == [0, 100]
    assert saved["results"]["maml_final"]["K=5"]["10"]["n_tasks"] == 100


def test_sigterm_while_a_demo_saves_a_figure_leaves_it_whole(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    status, err = sigterm_midway(tmp_path, DEMO, out, "figure2.png")
    assert status == 128 + signal.SIGTERM, err
    assert listing(out) == ["figure2.png"]                    # results.json comes after
    png = (out / "figure2.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png.endswith(b"IEND\xaeB`\x82")


def test_sigterm_while_a_demo_script_writes_results_json_leaves_it_whole(tmp_path):
    """``python demos/NAME.py`` sets no handler: the held SIGTERM ends it once the file is in place."""
    body = """
from refmeta.demos import maml_sinusoid
pause_before(os, "replace", "results.json")
maml_sinusoid.main(["--fast", "--no-plots", "--out", sys.argv[1]])
"""
    out = tmp_path / "out"
    status, err = sigterm_midway(tmp_path, body, out)
    assert status == -signal.SIGTERM, err
    assert listing(out) == ["results.json"]
    json.loads((out / "results.json").read_text())


def test_sigterm_while_check_with_torch_writes_leaves_whole_files(tmp_path):
    pytest.importorskip("torch")
    body = """
from refmeta import cli
pause_before(os, "replace", "results.json")
sys.exit(cli.main(["demo", "check-with-torch", "--fast", "--no-plots", "--out", sys.argv[1]]))
"""
    out = tmp_path / "out"
    status, err = sigterm_midway(tmp_path, body, out)
    assert status == 128 + signal.SIGTERM, err
    names = listing(out)
    assert [n for n in names if not n.startswith("cases")] == [
        "maml-sinusoid-k1-first-order.theirs.npz", "maml-sinusoid-k1-second-order.theirs.npz",
        "results.json"]
    assert json.loads((out / "results.json").read_text())["all_pass"] is True


def test_sigterm_while_the_benchmarks_write_their_json_leaves_it_whole(tmp_path):
    body = """
import importlib.util
spec = importlib.util.spec_from_file_location("bench", sys.argv[2])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
bench.sinusoid_part = lambda repeats, results: results.update(sinusoid="measured")  # no timing
pause_before(os, "replace", "bench.json")
bench.main(["--only", "sinusoid", "--default-malloc", "--json", sys.argv[1]])
"""
    script = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "bench.py")
    out = tmp_path / "out"
    out.mkdir()
    status, err = sigterm_midway(tmp_path, body, out / "bench.json", script)
    assert status == -signal.SIGTERM, err
    assert listing(out) == ["bench.json"]
    assert json.loads((out / "bench.json").read_text())["sinusoid"] == "measured"


# ----- verify --json -----
def test_sigterm_while_verify_writes_its_report_leaves_it_whole(tmp_path):
    case_id = "maml-sinusoid-k1-first-order"
    cases.export(str(tmp_path / "cases"), [case_id])
    case = tmp_path / "cases" / f"{case_id}.json"
    body = """
from refmeta import cli
pause_before(os, "replace", "report.json")
sys.exit(cli.main(["verify", sys.argv[1], sys.argv[2], "--json", sys.argv[3]]))
"""
    report = tmp_path / "reports" / "report.json"
    report.parent.mkdir()
    status, err = sigterm_midway(tmp_path, body, case, case.with_suffix(".npz"), report)
    assert status == 128 + signal.SIGTERM, err
    assert last_line(err) == "refmeta verify: terminated; no partial report was left"
    assert listing(report.parent) == ["report.json"]
    assert json.loads(report.read_text())["passed"] is True


# ----- cases export -----
def _whole_cases(directory):
    for name in os.listdir(directory):
        assert not name.startswith("."), name
        if name.endswith(".json"):
            assert verify.main(str(directory / name), str(directory / (name[:-5] + ".npz")),
                               out=io.StringIO(), err=io.StringIO()) == 0, name


EXPORT = """
from refmeta import cases
pause_before({PAUSE_IN})
cases.export(sys.argv[1], ["maml-sinusoid-k1-first-order", "reptile-sinusoid-serial"])
"""


def test_sigterm_while_export_moves_cases_in_leaves_whole_cases(tmp_path):
    directory, case_id = tmp_path / "cases", "maml-sinusoid-k1-first-order"
    body = EXPORT.replace("{PAUSE_IN}", f"os, 'replace', '{case_id}.npz'")  # the first case moved in
    status, err = sigterm_midway(tmp_path, body, directory)
    assert status == -signal.SIGTERM, err
    assert listing(directory) == sorted(f"{c}.{ext}" for c in (case_id, "reptile-sinusoid-serial")
                                        for ext in ("json", "npz"))
    _whole_cases(directory)


def test_sigterm_while_export_stages_cases_leaves_the_directory_as_it_was(tmp_path):
    directory = tmp_path / "cases"
    cases.export(str(directory), ["reptile-sinusoid-serial"])
    before = {name: (directory / name).read_bytes() for name in os.listdir(directory)}
    body = EXPORT.replace("{PAUSE_IN}", "cases, '_write', '.npz'")   # the first file staged
    status, err = sigterm_midway(tmp_path, body, directory)
    assert status == -signal.SIGTERM, err
    assert {name: (directory / name).read_bytes() for name in os.listdir(directory)} == before


# ----- data fetch and the Omniglot cache -----
@pytest.mark.parametrize("door", ["api", "cli"])
def test_sigterm_while_fetch_writes_a_zip_leaves_it_whole(tmp_path, door):
    body = {"api": """
from refmeta.data import fetch
pause_before(os, "replace", "images_background_small1.zip")
fetch.fetch_omniglot(sys.argv[1], sys.argv[2], say=lambda line: None)
""", "cli": """
from refmeta import cli
pause_before(os, "replace", "images_background_small1.zip")
sys.exit(cli.main(["data", "fetch", "omniglot", "--dir", sys.argv[1], "--from", sys.argv[2]]))
"""}[door]
    home = tmp_path / "home"
    status, err = sigterm_midway(tmp_path, body, home, omniglot_folder())
    if door == "cli":
        assert status == 128 + signal.SIGTERM
        assert last_line(err) == "refmeta data fetch: terminated; no partial file was left"
    else:
        assert status == -signal.SIGTERM, err
    assert listing(home) == ["omniglot", os.path.join("omniglot", OMNIGLOT_FILES[0])]
    fetched = (home / "omniglot" / OMNIGLOT_FILES[0]).read_bytes()
    assert fetched == (omniglot_folder() / OMNIGLOT_FILES[0]).read_bytes()


def test_sigterm_while_the_omniglot_cache_is_written_leaves_it_whole(tmp_path):
    body = """
from refmeta.data import omniglot
pause_before(os, "replace", ".npz")
omniglot.load_characters(sys.argv[1], image_size=8, cache_dir=sys.argv[2])
"""
    cache = tmp_path / "cache"
    status, err = sigterm_midway(tmp_path, body, omniglot_folder() / "images_background_small2.zip", cache)
    assert status == -signal.SIGTERM, err
    (name,) = listing(cache)
    assert name.startswith("omniglot-") and name.endswith("-8px.npz")
    with np.load(cache / name) as data:
        assert data["images"].shape[-2:] == (8, 8)


def test_the_pause_is_real_sigterm_ends_an_unheld_write_at_once(tmp_path):
    """The harness can fail: a write that does not hold SIGTERM is cut short, its temporary
    file left behind (the bug these tests guard against)."""
    body = """
import tempfile
path = os.path.join(sys.argv[1], "results.json")
with tempfile.NamedTemporaryFile("w", dir=sys.argv[1], delete=False, suffix=".tmp") as f:
    f.write("{}")
pause_before(os, "replace", "results.json")
os.replace(f.name, path)
"""
    out = tmp_path / "out"
    out.mkdir()
    status, _ = sigterm_midway(tmp_path, body, out)
    assert status == -signal.SIGTERM
    (left,) = listing(out)
    assert left.endswith(".tmp")
    assert hashlib.sha256((out / left).read_bytes()).hexdigest() == hashlib.sha256(b"{}").hexdigest()
