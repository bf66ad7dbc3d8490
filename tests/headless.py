"""Headless Chromium driven over the DevTools protocol on a pipe: no Python package needed.

Used by tests/test_read_browser.py, and to remake the README's picture of the MAML page::

    refmeta read maml --out /tmp/pages
    python tests/headless.py /tmp/pages/maml.html docs/figures/read-maml.png --anchor eq-1

Chromium runs as the machine's own (Debian's ``chromium``, which .ci/run installs), headless,
with a fresh profile and no background network, and reads commands on file descriptor 3 and
answers on 4 (``--remote-debugging-pipe``), each message JSON ended by a NUL byte.
"""

import argparse
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile

EXECUTABLES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--hide-scrollbars", "--remote-debugging-pipe")


def find_chromium():
    """The path of a Chromium on PATH, or None."""
    return next((shutil.which(name) for name in EXECUTABLES if shutil.which(name)), None)


class BrowserError(RuntimeError):
    """Chromium answered with an error, closed its pipe, or took too long."""


class Browser:
    """One headless Chromium with one tab; ``with Browser(path) as b: b.open(url)`` ..."""

    def __init__(self, executable, timeout=60.0):
        self.timeout, self.next_id, self.buffer = timeout, 0, b""
        self.profile = tempfile.mkdtemp(prefix="refmeta-chromium-")
        commands_read, self.commands = os.pipe()
        self.answers, answers_write = os.pipe()

        # Chromium reads commands on fd 3 and answers on fd 4.  bash puts the pipe ends there and
        # execs it, so that no Python runs between fork and exec: this process may have other
        # threads (JAX's, once imported), and Python code in the child could deadlock on them.
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_read, answers_write)]
        for fd in (commands_read, answers_write):     # via fds >= 10: neither end is 3 or 4 now
            os.close(fd)
        self.process = subprocess.Popen(["bash", "-c", f'exec "$0" "$@" 3<&{ends[0]} 4>&{ends[1]}',
                                         executable, *FLAGS, f"--user-data-dir={self.profile}"],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, pass_fds=ends)
        for fd in ends:
            os.close(fd)
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.tab = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable", in_tab=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, method, params=None, in_tab=False, wait_for=None):
        """Send one command (to the tab, with ``in_tab``) and return its result; with ``wait_for``,
        also wait for that event."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if in_tab:
            message["sessionId"] = self.tab
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        result, seen = None, wait_for is None
        while result is None or not seen:
            answer = self._read()
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                result = answer.get("result", {})
            elif answer.get("method") == wait_for:
                seen = True
        return result

    def _read(self):
        while b"\0" not in self.buffer:
            ready, _, _ = select.select([self.answers], [], [], self.timeout)
            chunk = os.read(self.answers, 1 << 20) if ready else b""
            if not chunk:
                raise BrowserError("Chromium did not answer" if not ready else "Chromium closed its pipe")
            self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)

    def open(self, url, width=1400, height=900):
        """Load ``url`` in a ``width`` × ``height`` window and wait for its load event."""
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, in_tab=True)
        self.send("Page.navigate", {"url": url}, in_tab=True, wait_for="Page.loadEventFired")

    def evaluate(self, expression):
        """The value of a JavaScript expression in the page (JSON-able)."""
        answer = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, in_tab=True)
        if "exceptionDetails" in answer:
            raise BrowserError(f"script failed: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def screenshot(self, path, top=0, height=None):
        """Write a PNG of the page from ``top`` (CSS pixels), ``height`` tall (default the window)."""
        width, window = self.evaluate("[document.documentElement.clientWidth, window.innerHeight]")
        clip = {"x": 0, "y": top, "width": width, "height": height or window, "scale": 1}
        data = self.send("Page.captureScreenshot", {"format": "png", "clip": clip,
                                                    "captureBeyondViewport": True}, in_tab=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        try:
            self.send("Browser.close")
        except (BrowserError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self.commands, self.answers):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description="A PNG of a page, from an anchor down.")
    parser.add_argument("page", help="an HTML file")
    parser.add_argument("png", help="the PNG to write")
    parser.add_argument("--anchor", help="start the picture at this element id (default: the top)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=860)
    parser.add_argument("--colours", type=int, default=96, help="palette size of the PNG (Pillow)")
    args = parser.parse_args()
    executable = find_chromium()
    if executable is None:
        raise SystemExit("no Chromium on PATH (Debian: apt-get install chromium)")
    with Browser(executable) as browser:
        browser.open("file://" + os.path.abspath(args.page), args.width, args.height)
        top = 0
        if args.anchor:
            top = browser.evaluate(f"Math.max(0, document.getElementById({json.dumps(args.anchor)})"
                                   ".getBoundingClientRect().top + window.scrollY - 40)")
        browser.screenshot(args.png, top, args.height)
    from PIL import Image
    Image.open(args.png).convert("RGB").quantize(args.colours).save(args.png, optimize=True)


if __name__ == "__main__":
    main()
