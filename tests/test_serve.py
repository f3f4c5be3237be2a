"""The web app's HTTP surface (FastAPI TestClient against a real index built with the tiny model):
every endpoint, every error, and the security rules (read-only, page ids only, bounded input).
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from jevsearch import Engine
from jevsearch.cli import main as cli_main
from jevsearch.limits import Limits
from jevsearch.model.cpu import default_cpu_dtype
from jevsearch.serve import create_app
from tests.ingest_corpus import build_examples, tiny_encoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_PIXELS = 128 * 28 * 28
QUERY = "quarterly revenue by region"
LOCAL = "http://127.0.0.1"  # TestClient's default Host, "testserver", is refused like any foreign name


@pytest.fixture(scope="module")
def corpus(example_corpus):
    """The example corpus and its index (tests/conftest.py), shared with the integration tests: read only."""
    return example_corpus


@pytest.fixture(scope="module")
def client(corpus):
    with TestClient(create_app(corpus / "idx", limits=Limits(max_upload_bytes=200_000, max_upload_pixels=2_000_000)),
                    raise_server_exceptions=False, base_url=LOCAL) as c:
        yield c


def _hits(client, q=QUERY, k=5):
    r = client.get("/api/search", params={"q": q, "k": k})
    assert r.status_code == 200, r.text
    return r.json()["hits"]


def test_api_search_returns_the_hits_of_search_json(client, corpus, capsys):
    hits = _hits(client, k=4)
    assert cli_main(["search", QUERY, "--index", str(corpus / "idx"), "-k", "4", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    keys = ("rank", "path", "page", "snippet", "metadata")
    assert [{k: h[k] for k in keys} for h in hits] == [{k: h[k] for k in keys} for h in cli]
    np.testing.assert_allclose([h["score"] for h in hits], [h["score"] for h in cli], rtol=1e-6)
    for h in hits:
        assert h["thumbnail"] == f"/thumb/{h['page_id']}" and h["document_url"].endswith(f"#page={h['page']}")


def test_search_page_renders_a_grid_of_thumbnails(client):
    home = client.get("/")
    assert home.status_code == 200 and 'name="q"' in home.text and 'type="file" name="image"' in home.text
    r = client.get("/", params={"q": QUERY, "k": 3})
    assert r.status_code == 200 and r.text.count('class="card"') == 3
    first = _hits(client, k=1)[0]
    assert f'src="/thumb/{first["page_id"]}"' in r.text and os.path.basename(first["path"]) in r.text
    assert f"page {first['page']} \u00b7 score {first['score']:.3f}" in r.text


def test_thumbnails_are_the_stored_bytes_or_resized(client, corpus):
    h = _hits(client, k=1)[0]
    r = client.get(f"/thumb/{h['page_id']}")
    assert r.status_code == 200 and r.headers["content-type"] in ("image/webp", "image/jpeg")
    # 256 px wide, or the raster's width when the model saw fewer pixels (this test's small page budget)
    assert len(r.content) < 8000 and 240 <= Image.open(io.BytesIO(r.content)).width <= 256
    r = client.get(f"/thumb/{h['page_id']}", params={"w": 400})
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).width == 400
    assert client.get(f"/thumb/{h['page_id']}", params={"w": "big"}).status_code == 400


def test_page_view_heatmap_and_explain_api(client):
    h = _hits(client, k=1)[0]
    page = client.get(f"/page/{h['page_id']}", params={"q": QUERY})
    assert page.status_code == 200
    for word in ("quarterly", "revenue", "region"):
        assert f">{word} <small>" in page.text  # a chip per meaningful token, with its score
    assert "Query" not in page.text.split('id="tokens"')[1].split("</div>")[0]  # not the prompt
    assert f'href="/doc/{h["page_id"]}#page={h["page"]}"' in page.text

    ex = client.get(f"/api/explain/{h['page_id']}", params={"q": QUERY}).json()
    rows, cols = ex["grid"]
    assert ex["tokens"][:3] == ["Query", ":", " quarterly"] and ex["meaningful"][:3] == [False, False, True]
    assert np.array(ex["maps"]).shape == (len(ex["tokens"]), rows, cols)
    # The page's MaxSim: the hit's visual score (its score is the fused one in a hybrid search).
    assert ex["score"] == pytest.approx(h["scores"].get("visual", h["score"]), abs=1e-4) and ex["source"] == "stored"

    plain = client.get(f"/page-image/{h['page_id']}.png")
    for token in (None, 3):
        params = {"q": QUERY} if token is None else {"q": QUERY, "token": token}
        r = client.get(f"/heatmap/{h['page_id']}.png", params=params)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        img = Image.open(io.BytesIO(r.content))
        assert img.size == Image.open(io.BytesIO(plain.content)).size
    for bad in ({"q": QUERY, "token": 99}, {"q": QUERY, "token": "x"}, {}, {"q": QUERY, "alpha": 3}):
        r = client.get(f"/heatmap/{h['page_id']}.png", params=bad)
        assert r.status_code == 400 and "error" in r.json()


def _png_claiming(width, height) -> bytes:
    """A tiny PNG file whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_image_query_upload_and_its_limits(client, corpus):
    data = (corpus / "docs" / "chart.png").read_bytes()
    r = client.post("/api/search", params={"k": 3}, files={"image": ("chart.png", data, "image/png")})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert hits[0]["path"] == str(corpus / "docs" / "chart.png")  # the same picture finds itself
    qid = r.json()["query"]["image"]
    page = client.get(hits[0]["page_url"])
    assert page.status_code == 200 and f"qi={qid}" in page.text
    assert client.get(f"/heatmap/{hits[0]['page_id']}.png", params={"qi": qid}).status_code == 200
    assert client.get(f"/heatmap/{hits[0]['page_id']}.png", params={"qi": "0" * 20}).status_code == 400

    html = client.post("/", params={"k": 3}, files={"image": ("chart.png", data, "image/png")})
    assert html.status_code == 200 and html.text.count('class="card"') == 3 and "uploaded image" in html.text

    def post(payload, **kw):
        return client.post("/api/search", files={"image": ("q.png", payload, "image/png")}, **kw)

    big = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(big, "PNG")
    assert len(big.getvalue()) > 200_000
    r = post(big.getvalue())
    assert r.status_code == 413 and "bytes" in r.json()["error"]
    r = post(_png_claiming(60_000, 60_000))
    assert r.status_code == 413 and "pixels" in r.json()["error"]
    r = post(_png_claiming(2000, 1001))  # just over the app's 2 MP limit
    assert r.status_code == 413 and "2000x1001" in r.json()["error"]
    r = post(b"%PDF-1.4 not an image")
    assert r.status_code == 400 and "not a readable image" in r.json()["error"]
    r = client.post("/api/search", files={"other": ("q.png", data, "image/png")})
    assert r.status_code == 400 and "'image'" in r.json()["error"]
    r = client.post("/api/search", content=iter([b"--x\r\n"]), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 411


@pytest.mark.parametrize("params, status, words", [
    ({"q": QUERY, "k": 0}, 400, "k"), ({"q": QUERY, "k": 101}, 400, "1 to 100"), ({"q": QUERY, "k": "x"}, 400, "k"),
    ({"q": "x" * 1001}, 400, "1001 characters"), ({"q": "   "}, 400, "empty"), ({}, 400, "empty"),
])
def test_bad_queries_are_4xx_json_and_a_message_on_the_page(client, params, status, words):
    r = client.get("/api/search", params=params)
    assert r.status_code == status and words in r.json()["error"]
    if "q" in params:
        page = client.get("/", params=params)
        assert page.status_code == status and 'class="error"' in page.text and words in page.text
        assert "Traceback" not in page.text


def test_documents_are_served_by_page_id_only(client, corpus, tmp_path):
    h = next(x for x in _hits(client, k=10) if x["path"].endswith("report.pdf"))
    r = client.get(f"/doc/{h['page_id']}")
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    assert r.content == (corpus / "docs" / "report.pdf").read_bytes()
    secret = b"root:x:0:0:secret"
    (tmp_path / "secret.txt").write_bytes(secret)
    for url in ("/doc/../../etc/passwd", "/doc/..%2F..%2Fetc%2Fpasswd", "/doc/%2Fetc%2Fpasswd", "/doc//etc/passwd",
                f"/doc/{tmp_path / 'secret.txt'}", "/doc/-1", "/doc/1e3", "/doc/99999999", "/doc/" + "9" * 40,
                "/thumb/../idx", "/page/..%2Fsecret.txt"):
        r = client.get(url)
        assert r.status_code == 404, url
        assert secret not in r.content and b"root:" not in r.content


def test_a_changed_moved_or_symlinked_source_is_refused(tmp_path):
    root = build_examples(tmp_path / "c")  # its own index: this test changes the files under it
    with TestClient(create_app(root / "idx"), raise_server_exceptions=False, base_url=LOCAL) as client:
        report = next(h for h in _hits(client, k=10) if h["path"].endswith("report.pdf"))
        pid, path = report["page_id"], root / "docs" / "report.pdf"
        assert client.get(f"/doc/{pid}").status_code == 200
        original = path.read_bytes()

        (tmp_path / "secret.pdf").write_bytes(b"%PDF-1.4 secret")
        path.unlink()
        path.symlink_to(tmp_path / "secret.pdf")  # the indexed name now points elsewhere
        r = client.get(f"/doc/{pid}")
        assert r.status_code == 410 and b"secret" not in r.content and "changed since it was indexed" in r.text

        path.unlink()
        path.write_bytes(original + b"\n%% appended")
        assert client.get(f"/doc/{pid}").status_code == 410

        path.unlink()  # gone: the document cannot be served, but its thumbnail and heat-map still show
        r = client.get(f"/doc/{pid}")
        assert r.status_code == 410 and "gone" in r.text and 'class="error"' in r.text
        page = client.get(f"/page/{pid}", params={"q": QUERY})
        assert page.status_code == 200 and "gone" in page.text and "/doc/" not in page.text
        assert "stored thumbnail" in page.text
        assert client.get(f"/heatmap/{pid}.png", params={"q": QUERY}).status_code == 200
        assert client.get(f"/thumb/{pid}").status_code == 200
        assert client.get(f"/thumb/{pid}", params={"w": 300}).status_code == 200  # enlarged from the stored one


def test_index_opened_read_only_and_pages_that_left_it(tmp_path):
    root = build_examples(tmp_path / "c")
    with TestClient(create_app(root / "idx"), raise_server_exceptions=False, base_url=LOCAL) as client:
        h = _hits(client, k=1)[0]
        assert client.app.state.jev._eng.readonly
        with Engine.open(root / "idx") as writer:  # the app holds no writer lock
            writer.delete(h["path"])
        r = client.get(f"/page/{h['page_id']}", params={"q": QUERY})
        assert r.status_code == 404 and "not in the index" in r.text
        assert client.get(f"/api/explain/{h['page_id']}", params={"q": QUERY}).status_code == 404
        assert client.get(f"/doc/{h['page_id']}").status_code == 404
        assert all(x["path"] != h["path"] for x in _hits(client, k=10))


def test_no_index_is_a_message_until_one_is_built(tmp_path):
    with TestClient(create_app(tmp_path / "later"), raise_server_exceptions=False, base_url=LOCAL) as client:
        r = client.get("/api/search", params={"q": QUERY})
        assert r.status_code == 404 and "no index at" in r.json()["error"] and "jevsearch index" in r.json()["error"]
        page = client.get("/")
        assert page.status_code == 404 and "no index at" in page.text and "Traceback" not in page.text
        deadline = time.monotonic() + 60
        while (status := client.get("/api/status").json())["model"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status["model"].startswith("not loaded: no index at")
        with Engine.create(tmp_path / "later", model=tiny_encoder(), max_pixels=MAX_PIXELS) as eng:
            eng.add([os.path.join(REPO, "examples", "report.pdf")])
        assert len(_hits(client, k=2)) == 2  # no restart needed


def test_status_info_and_unknown_routes(client):
    deadline = time.monotonic() + 120  # the model loads in the background from the app's start
    while (status := client.get("/api/status").json())["model"] == "loading" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status["model"] == "ready" and status["busy"] is None
    assert status["dtype"] == str(default_cpu_dtype()).removeprefix("torch.")  # measured: float32 or bfloat16
    info = client.get("/api/info").json()
    assert info["documents"] == 3 and info["pages"] == 6
    r = client.get("/api/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = client.get("/nothing")
    assert r.status_code == 404 and 'class="error"' in r.text


def test_the_app_runs_the_model_in_the_dtype_asked(corpus):
    with TestClient(create_app(corpus / "idx", dtype="int8"), raise_server_exceptions=False, base_url=LOCAL) as c:
        deadline = time.monotonic() + 120
        while (status := c.get("/api/status").json())["model"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status["model"] == "ready" and status["dtype"] == "int8"
        assert len(_hits(c, k=2)) == 2


def test_serve_without_the_extra_says_how_to_install(tmp_path):
    code = ("import sys; sys.modules['fastapi'] = None; from jevsearch.cli import main; "
            f"sys.exit(main(['serve', '--index', {str(tmp_path)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                       env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == 1 and "pip install 'jevsearch[serve]'" in r.stderr and "Traceback" not in r.stderr


def test_cli_explain_writes_the_overlay(corpus, tmp_path, capsys):
    out = tmp_path / "why.png"
    assert cli_main(["explain", QUERY, "--index", str(corpus / "idx"), "--hit", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "\n  revenue 0." in text and "'" not in text and f"wrote {out}" in text
    assert "from the prompt and other tokens (Query, :)" in text  # the prompt's share of the score is said
    img = Image.open(out)
    assert img.mode == "RGB" and img.width > 300
    assert cli_main(["explain", QUERY, "--index", str(corpus / "idx"), "--hit", "99", "--out", str(out)]) == 1
    assert "only 6 pages" in capsys.readouterr().err


def test_an_unexpected_error_is_a_500_message_without_a_trace(corpus, caplog):
    app = create_app(corpus / "idx", warm_up=False)

    def broken():
        raise ZeroDivisionError("a bug")

    app.add_api_route("/api/broken", broken)
    app.add_api_route("/broken", broken)
    with TestClient(app, raise_server_exceptions=False, base_url=LOCAL) as client:
        r = client.get("/api/broken")
        assert r.status_code == 500 and r.json()["error"] == "internal error (ZeroDivisionError); see the server log"
        r = client.get("/broken")
        assert r.status_code == 500 and 'class="error"' in r.text and "Traceback" not in r.text and "a bug" not in r.text
    assert "ZeroDivisionError: a bug" in caplog.text  # the trace is in the server's log
