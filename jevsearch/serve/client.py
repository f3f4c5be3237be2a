"""The CLI's side of a running ``jevsearch serve``: search and explain without loading the model here.

Standard library only (no FastAPI, torch or numpy), so a command answered by the server starts in a
blink. :func:`find_server` returns a :class:`RemoteIndex` when a live server of that very index is
recorded (:mod:`jevsearch.serve.discovery`), answers on loopback within a short connect timeout,
proves it holds the record's token, and holds the same index folder; else None, and the command works
locally as without a server (``-v`` says why). A RemoteIndex answers ``search`` and ``explain`` as an
opened index does for the CLI: hits with ``path``, ``page``, ``score``, ``snippet`` and ``to_dict()``
(the rows of ``--json``), explanations with the lines ``jevsearch explain`` prints and the overlay.
Errors come back as the exceptions the local command raises (:mod:`jevsearch.serve.routes.cli`).

>>> with find_server("indexes/papers") or jevsearch.open("indexes/papers", read_only=True) as eng:  # doctest: +SKIP
...     hits = eng.search("revenue by region", k=5)
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import secrets

from jevsearch import errors
from jevsearch.serve import discovery

log = logging.getLogger(__name__)

#: Seconds to connect: on loopback a server accepts at once or refuses; anything slower is not used.
CONNECT_TIMEOUT = 0.5
#: Seconds for the hello (answered without waiting for the engine, even while a search runs).
HELLO_TIMEOUT = 5.0


def find_server(index, model=None) -> RemoteIndex | None:
    """The running ``jevsearch serve`` of the index at ``index`` to ask, or None (see the module
    docstring). ``model``: the CLI's ``--model``; a server started with another one is not used."""
    record = discovery.lookup(index)
    if record is None:
        return None
    url = f"http://{_netloc(record)}"
    if model is not None and os.path.realpath(os.fspath(model)) != record.get("model"):
        log.info("not using the server at %s: it runs with another --model (searching here)", url)
        return None
    remote = RemoteIndex(record, os.fspath(index))
    try:
        remote.conn.connect()
        hello = remote.call("GET", "/api/cli/hello", timeout=HELLO_TIMEOUT)
    except (OSError, http.client.HTTPException, _Refused) as e:
        log.info("not using the server at %s: %s (searching here)", url, e)
        remote.close()
        return None
    if hello.get("identity") is None or hello.get("identity") != discovery.index_identity(index):
        log.info("not using the server at %s: %s (searching here)", url, "it has not opened the index yet"
                 if hello.get("identity") is None else "it holds another index folder (one removed and made again "
                 "at that path since it started?)")
        remote.close()
        return None
    log.info("asking the jevsearch serve at %s (pid %s; --local searches here)", url, record["pid"])
    return remote


