"""``refmeta verify`` and its API at the door: the report never lands on a file it must not
replace, pipes and FIFOs are named and never waited on, sizes are bounded by the case's JSON,
and a case's numbers must fit a float64."""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from refmeta import cases
from refmeta.cases import files, verify

CASE_ID = "maml-sinusoid-k1-first-order"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cases")
    cases.export(str(directory), [CASE_ID])
    return directory


@pytest.fixture
def case(exported, tmp_path):
    """(CASE.json, its NPZ, THEIRS.npz holding the reference outputs), copies in tmp_path."""
    for ext in (".json", ".npz"):
        shutil.copy(exported / (CASE_ID + ext), tmp_path / ("case" + ext))
    document, arrays = verify.load_case(str(tmp_path / "case.json"))
    np.savez(tmp_path / "theirs.npz", **{k[8:]: v for k, v in arrays.items() if k.startswith("outputs/")})
    return tmp_path / "case.json", tmp_path / "case.npz", tmp_path / "theirs.npz"


def run_verify(*argv):
    """(status, stdout, stderr) of ``refmeta verify ARGV`` in this process."""
    out, err = io.StringIO(), io.StringIO()
    argv = [str(a) for a in argv]
    json_path = argv[argv.index("--json") + 1] if "--json" in argv else None
    status = verify.main(argv[0], argv[1], out=out, err=err, json_path=json_path)
    return status, out.getvalue(), err.getvalue()


def snapshot(*paths):
    return {str(p): (os.lstat(p).st_mode, p.read_bytes() if p.is_file() else None) for p in paths}


# ----- where --json may write -----
@pytest.mark.parametrize("target, label", [(0, "CASE.json"), (1, "the case's NPZ"), (2, "THEIRS.npz")])
def test_the_report_never_replaces_a_file_verify_reads(case, target, label):
    before = snapshot(*case)
    status, out, err = run_verify(case[0], case[2], "--json", case[target])
    assert (status, out) == (2, "")
    assert err == (f"refmeta verify: --json {case[target]}: is {label}, which this command reads; "
                   "writing there would destroy it\n")
    assert snapshot(*case) == before


def test_the_report_never_replaces_an_input_under_another_name(case, tmp_path):
    os.link(case[0], tmp_path / "hard.json")
    status, _, err = run_verify(case[0], case[2], "--json", tmp_path / "hard.json")
    assert status == 2 and "is CASE.json, which this command reads" in err
    assert verify.load_case(str(case[0]))        # the case still reads


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/null", "folder"])
def test_the_report_never_replaces_a_device_fifo_link_or_folder(case, tmp_path, kind):
    target = tmp_path / "report"
    {"fifo": lambda: os.mkfifo(target), "link to /dev/null": lambda: target.symlink_to(os.devnull),
     "folder": target.mkdir}[kind]()
    before = os.lstat(target).st_mode
    status, out, err = run_verify(case[0], case[2], "--json", target)
    assert (status, out) == (2, "") and err.count("\n") == 1
    assert err.startswith(f"refmeta verify: --json {target}: is a ")
    assert "(refmeta replaces only regular files" in err
    assert os.lstat(target).st_mode == before


def test_dev_null_is_refused_by_the_policy_before_anything_is_written():
    """/dev/null itself goes through the same check as the FIFO above (never written to here)."""
    from refmeta import disk
    assert disk.write_problem(os.devnull) == ("is a character device, not a regular file "
                                              "(refmeta replaces only regular files)")


def test_only_a_new_file_or_an_earlier_report_is_replaced(case, tmp_path):
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    status, _, err = run_verify(case[0], case[2], "--json", notes)
    assert status == 2 and notes.read_text() == '{"mine": 1}'
    assert err == (f"refmeta verify: --json {notes}: exists and is not a refmeta verify report "
                   "(\"format\": \"refmeta.verify/1\"); name a new file, or remove it first\n")
    report = tmp_path / "report.json"
    for _ in range(2):                                         # created, then replaced
        assert run_verify(case[0], case[2], "--json", report)[0] == 0
        assert json.loads(report.read_text())["passed"] is True
    assert sorted(os.listdir(tmp_path)) == ["case.json", "case.npz", "notes.json", "report.json",
                                            "theirs.npz"]


# ----- pipes and FIFOs are named, never waited on -----
def test_theirs_on_a_pipe_is_named_a_pipe(case):
    small = io.BytesIO()
    np.savez(small, meta_loss=np.zeros(()))
    read_end, write_end = os.pipe()
    os.write(write_end, small.getvalue())
    os.close(write_end)
    try:
        status, out, err = run_verify(case[0], f"/dev/fd/{read_end}")
    finally:
        os.close(read_end)
    assert (status, out) == (2, "")
    assert err == (f"refmeta verify: outputs file /dev/fd/{read_end} is a pipe, not a regular file: "
                   "verify reads an NPZ file (numpy.savez(path, **{name: array})) by its path\n")


