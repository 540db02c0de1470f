"""A headless Chromium driven over the DevTools protocol through a pipe (`--remote-debugging-pipe`: JSON
messages separated by NUL on fds 3/4), with no client library: load a page with the network off, read
console errors and network attempts, evaluate JavaScript, take screenshots. Used by the `browser`
tests and bench/bench_report.py.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    """The browser binary: $EVALKIT_CHROMIUM, else the first of CANDIDATES on PATH."""
    env = os.environ.get("EVALKIT_CHROMIUM")
    if env:
        return env
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


def _high(fd: int) -> int:
    """The same pipe end as a descriptor >= 10, so moving it onto 3 and 4 in the child never clobbers another."""
    import fcntl

    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class BrowserError(RuntimeError):
    pass


class Chromium:
    """One headless browser with one page; a context manager."""

    def __init__(self, width: int = 1400, height: int = 1000, binary: str | None = None, timeout: float = 60.0):
        binary = binary or find_chromium()
        if binary is None:
            raise BrowserError("no chromium found (apt-get install chromium, or set EVALKIT_CHROMIUM)")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="evalkit-chromium-")
        to_r, self._to_w = (_high(fd) for fd in os.pipe())  # we write commands; the browser reads its fd 3
        self._from_r, from_w = (_high(fd) for fd in os.pipe())  # the browser answers on its fd 4
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--mute-audio",
                "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}", "about:blank"]
        self._log = tempfile.TemporaryFile()  # its chatter (dbus, GPU) goes to a file, never a full pipe
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_r} 4>&{from_w} {to_r}<&- {from_w}>&-', binary, *args],
            pass_fds=(to_r, from_w), stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
        os.close(to_r)
        os.close(from_w)
        self._next = 0
        self._replies: dict[int, dict] = {}
        self._cond = threading.Condition()
        self.events: list[dict] = []
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.page(f"{domain}.enable")
        self.page("Network.emulateNetworkConditions", offline=True, latency=0, downloadThroughput=-1,
                  uploadThroughput=-1)
        self.page("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    # -- protocol
    def _read(self) -> None:
        buf = b""
        while True:
            chunk = os.read(self._from_r, 1 << 20)
            if not chunk:
                break
            buf += chunk
            *msgs, buf = buf.split(b"\0")
            for m in msgs:
                msg = json.loads(m)
                with self._cond:
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                    self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def call(self, method: str, session: str | None = None, **params: Any) -> dict:
        with self._cond:
            self._next += 1
            mid = self._next
        msg = {"id": mid, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._to_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while mid not in self._replies:
                if self._closed:
                    raise BrowserError(f"{method}: the browser exited ({self._stderr()})")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserError(f"{method}: no answer within {self.timeout:.0f} s")
                self._cond.wait(left)
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def page(self, method: str, **params: Any) -> dict:
        return self.call(method, self.session, **params)

    def _stderr(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    # -- what the tests use
    def open(self, path: str | Path, ready: str = "document.body && (document.body.dataset.ready || "
                                                    "document.body.dataset.error)") -> float:
        """Navigate to a local file and wait until `ready` is truthy; returns seconds from navigation."""
        t0 = time.monotonic()
        self.page("Page.navigate", url=Path(path).resolve().as_uri())
        deadline = t0 + self.timeout
        while time.monotonic() < deadline:
            if self.eval(ready):
                return time.monotonic() - t0
            time.sleep(0.05)
        raise BrowserError(f"{path}: not ready within {self.timeout:.0f} s")

    def eval(self, expression: str) -> Any:
        r = self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise BrowserError(f"{expression[:80]}: {r['exceptionDetails'].get('exception', {}).get('description')}")
        return r.get("result", {}).get("value")

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen so far."""
        out = []
        with self._cond:
            events = list(self.events)
        for e in events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif e.get("method") == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append(d.get("exception", {}).get("description") or d.get("text", "exception"))
            elif e.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(p["entry"].get("text", ""))
        return out

    def requests(self) -> list[str]:
        """URLs the page asked for (file:, data: and blob: are local)."""
        with self._cond:
            return [e["params"]["request"]["url"] for e in self.events
                    if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, full_page: bool = False) -> bytes:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        return base64.b64decode(self.page("Page.captureScreenshot", **params)["data"])

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except BrowserError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_w)
        self._reader.join(timeout=10)
        os.close(self._from_r)
        self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
