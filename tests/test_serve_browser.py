"""``jevsearch serve`` in a real browser: headless Debian chromium driven by Playwright, against a real
server process on an index of examples/ built with the tiny checkpoint by the ``jevsearch`` command.

Skipped only where Playwright or /usr/bin/chromium is missing, and never when JEVSEARCH_REQUIRE_BROWSER
is set (``.ci/run`` sets it after installing chromium).
"""

from __future__ import annotations

import os
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


@pytest.fixture(scope="module")
def example_index(tmp_path_factory):
    index = tmp_path_factory.mktemp("browser") / "examples"
    r = subprocess.run([sys.executable, "-m", "jevsearch", "index", os.path.join(REPO, "examples"), "--index",
                        str(index), "--model", tiny_model_dir(), "-q"], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1"), timeout=600)
    assert r.returncode == 0, r.stderr
    return index


@pytest.fixture(scope="module")
def base(example_index):
    with serve(example_index) as url:
        yield url


def test_search_open_a_result_and_toggle_a_token_heatmap(base, tmp_path):
    with browser() as page:
        search(page, base, "quarterly revenue by region")
        cards = page.locator("#results a.card")
        assert cards.count() == 5  # the two example PDFs have 5 pages
        names = page.locator("#results .name").all_inner_texts()
        assert set(names) == {"report.pdf", "manual.pdf"}
        for i in range(cards.count()):  # every thumbnail loaded
            assert page.locator("#results a.card img").nth(i).evaluate("i => i.naturalWidth") == 256
        page.screenshot(path=str(tmp_path / "results.png"))

        cards.first.click()
        page.wait_for_selector("#tokens a.chip")
        wait_heatmap(page)
        chips = page.locator("#tokens a.chip")
        assert chips.all_inner_texts()[0] == "all query words"
        assert [t.split()[0] for t in chips.all_inner_texts()[1:]] == ["quarterly", "revenue", "by", "region"]
        heat = page.locator("#heat")
        heat.screenshot(path=str(tmp_path / "all.png"))
        first_src = heat.get_attribute("src")

        chips.nth(2).click()  # "revenue": the image is swapped in place, the URL follows
        wait_heatmap(page)
        assert "token=" in heat.get_attribute("src") and heat.get_attribute("src") != first_src
        assert "token=" in page.url and "on" in chips.nth(2).get_attribute("class")
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


def test_image_query_and_errors_in_the_browser(base, tmp_path):
    picture(400, 300, seed=3).save(tmp_path / "query.png")
    with browser() as page:
        page.goto(base + "/")
        page.set_input_files("input[name=image]", str(tmp_path / "query.png"))
        page.click("form.search button.alt")
        page.wait_for_selector("#results a.card img")
        assert "uploaded image" in page.inner_text("main")
        page.locator("#results a.card").first.click()
        wait_heatmap(page)
        assert page.locator("#tokens a.chip").count() == 1  # an image query: "all" only

        page.goto(base + "/?q=revenue&k=500")
        assert "out of range" in page.inner_text(".error")
        page.goto(base + "/page/123456?q=revenue")
        assert "not in the index" in page.inner_text(".error")
