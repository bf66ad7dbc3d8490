"""refmeta.disk: what may be written over, writes whole or not at all, signals held meanwhile,
reads of regular files only, bounded."""

import os
import signal
import stat
import threading

import pytest

from refmeta import disk


# ----- what may be written over -----
def test_write_problem_allows_a_new_or_regular_file_and_names_everything_else(tmp_path):
    (tmp_path / "file").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "file")
    assert disk.write_problem(tmp_path / "new") is None
    assert disk.write_problem(tmp_path / "file") is None
    assert disk.write_problem(tmp_path / "fifo").startswith("is a pipe, not a regular file")
    assert disk.write_problem(tmp_path / "folder").startswith("is a folder, not a regular file")
    assert disk.write_problem(tmp_path / "link").startswith("is a symbolic link")
    assert disk.write_problem(os.devnull).startswith("is a character device, not a regular file")


def test_write_problem_names_an_input_under_any_name(tmp_path):
    (tmp_path / "input").write_text("x")
    os.link(tmp_path / "input", tmp_path / "hard")
    inputs = [("the input", tmp_path / "absent"), ("IN", tmp_path / "input")]
    expected = "is IN, which this command reads; writing there would destroy it"
    assert disk.write_problem(tmp_path / "input", inputs) == expected
    assert disk.write_problem(tmp_path / "hard", inputs) == expected
    assert disk.write_problem(tmp_path / "other", inputs) is None


# ----- writes: whole or not at all -----
def test_replace_atomically_writes_with_the_umask_and_leaves_nothing_beside(tmp_path):
    path = tmp_path / "out.txt"
    disk.replace_atomically(path, lambda f: f.write("é\n"), "w")
    assert path.read_bytes() == "é\n".encode("utf-8") and os.listdir(tmp_path) == ["out.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
    disk.replace_atomically(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["out.txt"]


@pytest.mark.parametrize("fail", ["write", "rename"])
def test_a_failed_write_or_rename_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, fail):
    path = tmp_path / "out"
    path.write_bytes(b"old")

    def write(f):
        f.write(b"half")
        if fail == "write":
            raise OSError(28, "No space left on device")
    if fail == "rename":
        monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(IsADirectoryError(21, "x")))
    with pytest.raises(OSError):
        disk.replace_atomically(path, write)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["out"]


def test_replace_atomically_refuses_before_creating_anything(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(disk.PathError, match="out is a folder, not a regular file"):
        disk.replace_atomically(tmp_path / "out", lambda f: pytest.fail("written"))
    (tmp_path / "in").write_text("read")
    with pytest.raises(disk.PathError, match="in is IN, which this command reads"):
        disk.replace_atomically(tmp_path / "in", lambda f: pytest.fail("written"),
                                inputs=[("IN", tmp_path / "in")])
    assert sorted(os.listdir(tmp_path)) == ["in", "out"] and (tmp_path / "in").read_text() == "read"


# ----- signals held -----
def test_a_signal_inside_waits_until_the_write_is_over(tmp_path):
    path, seen = tmp_path / "out", []

    def write(f):
        signal.raise_signal(signal.SIGINT)          # Ctrl-C in the middle of the write
        f.write(b"whole")
        seen.append("written")
    with pytest.raises(KeyboardInterrupt):
        disk.replace_atomically(path, write)
    assert seen == ["written"] and path.read_bytes() == b"whole" and os.listdir(tmp_path) == ["out"]


def test_signals_held_notes_each_signal_and_restores_the_handlers():
    got = []

    def handler(signum, frame):
        got.append(signum)
    old = signal.signal(signal.SIGTERM, handler)
    try:
        with disk.signals_held() as held:
            assert not held.stop_requested()
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)
            assert got == [] and held.stop_requested()
        assert got == [signal.SIGTERM]                  # raised once again, by the old handler
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, old)


def test_signals_held_blocks_them_in_another_thread():
    masks = []

    def work():
        with disk.signals_held() as held:
            masks.append(signal.pthread_sigmask(signal.SIG_BLOCK, []))
            masks.append(held.stop_requested())
        masks.append(signal.pthread_sigmask(signal.SIG_BLOCK, []))
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert {signal.SIGINT, signal.SIGTERM} <= masks[0] and masks[1] is False
    assert not {signal.SIGINT, signal.SIGTERM} & masks[2]


# ----- reads -----
def test_open_regular_refuses_a_fifo_without_waiting_for_a_writer(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(disk.PathError, match="fifo is a pipe, not a regular file"):
        disk.open_regular(tmp_path / "fifo")
    with pytest.raises(disk.PathError, match="is a folder, not a regular file"):
        disk.open_regular(tmp_path)
    with pytest.raises(FileNotFoundError):
        disk.open_regular(tmp_path / "absent")


def test_read_at_most_reads_one_byte_past_the_limit_and_refuses(tmp_path):
    (tmp_path / "f").write_bytes(bytes(100))
    with disk.open_regular(tmp_path / "f") as f:
        assert disk.read_at_most(f, 100, "f") == bytes(100)
    with disk.open_regular(tmp_path / "f") as f:
        with pytest.raises(disk.PathError, match="f is larger than 99 bytes"):
            disk.read_at_most(f, 99, "f")
        assert f.tell() == 100
