"""Load a page from disk in headless Chromium with the network off; screenshot and requests.

Chromium is driven through its DevTools protocol over a pipe (``--remote-debugging-pipe``:
JSON messages separated by NUL bytes on file descriptors 3 and 4), so no package is
needed. The network is off three ways: every request goes to a proxy on a closed
port (``--proxy-server=127.0.0.1:9``, loopback included), host names resolve to
nothing (``--host-resolver-rules``), and every request the page starts is recorded
(``Network.requestWillBeSent``) so a test can assert that there were none.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["find_chromium", "PageLoad", "load_page"]


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageLoad:
    """What loading one page gave.

    Attributes:
        png: the screenshot (PNG bytes) of the viewport.
        requests: URLs of every request the page started (the page itself included).
        drawn_ms: the page's ``data-drawn-ms`` (ms from navigation to drawn), or None.
        seconds: wall time from navigation to the screenshot.
        rects: ``{selector: {"x", "y", "width", "height"}}`` in CSS pixels of the viewport
            for each selector asked for (None where nothing matched).
    """

    png: bytes
    requests: list[str] = field(default_factory=list)
    drawn_ms: float | None = None
    seconds: float = 0.0
    rects: dict[str, dict | None] = field(default_factory=dict)


class _Pipe:
    def __init__(self, process: subprocess.Popen, to_browser: int, from_browser: int) -> None:
        self.process, self.to_browser, self.from_browser = process, to_browser, from_browser
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed the pipe (exit code {self.process.poll()})")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, tab: str | None = None,
             timeout_s: float = 60.0) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if tab:
            message["sessionId"] = tab
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)


def load_page(path: Path, *, chromium: str, width: int = 1280, height: int = 800, timeout_s: float = 60.0,
              selectors: tuple[str, ...] = ()) -> PageLoad:
    """Open ``path`` (a file) offline, wait until it says it drew (or ``timeout_s``), screenshot it.

    ``selectors``: CSS selectors whose bounding boxes to return in :attr:`PageLoad.rects`.
    """
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def wire_fds() -> None:  # the child reads commands on fd 3 and writes replies on fd 4
        high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)  # out of the way of 3 and 4 first
        high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.dup2(high_r, 3)
        os.dup2(high_w, 4)

    with tempfile.TemporaryDirectory(prefix="renalseg-chromium-") as profile:
        args = [
            chromium, "--headless", "--remote-debugging-pipe", f"--user-data-dir={profile}",
            "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
            "--hide-scrollbars", "--mute-audio", "--no-first-run", "--no-default-browser-check",
            "--disable-background-networking", "--disable-component-update", "--disable-extensions",
            "--disable-sync", "--disable-default-apps", "--disable-dev-shm-usage",
            "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
            "--host-resolver-rules=MAP * ~NOTFOUND", f"--window-size={width},{height}", "about:blank",
        ]
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, preexec_fn=wire_fds,
                                   pass_fds=(3, 4))
        os.close(to_browser_r)
        os.close(from_browser_w)
        pipe = _Pipe(process, to_browser_w, from_browser_r)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            tab = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            pipe.call("Network.enable", tab=tab)
            pipe.call("Page.enable", tab=tab)
            pipe.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, tab=tab)
            started = time.monotonic()
            pipe.call("Page.navigate", {"url": Path(path).resolve().as_uri()}, tab=tab)
            drawn = None
            while time.monotonic() - started < timeout_s:
                value = pipe.call("Runtime.evaluate", {
                    "expression": "document.documentElement.getAttribute('data-drawn-ms')",
                    "returnByValue": True}, tab=tab)["result"].get("value")
                if value:
                    drawn = float(value)
                    break
                time.sleep(0.2)
            rects = {}
            for selector in selectors:
                rects[selector] = pipe.call("Runtime.evaluate", {
                    "expression": f"(function () {{ const e = document.querySelector({json.dumps(selector)}); "
                                  "if (!e) return null; const r = e.getBoundingClientRect(); "
                                  "return {x: r.x, y: r.y, width: r.width, height: r.height}; })()",
                    "returnByValue": True}, tab=tab)["result"].get("value")
            shot = pipe.call("Page.captureScreenshot", {"format": "png"}, tab=tab)
            seconds = time.monotonic() - started
            requests = [e["params"]["request"]["url"] for e in pipe.events
                        if e.get("method") == "Network.requestWillBeSent"]
            try:
                pipe.call("Browser.close", timeout_s=10)
            except (RuntimeError, TimeoutError):
                pass
        finally:
            os.close(to_browser_w)
            os.close(from_browser_r)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return PageLoad(png=base64.b64decode(shot["data"]), requests=requests, drawn_ms=drawn, seconds=seconds,
                    rects=rects)