class RemoteIndex:
    """A running server of one index, used as the CLI uses an opened index (``with``, ``search``, ``explain``)."""

    def __init__(self, record: dict, index_as: str):
        self.record, self.index_as = record, index_as
        self.url = f"http://{_netloc(record)}"
        self.conn = http.client.HTTPConnection(record["host"], record["port"], timeout=CONNECT_TIMEOUT)

    def __enter__(self) -> RemoteIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def search(self, query: str, k: int = 10, **filters) -> list:
        """Engine.search's hits (``group_by="document"``: documents) as the server found them."""
        rows = self._ask("/api/cli/search", {"query": query, "k": k, "filters": filters})["hits"]
        return [RemoteHit(row) for row in rows]

    def explain(self, hit: RemoteHit, query: str) -> RemoteExplanation:
        """Engine.explain of ``hit`` (a hit of :meth:`search`) for ``query``."""
        body = self._ask("/api/cli/explain", {"query": query, "page_id": hit.page_id})
        return RemoteExplanation(self, hit, query, body)

    def _ask(self, path: str, body: dict):
        try:
            return self.call("POST", path, dict(body, index_as=self.index_as), timeout=None)
        except (OSError, http.client.HTTPException, _Refused) as e:
            raise errors.JevsearchError(
                f"the jevsearch serve at {self.url} (pid {self.record['pid']}) stopped answering: {e}",
                hint="rerun: with no server running the command searches here; --local always does") from None

    def call(self, method: str, path: str, body: dict | None = None, timeout: float | None = None):
        """One signed request: the answer's JSON (or bytes of a picture); the server's error raised
        again as the local command would raise it; :class:`_Refused` when the answer is not the server's."""
        nonce = secrets.token_hex(16)
        headers = {discovery.AUTH_HEADER: f"{nonce}:{discovery.sign(self.record['token'], nonce, 'client')}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=headers)
        self.conn.sock.settimeout(timeout)  # the connect timeout was for connecting: a search may wait for the model
        response = self.conn.getresponse()
        payload = response.read()
        proof = response.getheader(discovery.PROOF_HEADER) or ""
        if not secrets.compare_digest(proof, discovery.sign(self.record["token"], nonce, "server")):
            raise _Refused(f"answered {response.status} without this server's proof")
        kind = response.getheader("Content-Type", "")
        if response.status == 200:
            return payload if kind.startswith("image/") else json.loads(payload)
        error = json.loads(payload).get("cli_error") if kind.startswith("application/json") else None
        if error is None:
            raise _Refused(f"answered {response.status}")
        raise rebuild_error(error)


class _Refused(Exception):
    """The answer is not one this client can use (not the server's, or not the CLI API's)."""


class RemoteHit:
    """A hit as the server sent it: ``path``, ``page``, ``score``, ``snippet``, ``page_id``, ``metadata``;
    a document (``group_by="document"``) has ``pages``, its best pages as RemoteHits."""

    def __init__(self, row: dict):
        self._row = {k: v for k, v in row.items() if k != "rank"}
        self.path, self.doc_id, self.score = row["path"], row["path"], row["score"]
        self.metadata = row.get("metadata", {})
        self.page, self.snippet, self.page_id = row.get("page"), row.get("snippet", ""), row.get("page_id")
        self.pages = [RemoteHit(dict(p, path=row["path"], metadata=self.metadata)) for p in row.get("pages", ())]

    def to_dict(self) -> dict:
        """The JSON row, as Hit.to_dict (DocHit.to_dict for a document)."""
        return dict(self._row)


class RemoteExplanation:
    """Engine.explain's answer as ``jevsearch explain`` uses it: ``kind``, ``note``, ``meaningful``,
    ``summary()``, ``label(i)``, ``matches(i)`` and ``from_prompt(i)`` (text passages), ``overlay()``."""

    def __init__(self, remote: RemoteIndex, hit: RemoteHit, query: str, body: dict):
        self._remote, self.hit, self._query, self._body = remote, hit, query, body
        self.kind, self.note, self.meaningful = body["kind"], body["note"], body["meaningful"]

    def summary(self) -> str:
        return self._body["summary"]

    def label(self, i: int) -> str:
        return self._body["labels"][i]

    def matches(self, i: int) -> list:
        return [tuple(m) for m in self._body["matches"][i]]

    def from_prompt(self, i: int) -> bool:
        return self._body["from_prompt"][i]

    def overlay(self, token: str | None = None, alpha: float = 0.7):
        """The page with the heat-map (a PIL image), drawn by the server."""
        from PIL import Image

        data = self._remote._ask("/api/cli/overlay", {"query": self._query, "page_id": self.hit.page_id,
                                                      "token": token, "alpha": alpha})
        image = Image.open(io.BytesIO(data))
        image.load()
        return image


def rebuild_error(error: dict) -> Exception:
    """The exception the server described (routes/cli.py ``describe_error``), as the local command raises it."""
    text = error.get("text", "")
    if error.get("jevsearch"):
        cls = getattr(errors, error["type"], None)
        if not (isinstance(cls, type) and issubclass(cls, errors.JevsearchError)):
            cls = errors.JevsearchError
        e = cls.__new__(cls)
        message, hint = error["message"], error["hint"]
        Exception.__init__(e, message if hint is None else f"{message} (hint: {hint})")
        e.message, e.hint, e.cli_hint = message, hint, error["cli_hint"]
        for name, value in error.get("fields", {}).items():
            setattr(e, name, tuple(value) if isinstance(value, list) else value)
        return e
    if error["type"] == "OSError":
        return OSError(error["errno"], error["strerror"], error["filename"]) if error["strerror"] else OSError(text)
    return type(error["type"], (Exception,), {})(text)  # an unexpected error: named as the local command names it


def _netloc(record: dict) -> str:
    host = record["host"]
    return f"[{host}]:{record['port']}" if ":" in host else f"{host}:{record['port']}"
