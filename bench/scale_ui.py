"""The UI's cost at scale, for `bench/scale.py`: a cold `dagster-webserver` per page, the page's
GraphQL requests timed, and the webserver's memory (docs/performance.md "At a lab's scale").

Two ways to load a page, same figures:

- **browser** (the Debian `chromium`, headless, over the DevTools pipe of
  `quantlab_pipeline_tests/browser.py`): the page is opened as a user would; every `/graphql`
  request it sends until the network is quiet is timed from request to last byte. The requests
  are saved (`--capture FILE`) so they can be replayed where there is no browser.
- **replay**: the saved requests, sent as the page sends them (up to 6 at once, the browser's
  connection limit per host), each timed to its last byte.

A page's figure is its wall time (first request to last answer) and its slowest query.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BIN = Path(sys.executable).parent
PAGES = {
    "paths asset": "/assets/paths",
    "Catalog": "/assets",
    "Partitions tab": "/assets/paths?view=partitions",
}
QUIET_S = 4.0  # a page has loaded when no GraphQL request is open and no new one started for this long
PAGE_TIMEOUT_S = 180.0
_LOCATION = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def graphql(url: str, body: dict, timeout_s: float = PAGE_TIMEOUT_S) -> tuple[bytes, float]:
    request = urllib.request.Request(
        f"{url}/graphql", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout_s) as answer:
        data = answer.read()
    return data, time.perf_counter() - started


class Webserver:
    """`dagster-webserver` on the project, started cold; `rss` and `peak_rss` of its process (MB)."""

    def __init__(self, root: Path, env: dict[str, str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.port), "-w", "workspace.yaml"],
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster-webserver exited {self.proc.returncode}; see {log}")
            with contextlib.suppress(OSError, ValueError):
                data, _ = graphql(self.url, {"query": _LOCATION}, timeout_s=10)
                entries = json.loads(data)["data"]["workspaceOrError"]["locationEntries"]
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"dagster-webserver did not load its code location in 300 s; see {log}")

    def memory_mb(self) -> dict[str, float]:
        status = Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
        fields = {line.split(":")[0]: line.split()[1] for line in status if line.startswith(("VmRSS", "VmHWM"))}
        return {"rss_mb": int(fields["VmRSS"]) / 1024, "peak_rss_mb": int(fields["VmHWM"]) / 1024}

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def browse(url: str, path: str, chromium: str, profile: Path) -> tuple[dict, list[dict]]:
    """Open the page in headless Chromium; its figure and the GraphQL requests it sent."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from quantlab_pipeline_tests.browser import Browser

    browser = Browser(chromium, profile, timeout_s=PAGE_TIMEOUT_S + 60, window=(1400, 1000))
    try:
        tab = browser.open_page()
        seen = len(browser.events)
        browser.navigate(url + path, tab)
        requests: dict[str, dict] = {}  # the first request of each distinct query (the UI also polls)
        distinct: set[str] = set()
        last_change = time.monotonic()
        deadline = last_change + PAGE_TIMEOUT_S
        while time.monotonic() < deadline:
            browser.poll(0.5)
            for event in browser.events[seen:]:
                method, params = event.get("method"), event.get("params", {})
                if method == "Network.requestWillBeSent" and "/graphql" in params["request"]["url"]:
                    post = params["request"].get("postData")
                    if post and post not in distinct:
                        distinct.add(post)
                        requests[params["requestId"]] = {"body": json.loads(post), "start": params["timestamp"]}
                        last_change = time.monotonic()
                elif method in ("Network.loadingFinished", "Network.loadingFailed") and params["requestId"] in requests:
                    requests[params["requestId"]]["end"] = params["timestamp"]
                    requests[params["requestId"]]["bytes"] = params.get("encodedDataLength", 0)
                    last_change = time.monotonic()
            seen = len(browser.events)
            open_ = [r for r in requests.values() if "end" not in r]
            if requests and not open_ and time.monotonic() - last_change > QUIET_S:
                break
        done = [r for r in requests.values() if "end" in r]
        if not done:
            raise RuntimeError(f"{path}: the page sent no GraphQL request in {PAGE_TIMEOUT_S:.0f} s")
        figure = {
            "wall_s": max(r["end"] for r in done) - min(r["start"] for r in done),
            "queries": _timings([(r["body"], r["end"] - r["start"]) for r in done]),
            "bytes": sum(r["bytes"] for r in done),
            "unfinished": len(requests) - len(done),
        }
        return figure, [r["body"] for r in sorted(requests.values(), key=lambda r: r["start"])]
    finally:
        browser.close()


def _name(body: dict) -> str:
    return body.get("operationName") or body.get("query", "")[:40]


def _timings(pairs: list[tuple[dict, float]]) -> dict[str, float]:
    """Seconds per query, named by operation (`AssetGraphLiveQuery #2` for a page's second one)."""
    out: dict[str, float] = {}
    for body, seconds in pairs:
        name, n = _name(body), 1
        while (f"{_name(body)} #{n}" if n > 1 else name) in out:
            n += 1
        out[f"{name} #{n}" if n > 1 else name] = seconds
    return out


def replay(url: str, bodies: list[dict]) -> dict:
    """Send the page's saved requests, up to 6 at once; the page's figure."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda body: graphql(url, body), bodies))
    return {
        "wall_s": time.perf_counter() - started,
        "queries": _timings([(body, seconds) for body, (_, seconds) in zip(bodies, answers, strict=True)]),
        "bytes": sum(len(data) for data, _ in answers),
        "unfinished": 0,
    }


def measure_pages(
    root: Path, env: dict[str, str], pages: dict[str, str], *, chromium: str | None, capture: Path, work: Path
) -> dict:
    """Each page on a cold webserver: `{page: figure}` plus the webserver's memory after it."""
    saved = json.loads(capture.read_text()) if capture.exists() else {}
    out: dict[str, dict] = {}
    for page, path in pages.items():
        server = Webserver(root, env, work / "webserver.log")
        try:
            if chromium:
                figure, bodies = browse(server.url, path, chromium, work / f"chromium-{len(out)}")
                saved[page] = bodies
                figure["how"] = "browser"
            elif page in saved:
                figure = replay(server.url, saved[page])
                figure["how"] = "replay"
            else:
                out[page] = {"skipped": f"no browser and no saved requests in {capture}"}
                continue
            figure.update(server.memory_mb())
            out[page] = figure
        finally:
            server.stop()
    if chromium:
        capture.write_text(json.dumps(saved, indent=1))
    return out