def refmeta_verify(*argv, timeout=60, env=None):
    return subprocess.run([sys.executable, "-m", "refmeta", "verify", *map(str, argv)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_a_fifo_with_no_writer_is_refused_not_waited_on(case, tmp_path):
    os.mkfifo(tmp_path / "fifo.npz")
    result = refmeta_verify(case[0], tmp_path / "fifo.npz")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"refmeta verify: outputs file {tmp_path / 'fifo.npz'} is a pipe, not a "
                             "regular file: verify reads an NPZ file (numpy.savez(path, "
                             "**{name: array})) by its path\n")
    os.mkfifo(tmp_path / "fifo.json")
    result = refmeta_verify(tmp_path / "fifo.json", case[2])
    assert result.returncode == 2
    assert result.stderr.startswith(f"refmeta verify: case {tmp_path / 'fifo.json'} is a pipe, not a "
                                    "regular file; ")


# ----- sizes: bounded by what the case's JSON says -----
def grow(path, size):
    """Make ``path`` ``size`` bytes long, sparse: no disk space, no memory."""
    with open(path, "r+b") as f:
        f.truncate(size)


@pytest.mark.parametrize("which", ["case NPZ", "outputs file"])
def test_an_npz_far_larger_than_the_case_is_refused_unread(case, which):
    path = case[1] if which == "case NPZ" else case[2]
    grow(path, 64 << 20)
    status, _, err = run_verify(case[0], case[2])
    document = json.loads(case[0].read_text())
    bound, meaning = ((files.npz_size_bound(document), "the arrays its JSON lists need")
                      if which == "case NPZ" else
                      (files.outputs_size_bound(document), "twice the whole case"))
    assert (status, err) == (2, f"refmeta verify: {which} {path} is 67,108,864 bytes, more than "
                                f"{meaning} ({bound:,} bytes); it was not read\n")


def test_a_cases_own_npz_fits_its_bound_with_little_to_spare(exported):
    document = json.loads((exported / f"{CASE_ID}.json").read_text())
    size = os.path.getsize(exported / f"{CASE_ID}.npz")
    n_arrays = len(document["inputs"]) + len(document["outputs"])
    assert size <= files.npz_size_bound(document) <= size + files.NPZ_MEMBER_SLACK * (n_arrays + 1)


MEMORY_LIMITED_VERIFY = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))       # 2 GiB of address space
from refmeta import cli
sys.exit(cli.main(["verify", *sys.argv[1:]]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS bounds memory on Linux")
def test_a_4_gib_case_npz_is_refused_under_a_2_gib_address_space(case):
    grow(case[1], 4 << 30)
    result = subprocess.run([sys.executable, "-c", MEMORY_LIMITED_VERIFY, str(case[0]), str(case[2])],
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"refmeta verify: case NPZ {case[1]} is 4,294,967,296 bytes, ")
    assert result.stderr.count("\n") == 1


# ----- a case's numbers must fit a float64 -----
@pytest.mark.parametrize("value, message", [
    ("1e400", "outputs['meta_loss'] needs \"rtol\": a finite number >= 0; got inf"),
    ("1" + "0" * 400, "outputs['meta_loss']['rtol'] is an integer beyond any float64 "
                      "(its numbers must fit one)"),
    ("1" + "0" * 5000, "is not valid JSON: Exceeds the limit (4300 digits) for integer string "
                       "conversion: value has 5001 digits"),
])
def test_a_tolerance_beyond_float64_is_one_line(case, value, message):
    document = json.loads(case[0].read_text())
    document["outputs"]["meta_loss"]["rtol"] = "RTOL"
    case[0].write_text(json.dumps(document).replace('"RTOL"', value))
    result = refmeta_verify(case[0], case[2])
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr, result.stderr


# ----- the Python API -----
@pytest.mark.parametrize("partial", ["False", 0, None, np.array([True])])
def test_check_refuses_a_partial_that_is_not_a_bool(case, partial):
    with pytest.raises(TypeError, match=r"partial must be True or False; got "):
        verify.check(case[0], str(case[2]), partial=partial)
    with pytest.raises(TypeError, match=r"partial must be True or False; got "):
        verify.assert_matches(case[0], str(case[2]), partial=partial)
    assert verify.check(case[0], str(case[2]), partial=np.bool_(False)).passed


@pytest.mark.parametrize("case_path", [None, 3, ["case.json"]])
def test_check_says_what_a_case_path_must_be(case, case_path):
    with pytest.raises(TypeError) as raised:
        verify.check(case_path, str(case[2]))
    assert str(raised.value) == ("case_path must be the path of a case's JSON (a str or "
                                 f"os.PathLike); got {type(case_path).__name__}")
