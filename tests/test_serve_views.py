"""What a person sees: text passages as text cards with their matched words, heat-maps that read on a white
page with a key that matches them, one wording for tokens, results that tell folders apart, the image
query's preview and way back, and ``k`` kept across pages. TestClient against a real index (tiny model)
of two report.pdf in different folders, a text document and a picture.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from jevsearch import Engine
from jevsearch.cli import main as cli_main
from jevsearch.search.explain import (
    ALPHA,
    THRESHOLD,
    Explanation,
    PassageExplanation,
    blend,
    legend,
)
from jevsearch.serve import create_app
from tests.ingest_corpus import picture, tiny_encoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUERY = "quarterly revenue by region"
NOTES = ("Quarterly revenue grew in every region. The northern region led with revenues up twelve percent, "
         "while costs stayed flat.\n\nNext year the board expects steady growth.")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    for year, name in (("2023", "report.pdf"), ("2024", "manual.pdf")):
        (root / "docs" / year).mkdir(parents=True)
        shutil.copy(os.path.join(REPO, "examples", name), root / "docs" / year / "report.pdf")
    (root / "docs" / "notes.txt").write_text(NOTES)
    picture(320, 240, seed=4).save(root / "docs" / "chart.png")
    with Engine.create(root / "idx", model=tiny_encoder(), max_pixels=128 * 28 * 28) as eng:
        eng.add([root / "docs"])
    return root


@pytest.fixture(scope="module")
def client(corpus):
    with TestClient(create_app(corpus / "idx", warm_up=False), base_url="http://127.0.0.1",
                    raise_server_exceptions=False) as c:
        yield c


def _hits(client, k=20):
    return client.get("/api/search", params={"q": QUERY, "k": k}).json()["hits"]


def _text_hit(client):
    return next(h for h in _hits(client) if h["metadata"]["kind"] == "text")


# ----- item 6: text passages -------------------------------------------------------------------------
def test_passage_explanation_names_the_word_each_token_matched():
    passage = "Revenues grew."
    spans = np.array([[-1, -1], [-1, -1], [0, 3], [3, 8], [8, 13], [13, 14]])  # prompt x2, "Rev","enues"," grew","."
    sims = np.zeros((3, 6), np.float32)
    sims[1, 3], sims[2, 4], sims[0, 0] = 0.9, 0.5, 0.99  # "revenue" ~ "enues", "grew" ~ " grew"; prompt ~ prompt
    ex = PassageExplanation(["Query", " revenue", " grew"], np.array([False, True, True]), sims.max(1), passage,
                            spans, sims)
    assert ex.matches("revenue") == [("Revenues", 0.9)] and ex.matches(2) == [("grew", 0.5)]
    assert ex.matches(0) != [("", 0.99)]  # a prompt row is never named as a passage word
    assert [(passage[a:b], ids) for a, b, ids in ex.marks()] == [("Revenues", [1]), ("grew", [2])]
    assert ex.label(1) == "revenue 0.900" and ex.score == pytest.approx(2.39)
    with pytest.raises(ValueError, match="text passage"):
        ex.overlay()


def test_engine_explains_a_passage_on_its_stored_token_vectors(corpus):
    with Engine.open(corpus / "idx", readonly=True) as eng:
        hit = next(h for h in eng.search(QUERY, k=20, mode="visual") if h.metadata["kind"] == "text")
        ex = eng.explain(hit, QUERY)
    assert ex.kind == "text" and ex.note == "" and ex.passage == hit.text
    assert ex.score == pytest.approx(hit.score, abs=1e-4)  # the same MaxSim the search scored
    rows = ex.spans[:, 0] >= 0
    assert rows.sum() >= len(NOTES.split()) and "".join(ex.passage[a:b] for a, b in ex.spans[rows]) \
        .replace(" ", "").replace("\n", "") == NOTES.replace(" ", "").replace("\n", "")
    for i in np.nonzero(ex.meaningful)[0]:
        (word, sim), = ex.matches(i)
        assert word and word in NOTES and sim == pytest.approx(ex.sims[i, rows].max(), abs=1e-4)


def test_cli_explain_of_a_passage_lists_its_matches(corpus, capsys):
    with Engine.open(corpus / "idx", readonly=True) as eng:
        rank = 1 + next(i for i, h in enumerate(eng.search(QUERY, k=20)) if h.metadata["kind"] == "text")
    out = corpus / "why.png"
    assert cli_main(["explain", QUERY, "--index", str(corpus / "idx"), "--hit", str(rank), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "notes.txt passage 1: score" in text and 'matched "' in text and "text passage" in text
    assert "\n  revenue 0." in text and not out.exists()


def test_web_shows_a_passage_as_a_text_card(client):
    h = _text_hit(client)
    grid = client.get("/", params={"q": QUERY, "k": 20}).text
    card = re.search(rf'<a class="card" href="/page/{h["page_id"]}\?[^"]*"[^>]*>(.*?)</a>', grid, re.DOTALL).group(1)
    assert "<img" not in card and 'class="passage"' in card and "<mark" in card and "passage 1" in card
    thumb = client.get(h["thumbnail"])  # API users still get a picture, not a 410
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).width == 256

    page = client.get(h["page_url"])
    assert page.status_code == 200 and 'id="passage"' in page.text and "<mark" in page.text
    assert 'id="heat"' not in page.text and "notes.txt \u2014 passage 1" in page.text
    assert "explain draws page images" not in page.text
    ex = client.get(f"/api/explain/{h['page_id']}", params={"q": QUERY}).json()
    assert ex["kind"] == "text" and all(w in NOTES for m in ex["matches"] for w, _ in m)
    chip = client.get(h["page_url"] + "&token=3").text  # one token: only its word is marked
    assert chip.count("<mark") == 1 + chip.split('class="matches"')[1].count("<mark")
    r = client.get(f"/heatmap/{h['page_id']}.png", params={"q": QUERY})
    assert r.status_code == 400 and "text passage" in r.json()["error"]


# ----- item 12: heat-maps -----------------------------------------------------------------------------
def _explanation():
    maps = np.zeros((3, 4, 5), np.float32)
    maps[1] = np.linspace(0.1, 0.3, 20).reshape(4, 5)  # " revenue": a gentle slope
    maps[2, 3, 4] = 0.6  # " region": one hot cell
    return Explanation(["Query", " revenue", " region"], np.array([False, True, True]), maps,
                       np.array([0.4, 0.3, 0.6], np.float32), Image.new("RGB", (100, 80), "white"))


def test_heatmap_leaves_the_page_white_below_the_threshold_and_marks_the_best_cells_dark():
    ex = _explanation()
    for token in (None, 1, 2):
        img = np.asarray(ex.overlay(token=token)).astype(int)  # default opacity
        cells = img[::20, ::20][:4, :5]  # one pixel per cell (cells are 20 x 20 px)
        lo, hi = ex.scale(token)
        drawn = ex.combined(token) >= lo + THRESHOLD * (hi - lo)
        assert (cells[~drawn] == 255).all() and (cells[drawn] < 250).any(axis=-1).all()
        assert drawn.mean() <= 0.5  # never a wash over the whole page
        assert cells[3, 4].mean() < 130  # the best cell (it is the last one in each map) reads dark on white
    assert (np.asarray(ex.overlay(token=1))[::20, ::20][:4, :5] == 255).all(axis=-1).sum() >= 10  # a slope: top half


def test_the_legend_is_drawn_by_the_same_code_as_the_map(client):
    key = np.asarray(legend(ALPHA, width=200)).astype(int)

    def cell(v):  # a cell of value v on a 0..1 range, drawn over white
        return np.asarray(blend(Image.new("RGB", (10, 10), "white"), np.full((1, 1), v), ALPHA, scale=(0, 1)))[5, 5]

    assert (key[6, 0] == cell(THRESHOLD)).all() and (key[6, -1] == cell(1.0)).all()  # the faintest and hottest
    assert (cell(THRESHOLD - 0.01) == 255).all() and cell(1.0).mean() < 130 and cell(THRESHOLD).mean() < 235
    served = Image.open(io.BytesIO(client.get("/legend.png", params={"alpha": ALPHA}).content))
    assert (np.asarray(served) == np.asarray(legend(ALPHA))).all()


def test_one_wording_for_token_labels_and_the_prompts_share(client):
    h = next(x for x in _hits(client) if x["metadata"]["kind"] == "pdf")
    page = client.get(h["page_url"]).text
    ex = client.get(f"/api/explain/{h['page_id']}", params={"q": QUERY}).json()
    chips = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r'<a class="chip[^"]*"[^>]*>(.*?)</a>', page)]
    words = [i for i, m in enumerate(ex["meaningful"]) if m]
    assert chips[1:] == [ex["labels"][i] for i in words]  # what the image label says (Explanation.label)
    assert [c.split()[0] for c in chips[1:]] == ["quarterly", "revenue", "by", "region"]  # no quotes, no spaces
    words_total = sum(ex["token_scores"][i] for i in words)
    assert chips[0] == f"all query words {words_total:.3f}"
    prompt = ex["score"] - words_total
    assert f"{words_total:.3f} from the query words + {prompt:.3f} from the prompt and other tokens (Query, :)" \
        in page.replace("&#x27;", "'")
    assert 'src="/legend.png?alpha=0.7"' in page


# ----- item 13: the results and pages ------------------------------------------------------------------
def test_results_tell_two_report_pdf_apart_and_quote_the_query(client):
    r = client.get("/", params={"q": "Bob's revenue", "k": 20})
    names = re.findall(r'<div class="name"[^>]*>([^<]*)</div>', r.text)
    assert {"2023/report.pdf", "2024/report.pdf", "notes.txt", "chart.png"} <= set(names)
    assert "best pages for <q>Bob&#x27;s revenue</q>" in r.text and "&quot;Bob" not in r.text  # repr() quoted it so


def test_k_is_kept_from_the_results_to_a_page_and_back(client):
    r = client.get("/", params={"q": QUERY, "k": 3})
    links = re.findall(r'<a class="card" href="([^"]+)"', r.text)
    assert len(links) == 3 and all(parse_qs(urlparse(u.replace("&amp;", "&")).query)["k"] == ["3"] for u in links)
    page = client.get(links[0].replace("&amp;", "&")).text
    assert 'name="k" min="1" max="100" value="3"' in page
    back = re.search(r'<a id="back" href="([^"]+)"', page).group(1).replace("&amp;", "&")
    assert parse_qs(urlparse(back).query) == {"q": [QUERY], "k": ["3"]}


def test_image_query_page_shows_the_image_and_a_way_back(client, corpus):
    data = (corpus / "docs" / "chart.png").read_bytes()
    r = client.post("/", params={"k": 3}, files={"image": ("chart.png", data, "image/png")})
    src = re.search(r'<img id="query-image" src="([^"]+)"', r.text).group(1)
    preview = client.get(src)
    assert preview.status_code == 200 and Image.open(io.BytesIO(preview.content)).size[0] > 100
    link = re.search(r'<a class="card" href="([^"]+)"', r.text).group(1).replace("&amp;", "&")
    page = client.get(link).text
    back = re.search(r'<a id="back" href="([^"]+)"', page).group(1).replace("&amp;", "&")
    assert "qi=" in back and "k=3" in back
    again = client.get(back)
    assert again.status_code == 200 and again.text.count('class="card"') == 3 and src in again.text
