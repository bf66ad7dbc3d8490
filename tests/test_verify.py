"""``refmeta verify``: the comparison rule, the table, and every kind of bad input."""

import io
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from refmeta import cases
from refmeta.cases import files, verify

CASE_ID = "maml-sinusoid-k1-second-order"
CONV_ID = "maml-conv4-bn-5way1shot-first-order"
REPTILE_ID = "reptile-sinusoid-serial"


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cases")
    cases.export(str(directory), [CASE_ID, REPTILE_ID, CONV_ID])
    return directory


@pytest.fixture
def case(case_dir):
    """(json path, {output name: reference array}, document) of the exported sinusoid case."""
    path = str(case_dir / f"{CASE_ID}.json")
    document, arrays = verify.load_case(path)
    return path, {k[8:]: v for k, v in arrays.items() if k.startswith("outputs/")}, document


def run_verify(case_path, theirs_path):
    out, err = io.StringIO(), io.StringIO()
    status = verify.main(str(case_path), str(theirs_path), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def save(path, arrays):
    np.savez(path, **arrays)
    return path


def toy_case(directory, reference, name="toy"):
    """A hand-made case with one output ``y`` (NaN allowed) and an input ``x``; its JSON path."""
    built = {"algorithm": "toy", "description": "y", "seed": 0, "model": {}, "loss": {},
             "conventions": {}, "hyperparameters": {}, "procedure": [],
             "inputs": {"x": cases.Array(np.zeros(2), "x")},
             "outputs": {"y": cases.Array(np.asarray(reference, float), "y", rtol=1e-10, atol=1e-12)}}
    text, npz = cases.encode(name, built)
    (directory / f"{name}.npz").write_bytes(npz)
    (directory / f"{name}.json").write_text(text)
    return directory / f"{name}.json"


# ----- the comparison -----
def test_a_cases_own_npz_verifies(case_dir):
    for name in (CASE_ID, REPTILE_ID, CONV_ID):
        status, out, err = run_verify(case_dir / f"{name}.json", case_dir / f"{name}.npz")
        assert status == 0 and err == "" and out.rstrip().endswith("outputs pass")


def test_the_table_has_a_row_per_output_and_passes_within_tolerance(case, tmp_path):
    path, reference, document = case
    inside = {n: r + 0.5 * (document["outputs"][n]["atol"] + 1e-10 * np.abs(r))
              for n, r in reference.items()}
    status, out, _ = run_verify(path, save(tmp_path / "theirs.npz", inside))
    assert status == 0
    lines = out.splitlines()
    assert lines[1].split() == ["output", "shape", "max", "abs", "err", "max", "rel", "err", "rtol",
                                "atol", "result"]
    for name in reference:
        row = next(line for line in lines if line.startswith(name + " "))
        assert row.split()[-1] == "pass"
    assert lines[-1] == f"all {len(reference)} outputs pass"


def test_one_element_just_outside_tolerance_fails_and_is_named(case, tmp_path):
    path, reference, document = case
    theirs = dict(reference)
    name = "meta_gradient/dense1.w"
    entry = document["outputs"][name]
    bumped = reference[name].copy()
    bumped[3, 7] += 2 * (entry["atol"] + entry["rtol"] * abs(bumped[3, 7]))
    theirs[name] = bumped
    status, out, _ = run_verify(path, save(tmp_path / "theirs.npz", theirs))
    assert status == 1
    row = next(line for line in out.splitlines() if line.startswith(name + " "))
    assert row.split()[-1] == "FAIL"
    assert f"{name}: worst at [3, 7]" in out
    assert f"FAILED: {len(reference) - 1} of {len(reference)} outputs pass" in out


def test_max_abs_and_max_rel_errors_are_computed_as_documented():
    reference = np.array([1.0, -2.0, 0.0, 4.0])
    theirs = np.array([1.0 + 1e-12, -2.0 - 4e-12, 0.0, 4.0])
    max_abs, max_rel, passed, worst = verify.compare(reference, theirs, rtol=1e-10, atol=0.0)
    assert max_abs == pytest.approx(4e-12, rel=1e-3) and max_rel == pytest.approx(2e-12, rel=1e-3)
    assert passed and worst is None
    assert verify.compare(np.zeros(2), np.array([0.0, 1e-13]), 1e-10, 1e-12)[1] == np.inf


def test_nan_fails_unless_the_reference_has_nan_at_the_same_place(tmp_path):
    path = toy_case(tmp_path, [1.0, np.nan, 3.0])
    for theirs, expected in (([1.0, np.nan, 3.0], 0), ([1.0, 2.0, 3.0], 1), ([np.nan, np.nan, 3.0], 1),
                             ([1.0, np.nan, np.nan], 1)):
        status, out, _ = run_verify(path, save(tmp_path / "t.npz", {"y": np.array(theirs)}))
        assert status == expected, (theirs, out)
    status, out, _ = run_verify(toy_case(tmp_path, [1.0, 2.0], "plain"),
                                save(tmp_path / "t.npz", {"y": np.array([1.0, np.nan])}))
    assert status == 1 and "NaN at 1 place(s)" in out


def test_infinities_pass_only_against_the_same_infinity(tmp_path):
    path = toy_case(tmp_path, [np.inf, -np.inf, 1.0])
    assert run_verify(path, save(tmp_path / "t.npz", {"y": np.array([np.inf, -np.inf, 1.0])}))[0] == 0
    assert run_verify(path, save(tmp_path / "t.npz", {"y": np.array([np.inf, np.inf, 1.0])}))[0] == 1
    assert run_verify(path, save(tmp_path / "t.npz", {"y": np.array([1e308, -np.inf, 1.0])}))[0] == 1


floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


@given(data=st.data(), rtol=st.sampled_from([0.0, 1e-10, 1e-3]), atol=st.sampled_from([0.0, 1e-12, 1.0]))
def test_pass_is_numpy_isclose_with_equal_nan(data, rtol, atol):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=2, max_side=4))
    reference = data.draw(hnp.arrays(np.float64, shape, elements=floats))
    steps = st.sampled_from([0.0, 1e-13, 1e-11, 1e-4, 1.0, np.nan])
    noise = data.draw(hnp.arrays(np.float64, shape, elements=steps))
    with np.errstate(all="ignore"):
        theirs = np.where(np.isnan(noise), np.nan, reference + noise * np.abs(reference) + noise)
    expected = bool(np.isclose(theirs, reference, rtol=rtol, atol=atol, equal_nan=True).all())
    assert verify.compare(reference, theirs, rtol, atol)[2] == expected


