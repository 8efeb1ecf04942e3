"""The reports as a reader sees them: every page rendered in headless Chromium, and what is wrong with it.

    cxrutils check-reports [reports/] [--screenshots DIR]

opens ``index.html`` and every report in Chromium (Debian's ``chromium`` package, or
``CXRUTILS_CHROMIUM=/path/to/chrome``) through the Chrome DevTools protocol and
lists, page by page:

- a link that leads nowhere (a missing file, or a ``#section`` the page lacks);
- a figure that does not load;
- a JavaScript error, or any error the browser logs (a script or file that failed to load);
- stderr output or progress-bar refreshes left in the page;
- a number in a table printed raw (``112120``, ``0.81234``) instead of as ``cxrutils.show.display`` prints it;
- a report the index does not link.

It exits 1 when there is a problem. With ``--screenshots`` it saves the index and one
report as PNG files.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cxrutils import files
from cxrutils.paths import REPORTS_DIR, resolve
from cxrutils.publish.notebook_html import INDEX_PAGE

CHROMIUM_VARIABLE = "CXRUTILS_CHROMIUM"
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
INSTALL_HINT = ("install Chromium (Debian/Ubuntu: sudo apt-get install chromium; macOS: brew install --cask chromium) "
                f"or point {CHROMIUM_VARIABLE} at a Chrome or Chromium executable")
# No network, no background services, no first-run UI: the pages are local files and nothing else may load.
HEADLESS_FLAGS = ("--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                  "--hide-scrollbars", "--mute-audio")
VIEWPORT = (1280, 1400)
REPORT_PAGE = re.compile(r"^\d\d_.+\.html$")
# tqdm's refresh: "37%|███▋      | 11/30 [00:04<00:07" (and the rate that follows).
PROGRESS_DEBRIS = re.compile(r"\d{1,3}%\|[^|\n]{0,60}\|\s*\d[\d.,]*[kM]?/\d|\[\d\d:\d\d<\d\d:\d\d")
# What pandas prints when nobody formatted the table: a count without separators, a float to 6 decimals.
# A small value printed to its significant digits (a threshold of 0.00974) is formatted; 0.81234 is not.
RAW_NUMBER = re.compile(r"^-?(\d{4,}|\d+\.\d{5,})$")
RAW_SIGNIFICANT_DIGITS = 5


def is_raw_number(text: str) -> bool:
    """A table cell as pandas prints it unformatted: a count without separators, or a decimal to 5+ digits."""
    if not RAW_NUMBER.match(text):
        return False
    if "." not in text:
        return True
    significant = text.lstrip("-").replace(".", "").lstrip("0")
    return len(significant) >= RAW_SIGNIFICANT_DIGITS
NAMING_HEADER = re.compile(r"(^|[\s_])(id|patient_id|follow_up|follow-up|epoch|seed|year)$", re.IGNORECASE)

_PAGE_FACTS = """(() => {
  const cells = [];
  for (const table of document.querySelectorAll('table')) {
    const heads = table.tHead ? [...table.tHead.rows] : [];
    const header = heads.length ? [...heads[heads.length - 1].cells].map(c => c.innerText.trim()) : [];
    for (const body of table.tBodies) {
      for (const row of body.rows) {
        [...row.cells].forEach((cell, i) => {
          if (cell.tagName === 'TD') cells.push([header[i] || '', cell.innerText.trim()]);
        });
      }
    }
  }
  return {
    links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
    images: [...document.images].map(i => ({src: (i.getAttribute('src') || '').slice(0, 120),
                                            loaded: i.complete && i.naturalWidth > 0})),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id),
    stderr: [...document.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"]')]
              .map(e => e.innerText.trim().slice(0, 200)),
    text: document.body ? document.body.innerText : '',
    cells: cells,
  };
})()"""


class BrowserError(RuntimeError):
    """Chromium did not start, or did not answer."""


def find_browser() -> str | None:
    """The Chromium to use: ``CXRUTILS_CHROMIUM``, else the first of ``BROWSER_NAMES`` on PATH; None without one."""
    named = os.environ.get(CHROMIUM_VARIABLE)
    if named:
        return named if Path(named).is_file() or shutil.which(named) else None
    return next((found for name in BROWSER_NAMES if (found := shutil.which(name))), None)


@dataclass
class PageCheck:
    """One page as Chromium rendered it."""

    page: str
    problems: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    screenshot: Path | None = None


@dataclass
class BrowserCheck:
    pages: list[PageCheck]

    @property
    def problems(self) -> list[str]:
        return [f"{page.page}: {problem}" for page in self.pages for problem in page.problems]


class _DevTools:
    """A headless Chromium and one DevTools connection to it, pages as flattened sessions."""

    def __init__(self, executable: str, timeout: float) -> None:
        import websocket  # websocket-client

        self.timeout = timeout
        self.profile = Path(tempfile.mkdtemp(prefix="cxrutils-chromium-"))
        flags = [*HEADLESS_FLAGS, *(["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])]
        self.log = open(self.profile / "chromium.log", "wb")  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(
            [executable, *flags, f"--user-data-dir={self.profile}", "--remote-debugging-port=0", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.is_file() and len(port_file.read_text().split()) >= 2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise BrowserError(f"{executable} did not start a DevTools endpoint: "
                                   f"{(self.profile / 'chromium.log').read_bytes()[-2000:].decode(errors='replace')}")
            time.sleep(0.05)
        port, path = port_file.read_text().split()[:2]
        self.socket = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=timeout,
                                                  suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.socket.send(json.dumps(message))
        while True:
            reply = self._receive(time.monotonic() + self.timeout)
            if reply is None:
                raise BrowserError(f"Chromium did not answer {method} within {self.timeout:.0f} s")
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})

    def wait_for(self, method: str, session: str, seconds: float) -> bool:
        """Collect events until ``method`` arrives for ``session`` (True) or ``seconds`` pass (False)."""
        deadline = time.monotonic() + seconds
        if any(e.get("method") == method and e.get("sessionId") == session for e in self.events):
            return True
        while (message := self._receive(deadline)) is not None:
            if message.get("method") == method and message.get("sessionId") == session:
                return True
        return False

    def settle(self, seconds: float) -> None:
        """Collect the events of the next ``seconds`` (errors logged just after a page's load event)."""
        deadline = time.monotonic() + seconds
        while self._receive(deadline) is not None:
            pass

    def _receive(self, deadline: float) -> dict[str, Any] | None:
        import websocket

        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        self.socket.settimeout(remaining)
        try:
            message = json.loads(self.socket.recv())
        except websocket.WebSocketTimeoutException:
            return None
        if "method" in message:
            self.events.append(message)
        return message

    def close(self) -> None:
        try:
            if getattr(self, "socket", None) is not None:
                self.call("Browser.close")
        except Exception:  # the browser may already be gone: it is stopped below either way
            pass
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


def _render(browser: _DevTools, page: Path, screenshot: Path | None) -> tuple[dict[str, Any], list[str]]:
    """The page's facts (links, images, ...) and the errors the browser reported while loading it."""
    target = browser.call("Target.createTarget", url="about:blank")["targetId"]
    session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    errors: list[str] = []
    try:
        for domain in ("Page", "Runtime", "Log"):
            browser.call(f"{domain}.enable", session)
        browser.call("Emulation.setDeviceMetricsOverride", session, width=VIEWPORT[0], height=VIEWPORT[1],
                     deviceScaleFactor=1, mobile=False)
        browser.events = [e for e in browser.events if e.get("sessionId") != session]
        navigated = browser.call("Page.navigate", session, url=page.as_uri())
        if navigated.get("errorText"):
            return {}, [f"page does not load ({navigated['errorText']})"]
        if not browser.wait_for("Page.loadEventFired", session, browser.timeout):
            errors.append(f"page did not finish loading within {browser.timeout:.0f} s")
        browser.settle(0.3)
        facts = browser.call("Runtime.evaluate", session, expression=_PAGE_FACTS, returnByValue=True)
        if screenshot is not None:
            shot = browser.call("Page.captureScreenshot", session, format="png")
            files.atomic_write(screenshot, lambda temporary: Path(temporary).write_bytes(base64.b64decode(shot["data"])))
    finally:
        browser.call("Target.closeTarget", targetId=target)
    events = [e for e in browser.events if e.get("sessionId") == session]
    browser.events = [e for e in browser.events if e.get("sessionId") != session]
    for event in events:
        params = event.get("params", {})
        if event["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
            errors.append(f"console error: {text[:300]}")
        elif event["method"] == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            errors.append(f"JavaScript error: {(details.get('exception') or {}).get('description') or details.get('text')}")
        elif event["method"] == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(f"browser error: {entry.get('text', '')} {entry.get('url', '')}".strip())
    return facts.get("result", {}).get("value", {}), errors


def _problems(page: Path, facts: dict[str, Any]) -> list[str]:
    """What is wrong with a rendered page, from its facts."""
    problems = []
    ids = set(facts.get("ids", []))
    for href in facts.get("links", []):
        parts = urlsplit(href)
        if parts.scheme in ("http", "https", "mailto", "data", "javascript"):
            continue  # the internet is not checked: the reports must read without it, and links out are extras
        if not parts.path:
            # As browsers do: an element whose id is the fragment as written, else as percent-decoded.
            if parts.fragment and parts.fragment not in ids and unquote(parts.fragment) not in ids:
                problems.append(f"broken link {href!r}: no element with id {parts.fragment!r} on the page")
            continue
        target = (page.parent / unquote(parts.path)).resolve() if parts.scheme in ("", "file") else None
        if target is not None and not target.exists():
            problems.append(f"broken link {href!r}: {target} does not exist")
    for image in facts.get("images", []):
        if not image.get("loaded"):
            problems.append(f"figure does not load: {image.get('src') or '(no src)'}")
    for block in facts.get("stderr", []):
        problems.append(f"stderr output in the page: {block.splitlines()[0] if block else '(empty)'}")
    debris = PROGRESS_DEBRIS.search(facts.get("text", ""))
    if debris:
        problems.append(f"progress-bar output in the page: {debris.group(0)!r}")
    raw = sorted({(header, text) for header, text in facts.get("cells", [])
                  if is_raw_number(text) and not NAMING_HEADER.search(header)})
    for header, text in raw[:10]:
        problems.append(f"unformatted number {text!r} in a table (column {header!r})")
    return problems


def check_reports(
    reports_dir: str | os.PathLike[str] = REPORTS_DIR,
    screenshot_dir: str | os.PathLike[str] | None = None,
    screenshot_report: str | None = None,
    browser: str | None = None,
    timeout: float = 60.0,
) -> BrowserCheck:
    """Render the index and every report of ``reports_dir`` in headless Chromium; return each page's problems.

    With ``screenshot_dir``, the index and ``screenshot_report`` (default: the first report) are saved
    there as ``index.png`` and ``<report>.png``.
    """
    folder = resolve(reports_dir)
    executable = browser or find_browser()
    if executable is None:
        raise BrowserError(f"no Chromium found: {INSTALL_HINT}")
    index = folder / INDEX_PAGE
    reports = sorted(p.name for p in folder.glob("*.html") if REPORT_PAGE.match(p.name))
    shot_of = {INDEX_PAGE, screenshot_report or (reports[0] if reports else INDEX_PAGE)}
    session = _DevTools(executable, timeout)
    checks: list[PageCheck] = []
    try:
        queue = [INDEX_PAGE, *reports]
        seen: set[str] = set()
        while queue:
            name = queue.pop(0)
            if name in seen:
                continue
            seen.add(name)
            page = folder / name
            check = PageCheck(name)
            checks.append(check)
            if not page.is_file():
                check.problems.append(f"{page} does not exist")
                continue
            shot = Path(screenshot_dir) / f"{Path(name).stem}.png" if screenshot_dir and name in shot_of else None
            facts, errors = _render(session, page, shot)
            check.problems += errors + _problems(page, facts)
            check.links = facts.get("links", [])
            check.screenshot = shot
            if name == INDEX_PAGE:  # pages the index links are read too (the model card, ...)
                # Pages of this folder only: a run's index links the index of every run, one folder up.
                queue += [href.split("#")[0] for href in check.links
                          if href.endswith(".html") and not urlsplit(href).scheme and (folder / href).is_file()
                          and (folder / href).resolve().is_relative_to(folder.resolve())]
    finally:
        session.close()
    if index.is_file():
        linked = {href.split("#")[0] for href in checks[0].links}
        checks[0].problems += [f"report {name} is not linked from the index" for name in reports if name not in linked]
    return BrowserCheck(checks)

