"""The documentation site: built strictly by mkdocs (no broken link or anchor, no missing API
reference, every page in the navigation), then opened in a real browser (headless Chromium)
from a local HTTP server: its search (JavaScript, a web worker) finds what a reader searches
for, and a screenshot of the front page is left in the build directory for review."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.browser import Chromium

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "build" / "site"
SCREENSHOT = SITE / "front-page.png"


@pytest.fixture(scope="module")
def site() -> Path:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--clean",
                           "--site-dir", str(SITE)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    return SITE


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_site_builds_strictly_with_every_page(site):
    for page in ("index.html", "tutorial/first-processor/index.html",
                 "tutorial/first-wasm-filter/index.html", "how-to/operate/index.html",
                 "explanation/processing-mode/index.html", "reference/exit-codes/index.html"):
        assert (site / page).is_file(), page
    # The CLI reference is generated from the click commands: every command is there.
    from extctl.cli import _COMMANDS
    cli = (site / "reference" / "cli" / "index.html").read_text()
    for name in _COMMANDS:
        assert f"extctl {name}" in cli, name
    assert "Sentinel" not in cli  # click's help text, not its internal defaults
    # The API reference is rendered from the docstrings, not an empty page.
    api = (site / "reference" / "api" / "extproc.testing" / "index.html").read_text()
    assert "ServerThread" in api and "run_sync" in api


def test_the_search_finds_a_field_and_the_front_page_is_captured(served):
    with Chromium() as browser:
        browser.goto(f"{served}/?q=statusOnError")
        hits = browser.wait_for(
            "[...document.querySelectorAll('.md-search-result__item a')].map(a => a.href)")
        pages = {hit.split("?")[0].removeprefix(served) for hit in hits}
        assert "/reference/processor/" in pages, hits
        assert "/reference/generated-resources/" in pages, hits
        browser.goto(f"{served}/")
        title = browser.evaluate("document.querySelector('h1').textContent")
        assert title.strip().rstrip("¶") == "envoy-extkit", json.dumps(title)  # permalink
        browser.screenshot(SCREENSHOT)
    assert SCREENSHOT.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert SCREENSHOT.stat().st_size > 10_000
