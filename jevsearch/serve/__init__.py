"""``jevsearch serve``: a local web app to search an index and see why pages matched.

FastAPI + uvicorn, server-rendered HTML with a little plain JavaScript (no front-end build step), and a
JSON API beside it. They come with the optional ``serve`` extra (``pip install 'jevsearch[serve]'``):
the core is an embedded library and should not pull a web stack into every program that imports it.

>>> from jevsearch.serve import create_app                  # doctest: +SKIP
>>> app = create_app("indexes/papers")                     # an ASGI app; or: jevsearch serve --index ...
>>> run("indexes/papers", host="127.0.0.1", port=8000)     # doctest: +SKIP

Security model: binds 127.0.0.1 unless told otherwise; opens the index read-only; serves documents
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


def create_app(index_path, *, model=None, limits=None, warm_up: bool = True):
    """The ASGI app serving the index at ``index_path`` (opened read-only; ``model``: the recorded
    model's snapshot if it moved). ``limits``: :class:`jevsearch.serve.state.Limits`. ``warm_up``:
    load the model in the background at start, so the first search does not wait for it."""
    _require()
    from jevsearch.serve.app import build_app

    return build_app(index_path, model=model, limits=limits, warm_up=warm_up)


def run(index_path, *, host: str = "127.0.0.1", port: int = 8000, model=None, log_level: str = "warning") -> None:
    """Serve the index until interrupted (uvicorn)."""
    _require()
    import uvicorn

    uvicorn.run(create_app(index_path, model=model), host=host, port=port, log_level=log_level)
