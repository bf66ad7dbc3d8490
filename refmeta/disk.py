"""The files refmeta reads and writes: regular files only, reads bounded, writes whole or not at all.

Writing, ``replace_atomically(path, write)``: ``write(f)`` fills a new hidden file beside
``path``, which is flushed, fsynced and renamed onto ``path`` (``os.replace``).  SIGINT and
SIGTERM are held (``signals_held``) from just before the temporary file is created until it
is renamed or removed, and act once that is over: whatever stops the program, ``path`` is the
old file or the new one, whole, and no temporary file is left.  (A SIGTERM with its default
action then ends the process; a Python handler, or Ctrl-C's KeyboardInterrupt, runs then.)
A new file gets the permissions the umask gives.

Holding a signal: in the main thread, SIGINT's and SIGTERM's handlers are replaced by one that
notes the signal, which is raised again, under the old handler, on the way out; this holds
whichever thread the system delivers the signal to (a progress bar's thread, say).  In another
thread, where handlers cannot be set, the signals are blocked for that thread only.

What may be written over (``write_problem``): nothing, or a regular file.  A folder, a device
such as /dev/null, a FIFO, a socket or a symbolic link is refused, never replaced by a regular
file; so is any file the command reads (``inputs``), even under another name (a hard or
symbolic link to it).

Reading, ``open_regular(path)``: the path is opened without waiting and refused unless it is a
regular file, so a FIFO with no writer cannot hang a read and a pipe (``<(...)``) is named as
one.  ``read_at_most(f, limit, what)`` reads a file that may not exceed ``limit`` bytes, never
more than ``limit + 1``.
"""

import contextlib
import os
import secrets
import signal
import stat
import threading

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)
CHUNK_BYTES = 1 << 20

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a pipe"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))


class PathError(ValueError):
    """A path refmeta will not read or write, with a one-line message saying what it is."""


class Stopped(BaseException):
    """A held SIGINT or SIGTERM asked for a stop (``Held.stop_requested``); raised only when
    the signal, acting on the way out of ``signals_held``, neither ended the process nor raised."""


def kind(mode):
    """What a file of this ``st_mode`` is, in words: "a regular file", "a folder", "a pipe", ..."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


# ----- reading -----
def open_regular(path):
    """``path`` opened for binary reading, once it is known to be a regular file.

    Raises FileNotFoundError (or another OSError) as ``open`` would, and PathError for anything
    but a regular file; a FIFO is opened without waiting for a writer, then refused."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise PathError(f"{path} is {kind(mode)}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_at_most(file, limit, what):
    """The bytes of an open ``file``, reading at most ``limit + 1``; PathError when it holds
    more than ``limit`` bytes (``what`` names it in the message)."""
    data = file.read(limit + 1)
    if len(data) > limit:
        raise PathError(f"{what} is larger than {limit:,} bytes")
    return data


# ----- writing -----
def write_problem(path, inputs=()):
    """Why ``path`` must not be written over, as a clause ("is a folder, not a ..."), or None.

    ``inputs``: (label, path) of the files the command reads, e.g. ("CASE.json", "a.json");
    the label names the one ``path`` would destroy."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        return f"cannot be examined ({error.strerror or error})"
    if stat.S_ISLNK(status.st_mode):
        return "is a symbolic link (refmeta replaces only regular files, never a link)"
    if not stat.S_ISREG(status.st_mode):
        return f"is {kind(status.st_mode)}, not a regular file (refmeta replaces only regular files)"
    for label, other in inputs:
        try:
            if os.path.samestat(status, os.stat(other)):
                return f"is {label}, which this command reads; writing there would destroy it"
        except OSError:
            continue
    return None


class Held:
    """What ``signals_held`` yields: the signals noted so far, in order."""

    def __init__(self):
        self.noted = []

    def stop_requested(self):
        """Whether a held SIGINT or SIGTERM waits: a long write checks this between files and,
        if so, undoes what it did and raises Stopped."""
        pending = signal.sigpending() if hasattr(signal, "sigpending") else set()
        return bool(self.noted) or bool(pending & set(HELD_SIGNALS))


@contextlib.contextmanager
def signals_held():
    """Inside, SIGINT and SIGTERM wait; they act, in the order they came, on the way out
    (module docstring).  Yields a ``Held``."""
    held = Held()
    if threading.current_thread() is not threading.main_thread():
        with _blocked():
            yield held
        return
    previous = {signum: signal.signal(signum, lambda signum, frame: held.noted.append(signum))
                for signum in HELD_SIGNALS}
    try:
        yield held
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(held.noted):
            signal.raise_signal(signum)


@contextlib.contextmanager
def _blocked():
    """SIGINT and SIGTERM blocked for the calling thread (where the system allows it)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def replace_atomically(path, write, mode="wb", inputs=()):
    """Call ``write(f)`` on a new temporary file beside ``path``, then rename it onto ``path``
    (module docstring).  Raises PathError, before creating anything, when ``write_problem``
    refuses ``path``; an OSError of the disk leaves ``path`` as it was and nothing beside it."""
    problem = write_problem(path, inputs)
    if problem:
        raise PathError(f"{path} {problem}")
    folder, name = os.path.split(os.path.abspath(path))
    with signals_held():
        temporary, descriptor = _create_beside(folder, name)
        try:
            with os.fdopen(descriptor, mode, encoding=None if "b" in mode else "utf-8") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise


def _create_beside(folder, name):
    """(path, descriptor) of a new hidden file in ``folder``, never one that exists already."""
    for _ in range(100):
        temporary = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            return temporary, os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {os.path.join(folder, name)}")