# ----- missing, extra, misshapen, non-float outputs -----
@pytest.mark.parametrize("change, message", [
    (lambda t: t.pop("meta_gradient/dense0.w"), "missing output 'meta_gradient/dense0.w'"),
    (lambda t: t.update(bonus=np.zeros(3)), "extra array 'bonus'"),
    (lambda t: t.update({"meta_loss": np.zeros((1,))}), "output 'meta_loss' has shape (1,); expected ()"),
    (lambda t: t.update({"query_loss": t["query_loss"].T[None]}), "output 'query_loss' has shape (1, 5)"),
    (lambda t: t.update({"query_loss": np.arange(5)}),
     "must hold real floating-point numbers; got dtype int64"),
    (lambda t: t.update({"query_loss": np.ones(5, bool)}), "got dtype bool"),
    (lambda t: t.update({"query_loss": np.ones(5, complex)}), "got dtype complex128"),
    (lambda t: t.update({"query_loss": np.array(["a"] * 5)}), "got dtype <U1"),
])
def test_structural_problems_fail_with_a_clear_message(case, tmp_path, change, message):
    path, reference, _ = case
    theirs = dict(reference)
    change(theirs)
    status, out, err = run_verify(path, save(tmp_path / "theirs.npz", theirs))
    assert status == 1
    assert message in err and "Traceback" not in err
    assert "FAILED" in out


def test_an_object_array_is_refused_without_unpickling(case, tmp_path):
    path, reference, _ = case
    theirs = dict(reference, query_loss=np.array([{"a": 1}] * 5, dtype=object))
    np.savez(tmp_path / "theirs.npz", **theirs)                  # pickles the object array
    status, _, err = run_verify(path, tmp_path / "theirs.npz")
    assert status == 1 and "'query_loss' must hold real floating-point numbers; got dtype object" in err


# ----- a case or an outputs file that cannot be read: exit 2 -----
def copy_case(case_dir, tmp_path, edit=None, text=None):
    """A copy of the sinusoid case in tmp_path, its JSON edited by ``edit(document)`` or replaced."""
    document = json.loads((case_dir / f"{CASE_ID}.json").read_text())
    if edit is not None:
        edit(document)
    path = tmp_path / "case.json"
    path.write_text(text if text is not None else json.dumps(document))
    (tmp_path / "case.npz").write_bytes((case_dir / f"{CASE_ID}.npz").read_bytes())
    return path


@pytest.mark.parametrize("edit, text, message", [
    (None, '{"format": "refmeta.case/1", ', "is not valid JSON"),
    (None, "[1, 2]", "is not a refmeta case: no \"format\" key"),
    (lambda d: d.update(format="refmeta.case/2"), None,
     "has format 'refmeta.case/2'; this refmeta reads 'refmeta.case/1'"),
    (lambda d: d.pop("format"), None, "no \"format\" key"),
    (lambda d: d.pop("outputs"), None, "missing key(s) outputs"),
    (lambda d: d["outputs"]["meta_loss"].update(shape="()"), None, "outputs['meta_loss'] needs \"shape\""),
    (lambda d: d["outputs"]["meta_loss"].update(rtol=-1), None, "needs \"rtol\": a finite number >= 0"),
    (lambda d: d["outputs"]["meta_loss"].pop("atol"), None, "needs \"atol\""),
    (lambda d: d["inputs"]["support_x"].update(dtype="float32"), None, "needs \"dtype\": \"float64\""),
    (lambda d: d["outputs"].update(extra={"shape": [], "dtype": "float64", "meaning": "",
                                          "rtol": 0, "atol": 0}),
     None, "does not match its JSON: missing ['outputs/extra']"),
    (lambda d: d.update(npz_sha256="0" * 64), None, "does not belong to"),
])
def test_a_malformed_case_is_an_error_not_a_traceback(case_dir, case, tmp_path, edit, text, message):
    path = copy_case(case_dir, tmp_path, edit, text)
    status, out, err = run_verify(path, case_dir / f"{CASE_ID}.npz")
    assert status == 2 and message in err, err
    assert out == ""


