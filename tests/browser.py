"""A real ``jevsearch serve`` process driven by headless Chromium (Debian's ``chromium`` via Playwright).

Used by ``tests/test_serve_browser.py`` and ``benchmarks/serve.py``. Never runs ``playwright install``:
it launches the system browser at :data:`CHROMIUM`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


@contextmanager
def serve(index, *, ready_timeout: float = 180):
    """Run ``jevsearch serve --index index`` on a free port of 127.0.0.1; yield its base URL once the
    model is loaded; stop it (its own process) afterwards."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    log = open(os.path.join(os.fspath(index), "..", f"serve-{port}.log"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "jevsearch", "serve", "--index", os.fspath(index),
                             "--port", str(port), "-q"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jevsearch serve exited with {proc.returncode}; see {log.name}")
            try:
                if get_json(base + "/api/status")["model"] == "ready":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"jevsearch serve not ready after {ready_timeout} s; see {log.name}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextmanager
def browser(args=()):
    """A headless Chromium page (1280 x 900); ``args``: more Chromium switches."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *args])
        try:
            yield b.new_page(viewport={"width": 1280, "height": 900})
        finally:
            b.close()


def search(page, base: str, query: str) -> float:
    """Load the app, type ``query``, submit; seconds until the first result thumbnail is shown."""
    page.goto(base + "/")
    page.fill("input[name=q]", query)
    t0 = time.perf_counter()
    page.click("form.search button[type=submit] >> nth=0")
    page.wait_for_function("() => { const i = document.querySelector('#results a.card img');"
                           " return i && i.complete && i.naturalWidth > 0; }")
    return time.perf_counter() - t0


def wait_heatmap(page) -> None:
    """Until the page's heat-map image has loaded (its 'computing' badge hidden)."""
    page.wait_for_function("() => { const i = document.getElementById('heat');"
                           " return document.getElementById('heatwait').hidden && i.complete && i.naturalWidth > 0; }")


def spread(png_path: str) -> tuple[float, int]:
    """(pixel standard deviation, number of distinct colours) of a screenshot: a blank one has ~0 and 1."""
    img = np.asarray(Image.open(png_path).convert("RGB"))
    return float(img.std()), len(np.unique(img.reshape(-1, 3), axis=0))
