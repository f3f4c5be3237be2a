"""The web app against a hostile page or network: DNS rebinding (foreign Host headers), framing, content
sniffing, and server paths in error messages. Raw requests through FastAPI's TestClient and through a
real ``jevsearch serve`` socket (uvicorn); the browser side is in tests/test_serve_browser.py.
"""

from __future__ import annotations

import http.client
import os
import shutil

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from jevsearch import Engine
from jevsearch.cli import main as cli_main
from jevsearch.errors import InvalidInputError
from jevsearch.serve import create_app
from jevsearch.serve.security import HostCheck, host_name, scrub_paths
from tests.browser import serve
from tests.ingest_corpus import tiny_encoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUERY = "quarterly revenue by region"
WANT = {"content-security-policy": "frame-ancestors 'none'", "x-frame-options": "DENY",
        "x-content-type-options": "nosniff"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("sec")
    (root / "docs").mkdir()
    shutil.copy(os.path.join(REPO, "examples", "report.pdf"), root / "docs" / "report.pdf")
    with Engine.create(root / "idx", model=tiny_encoder(), max_pixels=128 * 28 * 28) as eng:
        eng.add([root / "docs"])
    return root


def _client(app, host="127.0.0.1"):
    return TestClient(app, base_url=f"http://{host}", raise_server_exceptions=False)


def _headers_ok(r):
    for name, part in WANT.items():
        assert part in r.headers.get(name, ""), f"{r.request.url}: {name} missing ({r.status_code})"
    csp = r.headers["content-security-policy"]
    assert "'unsafe-inline'" not in csp and "script-src 'self'" in csp


def test_a_foreign_host_header_is_refused_on_every_route(corpus):
    with _client(create_app(corpus / "idx", warm_up=False)) as client:
        pid = client.get("/api/search", params={"q": QUERY, "k": 1}).json()["hits"][0]["page_id"]
        for url in ("/", f"/?q={QUERY}", "/api/search?q=x", f"/doc/{pid}", f"/thumb/{pid}", "/api/info",
                    f"/page/{pid}?q=x", "/static/app.js", "/nothing"):
            for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.", "", "[::2]"):
                r = client.get(url, headers={"host": host})
                if host == "localhost.":  # the same name with its root dot
                    assert r.status_code in (200, 404), url
                    continue
                assert r.status_code == 421, (url, host)
                assert b"%PDF" not in r.content and b"report.pdf" not in r.content and "hits" not in r.text
                _headers_ok(r)
            for host in ("127.0.0.1", "localhost:8000", "LOCALHOST", "[::1]", "[::1]:1234"):
                assert client.get(url, headers={"host": host}).status_code != 421, (url, host)


def test_the_allowed_names_follow_the_bind_address_and_the_option(corpus):
    assert host_name("Search.LAN.:80") == ("search.lan", 80) and host_name("a:b:c") == ("a:b:c", None)
    check = HostCheck.for_bind("127.0.0.1", 8123)
    assert check.allows("127.0.0.1:8123") and not check.allows("127.0.0.1:8124") and not check.allows(None)
    lan = HostCheck.for_bind("192.168.1.20", 80, ["search.lan"])
    assert all(lan.allows(h) for h in ("192.168.1.20", "search.lan:80", "localhost"))
    assert not lan.allows("evil.example")
    with pytest.raises(InvalidInputError, match="allowed_hosts"):
        HostCheck.for_bind("0.0.0.0", 80)
    with pytest.raises(InvalidInputError, match="not a host name"):
        HostCheck.for_bind("127.0.0.1", 80, ["evil.example:80"])
    wide = HostCheck.for_bind("0.0.0.0", 80, ["search.lan"])
    assert wide.allows("search.lan") and not wide.allows("0.0.0.0") and not wide.allows("other.lan")

    app = create_app(corpus / "idx", warm_up=False, host="0.0.0.0", allowed_hosts=["search.lan"])
    with _client(app, "search.lan") as client:
        assert client.get("/api/info").status_code == 200
        assert client.get("/api/info", headers={"host": "evil.example"}).status_code == 421


def test_serve_on_every_address_without_names_is_a_cli_error(corpus, capsys):
    assert cli_main(["serve", "--index", str(corpus / "idx"), "--host", "0.0.0.0"]) == 1
    err = capsys.readouterr().err
    assert "--allowed-host" in err and "Traceback" not in err and "warning" not in err


def test_every_response_carries_the_security_headers(corpus):
    app = create_app(corpus / "idx", warm_up=False)

    def broken():
        raise ZeroDivisionError("a bug")

    app.add_api_route("/api/broken", broken)
    with _client(app) as client:
        hit = client.get("/api/search", params={"q": QUERY, "k": 1}).json()["hits"][0]
        pid = hit["page_id"]
        for url, status in (("/", 200), (f"/?q={QUERY}", 200), (f"/page/{pid}?q=x", 200), (f"/doc/{pid}", 200),
                            (f"/thumb/{pid}", 200), (f"/heatmap/{pid}.png?q=x", 200), ("/static/app.css", 200),
                            ("/api/status", 200), ("/?q=x&k=0", 400), ("/nothing", 404), ("/api/broken", 500)):
            r = client.get(url)
            assert r.status_code == status, url
            _headers_ok(r)
        page = client.get("/", params={"q": QUERY}).text
        assert "<script>" not in page and "<style>" not in page and " style=" not in page  # nothing inline


def test_error_messages_carry_no_absolute_server_paths(corpus, tmp_path):
    assert scrub_paths("/srv/a b/x.pdf: gone; see C:\\data\\y.pdf or /tmp/q", ["/srv/a b/x.pdf"]) == \
        "x.pdf: gone; see y.pdf or q"
    assert scrub_paths("no such page (hint: start from the search page, /)") == \
        "no such page (hint: start from the search page, /)"
    with _client(create_app(tmp_path / "not yet", warm_up=False)) as client:
        for url in ("/api/search?q=x", "/?q=x"):
            r = client.get(url)
            assert r.status_code == 404 and "no index at" in r.text and str(tmp_path) not in r.text
            assert "not yet" in r.text  # its name stays
    root = tmp_path / "moved"
    shutil.copytree(corpus, root)
    with _client(create_app(root / "idx", warm_up=False)) as client:
        pid = client.get("/api/search", params={"q": QUERY, "k": 1}).json()["hits"][0]["page_id"]
        (root / "docs" / "report.pdf").write_bytes(b"%PDF-1.4 changed")
        for url in (f"/doc/{pid}", f"/api/explain/{pid}?q=x"):
            r = client.get(url)
            assert r.status_code in (200, 410), url
            if r.status_code == 410:
                assert "report.pdf" in r.text and str(root) not in r.text, r.text


def _raw_get(base: str, path: str, host: str):
    """One HTTP/1.1 request on a socket with the Host header given (as a rebinding browser sends it)."""
    hostport = base.removeprefix("http://")
    conn = http.client.HTTPConnection(hostport, timeout=30)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_a_real_server_socket_refuses_a_rebound_host(corpus):
    with serve(corpus / "idx") as base:
        port = base.rsplit(":", 1)[1]
        status, headers, body = _raw_get(base, f"/api/search?q={QUERY.replace(' ', '+')}", "evil.example")
        assert status == 421 and b"hits" not in body and headers["x-frame-options"] == "DENY"
        status, _, body = _raw_get(base, "/doc/0", f"evil.example:{port}")
        assert status == 421 and b"%PDF" not in body
        status, headers, body = _raw_get(base, "/api/search?q=revenue", f"127.0.0.1:{port}")
        assert status == 200 and b"hits" in body and "frame-ancestors 'none'" in headers["content-security-policy"]
        assert _raw_get(base, "/api/info", f"localhost:{port}")[0] == 200
        assert _raw_get(base, "/api/info", f"localhost:{int(port) + 1}")[0] == 421  # not the port it serves
