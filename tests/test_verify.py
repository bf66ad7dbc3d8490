"""``refmeta verify``: the comparison rule, the table, and every kind of bad input."""

import io
import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from refmeta import cases
from refmeta.cases import verify

CASE_ID = "maml-sinusoid-k1-second-order"


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cases")
    cases.export(str(directory), [CASE_ID, "reptile-sinusoid-serial"])
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
    for name in (CASE_ID, "reptile-sinusoid-serial"):
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
    assert verify._nesting_depth('{"a": [1, {"b": "[[[{\\"}"}]}') == 3    # brackets in strings skipped
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