def test_an_npz_that_disagrees_with_its_json_is_an_error(case_dir, tmp_path):
    path = copy_case(case_dir, tmp_path, lambda d: d.pop("npz_sha256"))
    with np.load(tmp_path / "case.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["outputs/meta_loss"] = np.zeros(2)
    np.savez(tmp_path / "case.npz", **arrays)
    status, _, err = run_verify(path, tmp_path / "case.npz")
    assert status == 2 and "outputs/meta_loss is float64 (2,); the JSON says float64 ()" in err


def test_missing_and_unreadable_files_are_errors(case_dir, tmp_path):
    path = copy_case(case_dir, tmp_path)
    os.remove(tmp_path / "case.npz")
    status, _, err = run_verify(path, case_dir / f"{CASE_ID}.npz")
    assert status == 2 and "has no NPZ: expected" in err and "case.npz" in err
    status, _, err = run_verify(tmp_path / "nowhere.json", case_dir / f"{CASE_ID}.npz")
    assert status == 2 and "cannot read case" in err
    good = case_dir / f"{CASE_ID}.json"
    status, _, err = run_verify(good, tmp_path / "missing.npz")
    assert status == 2 and "cannot read outputs file" in err
    (tmp_path / "text.npz").write_text("not a zip")
    status, _, err = run_verify(good, tmp_path / "text.npz")
    assert status == 2 and "is not an NPZ file" in err
    np.save(tmp_path / "one.npy", np.zeros(3))
    status, _, err = run_verify(good, tmp_path / "one.npy")
    assert status == 2 and "single .npy array, not an NPZ" in err


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def write_zip(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def absurd_header(shape=(10**6, 10**6)):
    """A .npy header declaring a float64 array of ``shape`` (8 TB), followed by 8 bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return header.getvalue() + bytes(8)


NOT_ARRAYS = {
    "text named .npy": ({"meta_loss.npy": b"0.25\n"}, "member 'meta_loss.npy' is not a NumPy array"),
    "a pickle named .npy": ({"meta_loss.npy": pickle.dumps({"meta_loss": 0.25})},
                            "member 'meta_loss.npy' is not a NumPy array"),
    "a text file": ({"meta_loss.npy": npy_bytes(np.zeros(())), "notes.txt": b"hi"},
                    "member 'notes.txt' is not a .npy array"),
    "a broken header": ({"meta_loss.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': 1"},
                        "member 'meta_loss.npy' has no readable .npy header"),
    "data cut short": ({"meta_loss.npy": npy_bytes(np.zeros(4))[:-8]},
                       "declares a float64 array of shape (4,) (32 bytes) but holds 24 bytes"),
    "an absurd header": ({"meta_loss.npy": absurd_header()},
                         "declares a float64 array of shape (1000000, 1000000) (8000000000000 bytes) "
                         "but holds 8 bytes"),
}


@pytest.mark.parametrize("kind", list(NOT_ARRAYS))
def test_an_npz_whose_members_are_not_arrays_is_refused_in_one_line(case, tmp_path, monkeypatch, kind):
    members, message = NOT_ARRAYS[kind]
    loads = []
    real_read_array = np.lib.format.read_array
    monkeypatch.setattr(np.lib.format, "read_array",
                        lambda f, **kw: loads.append(f.name) or real_read_array(f, **kw))
    status, out, err = run_verify(case[0], write_zip(tmp_path / "theirs.npz", members))
    assert status == 2 and message in err and out == ""
    assert err.count("\n") == 1 and err.startswith("refmeta verify: outputs file ")
    if kind in ("an absurd header", "data cut short", "a broken header"):
        assert "meta_loss.npy" not in loads     # refused by its header alone: nothing allocated


def test_an_absurd_header_in_the_case_npz_is_refused_too(case_dir, tmp_path):
    path = copy_case(case_dir, tmp_path, lambda d: d.pop("npz_sha256"))
    with np.load(tmp_path / "case.npz") as f:
        members = {key + ".npy": npy_bytes(f[key]) for key in f.files}
    members["outputs/meta_loss.npy"] = absurd_header((10**9,))
    write_zip(tmp_path / "case.npz", members)
    status, _, err = run_verify(path, case_dir / f"{CASE_ID}.npz")
    assert status == 2 and "case NPZ" in err and "declares a float64 array of shape (1000000000,)" in err


def test_a_deeply_nested_json_is_refused_without_a_recursion_error(case_dir, tmp_path):
    for depth in (verify.MAX_JSON_DEPTH + 1, 100_000):
        (tmp_path / "deep.json").write_text("[" * depth + "]" * depth)
        status, out, err = run_verify(tmp_path / "deep.json", case_dir / f"{CASE_ID}.npz")
        assert status == 2 and f"nests arrays and objects more than {verify.MAX_JSON_DEPTH} deep" in err
        assert err.count("\n") == 1 and out == ""
    assert files._nesting_depth('{"a": [1, {"b": "[[[{\\"}"}]}') == 3    # brackets in strings skipped
    (tmp_path / "shallow.json").write_text("[" * verify.MAX_JSON_DEPTH + "]" * verify.MAX_JSON_DEPTH)
    assert "is not a refmeta case" in run_verify(tmp_path / "shallow.json", case_dir / f"{CASE_ID}.npz")[2]


def test_swapped_arguments_are_named_as_such(case_dir):
    status, _, err = run_verify(case_dir / f"{CASE_ID}.npz", case_dir / f"{CASE_ID}.json")
    assert status == 2 and "is an NPZ or .npy file, not a case's JSON: the arguments are CASE.json THEIRS.npz" in err


def test_the_command_line_prints_messages_and_never_a_traceback(case_dir, tmp_path):
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    np.savez(tmp_path / "theirs.npz", meta_loss=np.zeros(()))
    write_zip(tmp_path / "huge.npz", {"meta_loss.npy": absurd_header()})
    good, theirs = str(case_dir / f"{CASE_ID}.json"), str(tmp_path / "theirs.npz")
    for argv, status in (([str(tmp_path / "bad.json"), theirs], 2),
                         ([str(tmp_path / "deep.json"), theirs], 2),
                         ([str(tmp_path / "missing.json"), theirs], 2),
                         ([good, str(tmp_path / "huge.npz")], 2),
                         ([theirs, good], 2),
                         ([good, theirs], 1),
                         ([good, str(case_dir / f"{CASE_ID}.npz")], 0)):
        result = subprocess.run([sys.executable, "-m", "refmeta", "verify", *argv],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == status, result.stderr
        assert "Traceback" not in result.stderr
        assert status == 0 or result.stderr.startswith("refmeta verify: ")
        assert status != 2 or len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.parametrize("argv", [["verify", "CASE", "THEIRS"], ["cases", "list"]])
def test_a_reader_that_goes_away_is_no_traceback(case_dir, tmp_path, argv):
    """`refmeta verify … | head`: stdout is a pipe whose reader has gone, so every write fails
    with EPIPE; the command stops quietly with the shell's SIGPIPE status, 141."""
    reference = {k[len("outputs/"):]: v for k, v in verify.load_case(
        str(case_dir / f"{CONV_ID}.json"))[1].items() if k.startswith("outputs/")}
    theirs = save(tmp_path / "theirs.npz", {n: 1.001 * r for n, r in reference.items()})
    argv = [str(case_dir / f"{CONV_ID}.json") if a == "CASE" else str(theirs) if a == "THEIRS"
            else a for a in argv]
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run([sys.executable, "-m", "refmeta", *argv], stdout=write,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert result.returncode == 141 and result.stderr == ""


# ----- likely causes: each found on a real case, and never on a plain wrong answer -----
def reference_outputs(case_dir, case_id):
    """(json path, {output name: reference array}) of an exported case."""
    path = str(case_dir / f"{case_id}.json")
    _, arrays = verify.load_case(path)
    return path, {k[len("outputs/"):]: v for k, v in arrays.items() if k.startswith("outputs/")}


def run_cli(capsys, argv):
    """``refmeta verify ARGV`` through refmeta.cli.main: (status, stdout, stderr)."""
    from refmeta import cli
    status = cli.main(["verify", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def causes(out, name, what="likely cause"):
    """The messages of the ``what (outputs): message`` lines whose outputs cover ``name`` (each
    cause is printed once, with the outputs it covers: ``group/*`` is every output of a group,
    ``group/{a, b}`` some of them)."""
    found = []
    for line in out.splitlines():
        matched = re.match(rf"{what} \((.*?)\): (.*)$", line)
        if matched:
            listed = re.sub(r"([^\s,]+)/\{([^}]*)\}", lambda group: ", ".join(
                f"{group.group(1)}/{member}" for member in group.group(2).split(", ")), matched.group(1))
            covered = listed.split(", ")
            if name in covered or any(c.endswith("/*") and name.startswith(c[:-1]) for c in covered):
                found.append(matched.group(2))
    return found


def diagnoses(report):
    return {r.name: r.diagnoses for r in report.outputs if r.diagnoses}


def test_a_sum_over_tasks_is_named_as_the_factor_T(case_dir, tmp_path, capsys):
    path, reference = reference_outputs(case_dir, CASE_ID)
    theirs = {n: 5.0 * r if n == "meta_loss" or n.startswith("meta_gradient/") else r
              for n, r in reference.items()}
    status, out, _ = run_cli(capsys, [path, save(tmp_path / "theirs.npz", theirs)])
    assert status == 1
    for name in ("meta_loss", "meta_gradient/dense1.w", "meta_gradient/dense2.b"):
        assert causes(out, name) == ["theirs = 5.000 × reference: T = the number of tasks (5): sum "
                                     "vs mean over tasks (this case: task_reduction 'mean')"]
    # said once, with the outputs it covers
    assert out.count("sum vs mean over tasks") == 1 and "likely cause (meta_loss, meta_gradient/*): " in out
    found = diagnoses(verify.check(path, theirs))
    assert set(found) == {n for n in reference if n == "meta_loss" or n.startswith("meta_gradient/")}
    for (diagnosis,) in found.values():
        assert diagnosis.kind == "factor" and diagnosis.details["matches"] == ["T"]
        assert diagnosis.details["factor"] == pytest.approx(5.0, rel=1e-12)
    # the reciprocal, the sign, and a factor that is none of the case's sizes
    for factor, expected in ((0.2, "theirs = 0.2000 × reference: 1/T = one over the number of tasks (5)"),
                             (-1.0, "theirs = −1.000 × reference: −1 = the sign"),
                             (0.3, "theirs = 0.3000 × reference: none of the case's sizes or their "
                                   "reciprocals (T = 5, ")):
        report = verify.check(path, dict(reference, **{"meta_gradient/dense1.w":
                                                       factor * reference["meta_gradient/dense1.w"]}))
        (diagnosis,) = diagnoses(report)["meta_gradient/dense1.w"]
        assert diagnosis.message.startswith(expected), diagnosis.message


def test_n_times_mean_cross_entropy_is_named_as_the_factor_N(case_dir):
    path, reference = reference_outputs(case_dir, CONV_ID)
    report = verify.check(path, dict(reference, support_loss=reference["support_loss"] / 5))
    (diagnosis,) = diagnoses(report)["support_loss"]
    assert diagnosis.message.startswith(
        "theirs = 0.2000 × reference: 1/N = one over the number of classes (5): N × mean "
        "cross-entropy vs the plain mean (this case: inner_reduction 'n_way_times_mean')")
    # a wrong inner loss changes the steps after the first: only column 0 is a clean factor
    support_loss = reference["support_loss"].copy()
    support_loss[:, 0] /= 5
    support_loss[:, 1] += 0.1
    (diagnosis,) = diagnoses(verify.check(path, dict(reference, support_loss=support_loss)))["support_loss"]
    assert diagnosis.message.startswith("in column 0, the losses before the first inner step, "
                                        "theirs = 0.2000 × reference: 1/N")
    assert diagnosis.details["column"] == 0


def test_a_transposed_dense_weight_is_named(case_dir, tmp_path, capsys):
    path, reference = reference_outputs(case_dir, CASE_ID)
    theirs = dict(reference)
    theirs["meta_gradient/dense1.w"] = reference["meta_gradient/dense1.w"].T          # (40, 40)
    theirs["meta_gradient/dense0.w"] = reference["meta_gradient/dense0.w"].T          # (40, 1)
    theirs["adapted_step1/dense1.w"] = reference["adapted_step1/dense1.w"].transpose(0, 2, 1)
    status, out, err = run_cli(capsys, [path, save(tmp_path / "theirs.npz", theirs)])
    assert status == 1
    linear = "torch nn.Linear stores (out, in); refmeta's dense weights are (in, out)"
    (cause,) = causes(out, "meta_gradient/dense1.w")
    assert cause.startswith("matches if transposed (axes 1, 0)") and linear in cause
    assert "output 'meta_gradient/dense0.w' has shape (40, 1); expected (1, 40)" in err  # as before
    assert "  meta_gradient/dense0.w: shape (40, 1); the case's is (1, 40)" in out.splitlines()
    (shaped,) = causes(out, "meta_gradient/dense0.w")
    assert shaped == cause                    # one line covers both transposed weights
    (permuted,) = causes(out, "adapted_step1/dense1.w")
    assert "matches with its axes permuted (axes 0, 2, 1)" in permuted and linear in permuted
    # the axes reported undo the change: a second path to the reference
    for name, (diagnosis,) in diagnoses(verify.check(path, theirs)).items():
        undone = np.transpose(theirs[name], diagnosis.details["axes"])
        np.testing.assert_array_equal(undone, reference[name])


def test_conv_kernels_in_hwio_are_named(case_dir):
    path, reference = reference_outputs(case_dir, CONV_ID)
    theirs = dict(reference)
    theirs["meta_gradient/conv1.w"] = reference["meta_gradient/conv1.w"].transpose(2, 3, 1, 0)
    theirs["adapted_step1/conv2.w"] = reference["adapted_step1/conv2.w"].transpose(0, 3, 4, 2, 1)
    theirs["meta_gradient/out.w"] = reference["meta_gradient/out.w"].T
    found = diagnoses(verify.check(path, theirs))
    assert set(found) == {"meta_gradient/conv1.w", "adapted_step1/conv2.w", "meta_gradient/out.w"}
    for name in ("meta_gradient/conv1.w", "adapted_step1/conv2.w"):
        (diagnosis,) = found[name]
        assert "theirs is HWIO (haiku, flax and TensorFlow); refmeta's conv kernels are OIHW" \
            in diagnosis.message
        np.testing.assert_array_equal(np.transpose(theirs[name], diagnosis.details["axes"]),
                                      reference[name])
    assert found["meta_gradient/conv1.w"][0].details["axes"] == [3, 2, 0, 1]
    assert "torch nn.Linear stores (out, in)" in found["meta_gradient/out.w"][0].message


def test_one_wrong_task_is_named_task_by_task(case_dir, tmp_path, capsys):
    path, reference = reference_outputs(case_dir, CASE_ID)
    theirs = dict(reference)
    for name in ("support_loss", "query_loss", "adapted_step1/dense0.w", "adapted_step1/dense1.b"):
        theirs[name] = reference[name].copy()
        theirs[name][2] *= 1 + 1e-6
    status, out, _ = run_cli(capsys, [path, save(tmp_path / "theirs.npz", theirs),
                                      "--json", tmp_path / "report.json"])
    assert status == 1
    for name in ("support_loss", "query_loss", "adapted_step1/dense0.w", "adapted_step1/dense1.b"):
        assert causes(out, name, "by task") == ["task 2 fails; tasks 0, 1, 3, 4 pass"]
    assert ("likely cause: in the 4 failing output(s) with a task axis only task 2 fails; "
            "tasks 0, 1, 3, 4 pass in all of them") in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["outputs"]["query_loss"]["tasks"] == [True, True, False, True, True]
    assert report["outputs"]["adapted_step1/dense2.w"]["tasks"] == [True] * 5
    assert report["outputs"]["meta_loss"]["tasks"] is None          # no task axis


def test_only_the_first_task_right_points_at_state_carried_between_tasks(case_dir):
    path, reference = reference_outputs(case_dir, REPTILE_ID)
    theirs = dict(reference)
    for name, r in reference.items():
        if name.startswith(("task_start/", "adapted_step", "inner_loss")):
            theirs[name] = np.concatenate([r[:1], r[1:] * (1 + 1e-4)])
    report = verify.check(path, theirs)
    (note,) = report.notes
    assert note.kind == "tasks" and note.details == {"failing": [1, 2], "passing": [0]}
    assert "only the first task is right, so something carries over from one task to the next" \
        in note.message
    assert causes(report.text(), "task_start/dense0.w", "by task") == ["tasks 1, 2 fail; task 0 passes"]


@pytest.mark.parametrize("case_id", [CASE_ID, CONV_ID])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_float32_arithmetic_is_named_with_the_float64_switches(case_dir, tmp_path, capsys, dtype,
                                                               case_id):
    path, reference = reference_outputs(case_dir, case_id)
    theirs = {n: r.astype(np.float32).astype(dtype) for n, r in reference.items()}
    status, out, _ = run_cli(capsys, [path, save(tmp_path / "theirs.npz", theirs)])
    assert status == 1
    (line,) = [line for line in out.splitlines() if line.startswith("likely cause")]
    assert "float32 precision, and the cases are float64" in line
    assert "torch.set_default_dtype(torch.float64)" in line and "jax_enable_x64" in line
    assert "by task" not in out                       # the one cause explains every failure
    assert ("note: theirs holds float32 arrays" in out) == (dtype == np.float32)
    report = verify.check(path, theirs)
    assert {d.kind for ds in diagnoses(report).values() for d in ds} == {"float32"}


@pytest.mark.parametrize("case_id", [CASE_ID, REPTILE_ID, CONV_ID])
@pytest.mark.parametrize("level", [1e-3, 1e-1])
def test_a_plain_wrong_answer_gets_no_diagnosis(case_dir, tmp_path, capsys, case_id, level):
    path, reference = reference_outputs(case_dir, case_id)
    rng = np.random.default_rng(7)
    theirs = {n: r * (1 + level * rng.standard_normal(r.shape)) for n, r in reference.items()}
    status, out, _ = run_cli(capsys, [path, save(tmp_path / "theirs.npz", theirs),
                                      "--json", tmp_path / "report.json"])
    assert status == 1 and "FAIL" in out
    assert "likely cause" not in out and "by task" not in out and "note:" not in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["notes"] == [] and all(o["diagnoses"] == [] for o in report["outputs"].values())


def test_noise_just_outside_the_tolerance_is_no_factor_and_no_float32(case_dir):
    path, reference = reference_outputs(case_dir, CASE_ID)
    document, _ = verify.load_case(path)
    rng = np.random.default_rng(3)
    allowed = {n: document["outputs"][n]["atol"] + 1e-10 * np.abs(r) for n, r in reference.items()}
    theirs = {n: r + 3 * allowed[n] * rng.choice([-1.0, 1.0], r.shape) for n, r in reference.items()}
    report = verify.check(path, theirs)
    assert not report.passed and report.notes == [] and diagnoses(report) == {}


# ----- toy cases in memory: the factor and the permutation over many shapes -----
def toy_in_memory(reference, hyperparameters=None):
    built = {"algorithm": "toy", "description": "y", "seed": 0, "model": {}, "loss": {},
             "conventions": {}, "hyperparameters": hyperparameters or {}, "procedure": [],
             "inputs": {"x": cases.Array(np.zeros(2), "x")},
             "outputs": {"y": cases.Array(reference, "y", rtol=1e-10, atol=1e-12)}}
    text, npz = cases.encode("toy", built)
    with np.load(io.BytesIO(npz)) as f:
        return json.loads(text), {key: f[key] for key in f.files}


@given(data=st.data())
def test_any_constant_factor_is_recovered_and_named_only_when_it_is_a_case_size(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    reference = rng.standard_normal(data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=2,
                                                               max_side=4)))
    sizes = {"−1": -1.0, "T": 7.0, "1/T": 1 / 7, "N": 3.0, "1/N": 1 / 3}
    c = data.draw(st.sampled_from(sorted(sizes.values()))
                  | st.floats(-20, 20).filter(lambda c: abs(c) > 1e-3 and abs(c - 1) > 1e-3))
    document, arrays = toy_in_memory(reference, {"n_tasks": 7, "n_way": 3})
    (diagnosis,) = verify.build_report(document, arrays, {"y": c * reference}).outputs[0].diagnoses
    assert diagnosis.kind == "factor" and diagnosis.details["factor"] == pytest.approx(c, rel=1e-12)
    assert diagnosis.details["matches"] == [s for s, v in sizes.items() if abs(c / v - 1) < 1e-9]


@given(data=st.data())
def test_a_permuted_array_is_found_with_axes_that_undo_it(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    reference = rng.standard_normal(data.draw(hnp.array_shapes(min_dims=2, max_dims=4, max_side=4)))
    theirs = np.transpose(reference, data.draw(st.permutations(range(reference.ndim))))
    document, arrays = toy_in_memory(reference)
    result = verify.build_report(document, arrays, {"y": theirs}).outputs[0]
    if theirs.shape == reference.shape and np.array_equal(theirs, reference):
        assert result.status == "pass" and result.diagnoses == []
        return
    (diagnosis,) = result.diagnoses
    if diagnosis.kind == "permuted":
        np.testing.assert_array_equal(np.transpose(theirs, diagnosis.details["axes"]), reference)
    else:     # only axes of length 1 moved: the same numbers in another shape
        assert diagnosis.kind == "reshaped" and theirs.shape != reference.shape
        np.testing.assert_array_equal(theirs.reshape(reference.shape), reference)


@given(data=st.data())
def test_random_relative_errors_get_no_diagnosis(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    reference = rng.standard_normal(data.draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)))
    level = data.draw(st.sampled_from([1e-4, 1e-2, 0.5]))
    relative = level * rng.choice([-1.0, 1.0], reference.shape) * rng.uniform(1, 2, reference.shape)
    document, arrays = toy_in_memory(reference, {"n_tasks": 7, "n_way": 3})
    report = verify.build_report(document, arrays, {"y": reference * (1 + relative)})
    assert report.outputs[0].status == "fail"
    assert report.outputs[0].diagnoses == [] and report.notes == []


def test_rounding_noise_gets_no_claim():
    """An output that is 0 in exact arithmetic carries only rounding noise: a huge "factor"
    between two noises means nothing, and the case's structurally_zero marker says so."""
    rng = np.random.default_rng(5)
    reference = 1e-16 * rng.standard_normal(8)
    theirs = {"y": -1e6 * reference}
    document, arrays = toy_in_memory(reference)
    (diagnosis,) = verify.build_report(document, arrays, theirs).outputs[0].diagnoses
    assert diagnosis.kind == "factor"                     # unmarked, the claim is made
    # unrelated noise of another computation: theirs / c lands under atol for a huge c, but
    # c · reference does not reproduce theirs, so no factor is claimed even unmarked
    unrelated = {"y": 1e-9 * rng.standard_normal(8)}
    result = verify.build_report(document, arrays, unrelated).outputs[0]
    assert result.status == "fail" and result.diagnoses == []
    document["outputs"]["y"]["structurally_zero"] = "0 in exact arithmetic"
    result = verify.build_report(document, arrays, theirs).outputs[0]
    assert result.status == "fail" and result.diagnoses == []


def test_float32_needs_errors_small_against_the_outputs_magnitude_too():
    """A 1e-3 relative error in an output whose atol is large against its values is only a few
    times the allowed error, as float32 would be, but far above float32's 1e-5 of the values."""
    rng = np.random.default_rng(11)
    reference = 1e-7 * rng.standard_normal((20, 80)) ** 3
    theirs = {"y": reference * (1 + 1e-3 * rng.standard_normal(reference.shape))}
    document, arrays = toy_in_memory(reference)
    document["outputs"]["y"]["atol"] = 1e-10
    report = verify.build_report(document, arrays, theirs)
    worst = verify.compare(reference, theirs["y"], 1e-10, 1e-10)[3]
    assert 30 < abs(worst[1] - worst[2]) / worst[3] < 1e5          # inside the allowed-error window
    assert report.outputs[0].status == "fail" and report.notes == [] and diagnoses(report) == {}


# ----- --partial -----
def test_partial_compares_only_the_outputs_present(case_dir, tmp_path, capsys):
    path, reference = reference_outputs(case_dir, CASE_ID)
    adapted = {n: r for n, r in reference.items() if n.startswith("adapted_step1/")}
    theirs = save(tmp_path / "theirs.npz", adapted)
    status, out, err = run_cli(capsys, [path, theirs, "--partial"])
    assert status == 0 and err == ""
    skipped = [n for n in reference if n not in adapted]
    assert f"not compared (--partial): {', '.join(skipped)}" in out
    assert out.rstrip().endswith("all 6 compared outputs pass (--partial; 15 of 21 not compared)")
    status, _, err = run_cli(capsys, [path, theirs])                 # without it: missing outputs
    assert status == 1 and err.count("missing output") == 15
    # one output present and wrong fails; so does an extra array, or none of the case's outputs
    wrong = dict(adapted, **{"adapted_step1/dense0.b": adapted["adapted_step1/dense0.b"] + 1e-3})
    status, out, _ = run_cli(capsys, [path, save(tmp_path / "wrong.npz", wrong), "--partial"])
    assert status == 1 and "FAILED: 5 of 6 outputs present in" in out
    status, _, err = run_cli(capsys, [path, save(tmp_path / "extra.npz", dict(adapted, bonus=np.zeros(2))),
                                      "--partial"])
    assert status == 1 and "extra array 'bonus'" in err
    status, _, err = run_cli(capsys, [path, save(tmp_path / "none.npz", {"bonus": np.zeros(2)}),
                                      "--partial"])
    assert status == 1 and "none of the case's 21 outputs is in" in err


# ----- --json -----
def test_the_json_report_holds_each_outputs_errors_tolerance_result_and_cause(case_dir, tmp_path, capsys):
    path, reference = reference_outputs(case_dir, CASE_ID)
    document, _ = verify.load_case(path)
    theirs = dict(reference, meta_loss=5 * reference["meta_loss"])
    theirs["query_loss"] = np.where(np.arange(5) == 1, np.nan, reference["query_loss"])
    del theirs["updated/dense2.b"]
    report_path = tmp_path / "out" / "report.json"
    report_path.parent.mkdir()
    report_path.write_text('{"format": "refmeta.verify/1", "status": 0}')   # an earlier report: replaced
    status, out, _ = run_cli(capsys, [path, save(tmp_path / "theirs.npz", theirs), "--json", report_path])
    assert status == 1
    assert os.listdir(report_path.parent) == ["report.json"]        # no temporary file left
    report = json.loads(report_path.read_text(), parse_constant=lambda c: pytest.fail(c))
    assert report["format"] == "refmeta.verify/1" and report["status"] == 1 and not report["passed"]
    assert report["case"]["id"] == CASE_ID and report["theirs"].endswith("theirs.npz")
    # every output, in the order of computation (the support losses, the adapted parameters,
    # the query losses, the meta-loss, the meta-gradient, the update)
    assert list(report["outputs"]) == verify.computation_order(document)
    assert sorted(report["outputs"]) == sorted(document["outputs"])
    assert list(report["outputs"])[:3] == ["support_loss", "adapted_step1/dense0.b",
                                            "adapted_step1/dense0.w"]
    assert report["first_failing"] == "query_loss"
    for name, entry in report["outputs"].items():
        assert entry["rtol"] == document["outputs"][name]["rtol"]
        assert entry["atol"] == document["outputs"][name]["atol"]
        if name in ("updated/dense2.b", "query_loss"):
            continue
        max_abs, max_rel, passed, _ = verify.compare(reference[name], theirs[name],
                                                     entry["rtol"], entry["atol"])
        assert (entry["max_abs_err"], entry["max_rel_err"], entry["passed"]) == (max_abs, max_rel, passed)
        assert entry["status"] == ("pass" if passed else "fail")
    assert report["outputs"]["updated/dense2.b"]["status"] == "missing"
    assert report["problems"] == ["missing output 'updated/dense2.b', shape (1,)"]
    nan_entry = report["outputs"]["query_loss"]
    assert nan_entry["max_abs_err"] == "nan" and nan_entry["worst"]["nan_count"] == 1
    (cause,) = report["outputs"]["meta_loss"]["diagnoses"]
    assert cause["kind"] == "factor" and cause["matches"] == ["T"] and cause["factor"] == pytest.approx(5)
    assert cause["message"] in out


def test_the_json_report_is_written_when_nothing_can_be_compared(case_dir, tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{")
    status, _, err = run_cli(capsys, [tmp_path / "bad.json", case_dir / f"{CASE_ID}.npz",
                                      "--json", tmp_path / "report.json"])
    assert status == 2 and err.count("\n") == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == 2 and "is not valid JSON" in report["error"]


def test_a_json_report_that_cannot_be_written_is_found_before_comparing(case_dir, tmp_path, capsys):
    path = case_dir / f"{CASE_ID}.json"
    for target in (tmp_path / "no" / "such" / "report.json", tmp_path):
        status, out, err = run_cli(capsys, [path, case_dir / f"{CASE_ID}.npz", "--json", target])
        assert status == 2 and out == "" and err.count("\n") == 1
        assert err.startswith(f"refmeta verify: --json {target}: ") and "Traceback" not in err


# ----- the Python API -----
def test_assert_matches_returns_the_report_or_raises_with_the_table(case_dir, tmp_path):
    path, reference = reference_outputs(case_dir, CASE_ID)
    report = verify.assert_matches(path, reference)
    assert report.passed and report.status == 0 and report.text().endswith("all 21 outputs pass")
    assert verify.assert_matches(path, save(tmp_path / "theirs.npz", reference)).passed   # an NPZ path
    adapted = {n: r for n, r in reference.items() if n.startswith("adapted_step1/")}
    assert verify.assert_matches(path, adapted, partial=True).passed
    theirs = {n: r for n, r in reference.items() if n != "query_loss"}
    theirs["meta_gradient/dense1.w"] = 5 * reference["meta_gradient/dense1.w"]
    with pytest.raises(AssertionError) as raised:
        verify.assert_matches(path, theirs)
    message = str(raised.value)
    assert message.splitlines()[1].split()[:2] == ["output", "shape"]            # the table
    assert "meta_gradient/dense1.w: worst at" in message
    assert "likely cause (meta_gradient/dense1.w): theirs = 5.000 × reference: T = the number of " \
        "tasks (5)" in message
    assert "problem: missing output 'query_loss', shape (5,)" in message
    assert message.endswith("1 problem(s) with the arrays given, listed above")
    assert message == verify.check(path, theirs).text(problems_inline=True)
    with pytest.raises(AssertionError, match="query_loss"):
        verify.assert_matches(path, {"query_loss": reference["query_loss"] + 1}, partial=True)


def test_the_api_refuses_what_is_not_a_case_or_not_arrays(case_dir, tmp_path):
    path, reference = reference_outputs(case_dir, CASE_ID)
    with pytest.raises(TypeError, match="arrays must be a mapping"):
        verify.check(path, [reference["meta_loss"]])
    with pytest.raises(TypeError, match="output names must be str"):
        verify.check(path, {1: reference["meta_loss"]})
    with pytest.raises(ValueError, match="cannot read case"):
        verify.assert_matches(tmp_path / "nowhere.json", reference)
    assert issubclass(verify.VerifyError, ValueError)
