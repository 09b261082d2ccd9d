"""Headless Chromium over the DevTools protocol on a pipe, stdlib only: the report and UI tests.

No WebDriver, no Node, no browser download: the Debian `chromium` package, driven through
`--remote-debugging-pipe` (fds 3 and 4, NUL-separated JSON messages).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest


def chromium_or_skip() -> str:
    """The Debian `chromium`, installed here if missing and possible (CI runs as root on Debian)."""
    path = shutil.which("chromium")
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "chromium"]
        if subprocess.run(install, env=env, capture_output=True, timeout=1200).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            subprocess.run(install, env=env, capture_output=True, timeout=1200)
        path = shutil.which("chromium")
    if path is None:
        pytest.skip("headless Chromium is missing and cannot be installed here (`apt-get install chromium` needs root)")
    return path


class Browser:
    """One headless Chromium process; `send` is one DevTools command, events are kept in `events`."""

    def __init__(self, chromium: str, profile: Path, timeout_s: float = 30, window: tuple[int, int] = (1280, 800)):
        to_child, self._write = os.pipe()
        self._read, from_child = os.pipe()

        def pipes_as_fds_3_and_4() -> None:
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child, from_child)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        flags = [
            "--headless",
            "--no-sandbox",  # root in CI
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--remote-debugging-pipe",
            f"--window-size={window[0]},{window[1]}",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        self.stderr = profile.with_suffix(".stderr")
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [chromium, *flags],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                close_fds=False,  # the pipes must survive as fds 3 and 4; Python's own fds are CLOEXEC
                preexec_fn=pipes_as_fds_3_and_4,
            )
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        self.deadline = time.monotonic() + timeout_s

    def _message(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = self.deadline - time.monotonic()
            ready, _, _ = select.select([self._read], [], [], max(remaining, 0))
            if not ready:
                raise TimeoutError(f"Chromium did not answer in time; stderr: {self.stderr.read_text()[-2000:]}")
            chunk = os.read(self._read, 1 << 16)
            if not chunk:
                raise EOFError(f"Chromium closed the pipe; stderr: {self.stderr.read_text()[-2000:]}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def poll(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for one more event (kept in `events`); whether one came."""
        keep, self.deadline = self.deadline, time.monotonic() + timeout_s
        try:
            self.events.append(self._message())
            return True
        except TimeoutError:
            return False
        finally:
            self.deadline = keep

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._message()
            if reply.get("id") == self._id:
                assert "error" not in reply, (method, reply["error"])
                return reply["result"]
            self.events.append(reply)

    def navigate(self, url: str, session: str) -> None:
        """Load `url` in the tab of `session` and wait for its load event (not another tab's)."""
        seen = len(self.events)
        self.send("Page.navigate", {"url": url}, session=session)
        while not any(
            e.get("method") == "Page.loadEventFired" and e.get("sessionId") == session for e in self.events[seen:]
        ):
            self.events.append(self._message())

    def open_page(self) -> str:
        """A new tab with the runtime, console, page and network events on; returns its session id."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.send(f"{domain}.enable", session=session)
        return session

    def evaluate(self, expression: str, session: str) -> Any:
        reply = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")

    def wait_until(self, expression: str, session: str, timeout_s: float) -> Any:
        """Poll `expression` until it is truthy (a single-page app renders after its data arrives)."""
        until = min(time.monotonic() + timeout_s, self.deadline)
        while True:
            value = self.evaluate(expression, session)
            if value or time.monotonic() > until:
                return value
            time.sleep(0.25)

    def screenshot(self, session: str, out: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
        out.write_bytes(base64.b64decode(data))
        return out

    def errors(self, allowed_origins: tuple[str, ...] = ("file:", "data:")) -> list[str]:
        """Every uncaught exception, console error or warning, and request outside `allowed_origins`."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:300])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
                found.append(f"console.{params['type']}: {json.dumps(params.get('args'))[:300]}")
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                found.append(params["entry"]["text"])
            elif method == "Network.requestWillBeSent" and not params["request"]["url"].startswith(allowed_origins):
                found.append(f"network request: {params['request']['url']}")
        return found

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.proc.wait(timeout=10)
        except (OSError, TimeoutError, EOFError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._read)
            os.close(self._write)
