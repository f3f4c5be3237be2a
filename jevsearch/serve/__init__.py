"""``jevsearch serve``: a local web app to search an index and see why pages matched.

FastAPI + uvicorn, server-rendered HTML with a little plain JavaScript (no front-end build step), and a
JSON API beside it. They come with the optional ``serve`` extra (``pip install 'jevsearch[serve]'``):
the core is an embedded library and should not pull a web stack into every program that imports it.

>>> from jevsearch.serve import create_app                  # doctest: +SKIP
>>> app = create_app("indexes/papers")                     # an ASGI app; or: jevsearch serve --index ...
>>> run("indexes/papers", host="127.0.0.1", port=8000)     # doctest: +SKIP

Security model: binds 127.0.0.1 unless told otherwise and answers only requests addressed to it by
a name it was given (``Host`` header: no DNS rebinding); sends a strict Content-Security-Policy and
no-framing headers; opens the index read-only; serves documents
only by page id, and only while the file on disk is the one indexed (same SHA-256); bounds queries,
``k`` and uploaded images (bytes and pixels). See :mod:`jevsearch.serve.app`.
"""

from __future__ import annotations

from jevsearch.errors import JevsearchError

INSTALL_HINT = "pip install 'jevsearch[serve]'"


def _require() -> None:
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (image uploads)
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise JevsearchError(f"jevsearch serve: {e.name} is not installed: the web app needs FastAPI, uvicorn and "
                             f"python-multipart (hint: {INSTALL_HINT})") from None


def create_app(index_path, *, model=None, limits=None, warm_up: bool = True, host: str = "127.0.0.1",
               port: int | None = None, allowed_hosts=(), dtype=None):
    """The ASGI app serving the index at ``index_path`` (opened read-only; ``model``: the recorded
    model's snapshot if it moved; ``dtype``: what it computes in, as ``Engine.open`` takes it). ``limits``: :class:`jevsearch.limits.Limits`. ``warm_up``:
    load the model in the background at start, so the first search does not wait for it.

    ``host``/``port``: where it will be served; requests must name it (or a loopback name, or one of
    ``allowed_hosts``) in their Host header, else 421. A wildcard ``host`` ("0.0.0.0", "::") needs
    ``allowed_hosts`` (InvalidInputError otherwise). See :mod:`jevsearch.serve.security`."""
    _require()
    from jevsearch.serve.app import build_app
    from jevsearch.serve.security import HostCheck

    hosts = HostCheck.for_bind(host, port, allowed_hosts)
    return build_app(index_path, model=model, limits=limits, warm_up=warm_up, hosts=hosts, dtype=dtype)


def run(index_path, *, host: str = "127.0.0.1", port: int = 8000, model=None, log_level: str = "warning",
        allowed_hosts=(), dtype=None) -> None:
    """Serve the index until interrupted (uvicorn); ``allowed_hosts``: as in :func:`create_app`.

    While it runs, ``jevsearch search``/``explain`` of the same index ask it instead of loading the
    model: it is recorded for them (:mod:`jevsearch.serve.discovery`) once its port is bound (port 0:
    one the system picks) and the record is removed when it stops."""
    _require()
    import socket

    import uvicorn

    from jevsearch.serve.discovery import announce

    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    try:  # bound before it is announced, so a CLI that finds the record can connect
        sock = socket.create_server((host.strip("[]"), port), family=family)
    except OSError as e:
        raise JevsearchError(f"cannot listen on {host}:{port}: {e.strerror or e} (hint: another --port, or stop "
                             "what uses it)") from None
    port = sock.getsockname()[1]
    app = create_app(index_path, model=model, host=host, port=port, allowed_hosts=allowed_hosts, dtype=dtype)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
    with sock, announce(index_path, host, port, model) as token:
        app.state.jev.cli_token = token
        server.run(sockets=[sock])
