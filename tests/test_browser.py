"""The HTML report in a real headless browser: Debian's chromium, driven over the DevTools protocol.

Opens the report of a planted run from disk with the network off, waits for plotly to draw,
and asserts: no console errors or uncaught exceptions, every expected figure has an SVG with
data points, and the page loaded nothing from outside the file. Saves a full-page screenshot
(and, with PD_SCREENSHOT_OUT set, a copy there). A missing browser fails: CI installs it.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from persona_dynamics.report import write_report
from persona_dynamics.report.data import load_run

from helpers.planted_run import build

CHROMIUM = ("chromium", "/usr/bin/chromium", "chromium-browser")
PLOTS = [
    "plot-axis-movement",
    "plot-role-trajectories",
    "plot-variance",
    "plot-cos-layers",
    "plot-roles-pc",
    "plot-axis-ranking",
    "plot-adapters",
    "plot-across-wide",
]
POINTS = """
(() => {
  const out = {};
  for (const id of %s) {
    const el = document.getElementById(id);
    out[id] = el === null ? null : {
      svg: el.querySelectorAll("svg.main-svg").length,
      points: el.querySelectorAll(".scatterlayer .point, .barlayer .point").length,
      lines: el.querySelectorAll(".scatterlayer path.js-line").length,
      width: el.getBoundingClientRect().width,
    };
  }
  return JSON.stringify(out);
})()
"""


def chromium() -> str:
    """The browser binary; its absence fails the test (required tests never skip)."""
    for name in CHROMIUM:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "headless chromium not found: install Debian's browser with "
        "`apt-get install -y chromium chromium-driver` (.ci/run does)"
    )


class DevTools:
    """A minimal DevTools-protocol client over one page's websocket: commands and events."""

    def __init__(self, url: str):
        import websocket

        self.ws = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        """Send one command and return its result; events seen meanwhile are kept."""
        key = next(self.ids)
        self.ws.send(json.dumps({"id": key, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == key:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self.events.append(msg)

    def wait(self, method: str, timeout: float = 30.0) -> dict:
        """Block until an event arrives (or was already seen)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for e in self.events:
                if e.get("method") == method:
                    return e
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(method)

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"][
            "value"
        ]

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    cfg = build(root)
    return write_report(load_run(cfg.path("analysis")), root / "report", png=False)


@pytest.fixture
def page(tmp_path):
    """A fresh headless chromium with the network off; yields a DevTools client on its page."""
    binary = chromium()
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--remote-debugging-port=0",
        "--remote-allow-origins=*",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,900",
        "about:blank",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        port_file = tmp_path / "profile" / "DevToolsActivePort"
        end = time.monotonic() + 30
        while not port_file.is_file() or not port_file.read_text().strip():
            if proc.poll() is not None or time.monotonic() > end:
                pytest.fail(f"{binary} did not start: {proc.stderr.read()[-2000:]}")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            target = next(t for t in json.load(r) if t["type"] == "page")
        tools = DevTools(target["webSocketDebuggerUrl"])
        try:
            yield tools
        finally:
            tools.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def errors(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and failed requests among the page's events."""
    out = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            out.append("console: " + " ".join(str(a.get("value", a)) for a in p["args"]))
        elif method == "Runtime.exceptionThrown":
            out.append("exception: " + json.dumps(p["exceptionDetails"])[:500])
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            out.append("log: " + p["entry"]["text"])
    return out


@pytest.mark.slow
def test_report_renders_in_chromium(report, page, tmp_path):
    for domain in ("Runtime", "Log", "Page", "Network"):
        page.call(f"{domain}.enable")
    page.call(
        "Network.emulateNetworkConditions",
        offline=True,
        latency=0,
        downloadThroughput=-1,
        uploadThroughput=-1,
    )
    page.call("Page.navigate", url=report.as_uri())
    page.wait("Page.loadEventFired")
    expression = POINTS % json.dumps(PLOTS)
    end = time.monotonic() + 30
    while True:  # plotly draws after load; wait until every figure has its points
        found = json.loads(page.evaluate(expression))
        drawn = all(v and v["svg"] and (v["points"] or v["lines"]) for v in found.values())
        if drawn or time.monotonic() > end:
            break
        time.sleep(0.2)
    for key, v in found.items():
        assert v is not None, f"no element #{key} in the report"
        assert v["svg"] > 0, f"#{key}: no SVG drawn"
        assert v["points"] + v["lines"] > 0, f"#{key}: no data points drawn: {v}"
        assert v["width"] > 300, f"#{key}: collapsed to {v['width']}px"
    # hovering is how roles are read: the role names are in the drawn roles plot's data
    names = page.evaluate(
        "JSON.stringify(document.getElementById('plot-roles-pc').data.flatMap(t => t.text || []))"
    )
    assert "role00@3" in json.loads(names) and "Assistant" in json.loads(names)
    unscored = page.evaluate("document.getElementById('unscored') === null")
    assert unscored, "a scored run must not carry the unscored warning"
    requests = [
        e["params"]["request"]["url"]
        for e in page.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    assert all(u.startswith(("file:", "data:", "about:")) for u in requests), requests
    assert errors(page.events) == []
    height = page.evaluate("document.documentElement.scrollHeight")
    page.call(
        "Emulation.setDeviceMetricsOverride",
        width=1200,
        height=int(height),
        deviceScaleFactor=1,
        mobile=False,
    )
    time.sleep(0.5)  # responsive plots re-lay out to the new viewport
    shot = base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"])
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 50_000
    (tmp_path / "report.png").write_bytes(shot)
    if os.environ.get("PD_SCREENSHOT_OUT"):
        out = Path(os.environ["PD_SCREENSHOT_OUT"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(shot)
