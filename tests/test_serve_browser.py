"""``jevsearch serve`` in a real browser: headless Debian chromium driven by Playwright, against a real
server process on an index of examples/ built with the tiny checkpoint by the ``jevsearch`` command.

Skipped only where Playwright or /usr/bin/chromium is missing, and never when JEVSEARCH_REQUIRE_BROWSER
is set (``.ci/run`` sets it after installing chromium).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.browser import CHROMIUM, REPO, browser, search, serve, spread, wait_heatmap
from tests.ingest_corpus import picture, tiny_model_dir

if os.environ.get("JEVSEARCH_REQUIRE_BROWSER"):
    import playwright  # noqa: F401  -- CI: a missing browser is a failure, not a skip
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} missing (hint: apt-get install chromium)"
else:
    pytest.importorskip("playwright")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} missing (hint: apt-get install chromium)", allow_module_level=True)


NOTES = "Quarterly revenue grew in every region; the northern region led.\n\nCosts stayed flat."


@pytest.fixture(scope="module")
def example_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    shutil.copytree(os.path.join(REPO, "examples"), root / "docs")
    (root / "docs" / "notes.txt").write_text(NOTES)  # a text document: its passage is a text card
    index = root / "examples"
    r = subprocess.run([sys.executable, "-m", "jevsearch", "index", str(root / "docs"), "--index",
                        str(index), "--model", tiny_model_dir(), "-q"], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1"), timeout=600)
    assert r.returncode == 0, r.stderr
    return index


@pytest.fixture(scope="module")
def base(example_index):
    with serve(example_index) as url:
        yield url


def _csp_problems(page) -> list[str]:
    """Collects what the browser reports against the page: CSP violations, script errors, failed loads."""
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    return problems


def test_search_open_a_result_and_toggle_a_token_heatmap(base, tmp_path):
    with browser() as page:
        problems = _csp_problems(page)
        response = page.goto(base + "/")
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY" and response.headers["x-content-type-options"] == "nosniff"
        search(page, base, "quarterly revenue by region")
        cards = page.locator("#results a.card")
        assert cards.count() == 6  # the two example PDFs have 5 pages, notes.txt one passage
        names = page.locator("#results .name").all_inner_texts()
        assert set(names) == {"report.pdf", "manual.pdf", "notes.txt"}
        for i in range(page.locator("#results a.card img").count()):  # every thumbnail loaded
            assert page.locator("#results a.card img").nth(i).evaluate("i => i.naturalWidth") == 256
        assert page.locator("#results a.card img").count() == 5  # the passage: a text card, no picture
        passage = page.locator("#results a.card .passage")
        assert passage.count() == 1 and "Quarterly" in passage.inner_text() and passage.locator("mark").count() > 0
        page.screenshot(path=str(tmp_path / "results.png"))

        page.locator("#results a.card:has(img)").first.click()
        page.wait_for_selector("#tokens a.chip")
        wait_heatmap(page)
        chips = page.locator("#tokens a.chip")
        assert chips.all_inner_texts()[0].startswith("all query words ")
        assert [t.split()[0] for t in chips.all_inner_texts()[1:]] == ["quarterly", "revenue", "by", "region"]
        heat = page.locator("#heat")
        heat.screenshot(path=str(tmp_path / "all.png"))
        first_src = heat.get_attribute("src")

        chips.nth(2).click()  # "revenue": the image is swapped in place, the URL follows
        wait_heatmap(page)
        assert "token=" in heat.get_attribute("src") and heat.get_attribute("src") != first_src
        assert "token=" in page.url and "on" in chips.nth(2).get_attribute("class")
        assert page.inner_text("#legend-hi") == chips.nth(2).get_attribute("data-range").split()[1]  # key follows
        heat.screenshot(path=str(tmp_path / "revenue.png"))
        page.screenshot(path=str(tmp_path / "page.png"))

        for shot in ("results.png", "all.png", "revenue.png", "page.png"):
            std, colours = spread(str(tmp_path / shot))
            assert std > 10 and colours > 200, f"{shot} looks blank: std {std:.1f}, {colours} colours"
        assert (tmp_path / "all.png").read_bytes() != (tmp_path / "revenue.png").read_bytes()

        link = page.locator("#open-source")
        href = link.get_attribute("href")
        assert href.endswith("#page=1") or "#page=" in href
        pdf = page.request.get(base + href.split("#")[0])
        assert pdf.status == 200 and pdf.headers["content-type"] == "application/pdf" and pdf.body()[:5] == b"%PDF-"
        assert page.locator("img.legend").evaluate("i => i.naturalWidth") > 0
        assert problems == [], problems  # the scripts and styles ran under the Content-Security-Policy


def test_a_text_passage_opens_as_its_text_with_the_matched_words(base):
    with browser() as page:
        problems = _csp_problems(page)
        search(page, base, "quarterly revenue by region")
        page.locator("#results a.card:has(.passage)").click()
        page.wait_for_selector("#passage")
        assert page.locator("#heat").count() == 0 and page.locator("#passage mark").count() > 0
        assert "passage 1" in page.inner_text("h2") and "from the query words" in page.inner_text("#summary")
        page.locator("#tokens a.chip").nth(2).click()  # one token: a link, the page shows its match
        page.wait_for_selector("#tokens a.chip.on")
        assert page.locator("#passage mark").count() == 1 and "token=" in page.url
        assert problems == [], problems


def test_a_foreign_host_and_framing_are_refused_in_the_browser(base):
    port = base.rsplit(":", 1)[1]
    # DNS rebinding: evil.example resolves to this machine, so the browser sends "Host: evil.example".
    with browser(["--host-resolver-rules=MAP evil.example 127.0.0.1"]) as page:
        r = page.goto(f"http://evil.example:{port}/api/search?q=revenue")
        assert r.status == 421 and "hits" not in page.content() and r.headers["x-frame-options"] == "DENY"
        r = page.goto(f"http://evil.example:{port}/doc/0")
        assert r.status == 421
        page.goto("about:blank")  # another origin frames the app: the browser refuses to show it
        page.set_content(f'<iframe src="{base}/"></iframe>')
        page.wait_for_timeout(1000)
        frame = page.frames[1]
        assert frame.url.startswith("chrome-error:") and "jevsearch" not in frame.content()


def test_image_query_and_errors_in_the_browser(base, tmp_path):
    picture(400, 300, seed=3).save(tmp_path / "query.png")
    with browser() as page:
        page.goto(base + "/")
        page.set_input_files("input[name=image]", str(tmp_path / "query.png"))
        page.click("form.search button.alt")
        page.wait_for_selector("#results a.card img")
        assert "uploaded image" in page.inner_text("main")
        preview = page.locator("#query-image")  # the uploaded image is shown above its results
        assert preview.evaluate("i => i.complete && i.naturalWidth") > 0
        page.locator("#results a.card:has(img)").first.click()
        wait_heatmap(page)
        assert page.locator("#tokens a.chip").count() == 1  # an image query: "all" only
        page.locator("#back").click()  # the way back: the same results again
        page.wait_for_selector("#query-image")
        assert page.locator("#results a.card").count() > 0

        page.goto(base + "/?q=revenue&k=500")
        assert "out of range" in page.inner_text(".error")
        page.goto(base + "/page/123456?q=revenue")
        assert "not in the index" in page.inner_text(".error")
