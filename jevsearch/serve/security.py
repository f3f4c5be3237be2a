"""Which requests the web app answers, what every response carries, and what error messages may say.

Plain ASGI and string functions (no FastAPI), so the rules are testable on their own.

- **Host check** (DNS rebinding): a page on ``evil.example`` whose name is made to resolve to 127.0.0.1
  can make the victim's browser send requests to the app; they arrive with ``Host: evil.example``.
  The app answers only Host names it was told are its own: the loopback names (``127.0.0.1``,
  ``localhost``, ``[::1]``), the address it binds when that is a name or an address, and any
  ``allowed`` name; with a port, only the port it serves on (when known). Anything else gets 421.
- **Headers** on every response (errors and refusals included): a Content-Security-Policy that allows
  only the app's own scripts, styles, images and fetches and no framing, ``X-Frame-Options: DENY``,
  ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``.
- **Error messages** name files by their base name: an absolute path of the server's disk is not the
  business of whoever reads an error page.

>>> hosts = HostCheck.for_bind("127.0.0.1", port=8000)
>>> [hosts.allows(h) for h in ("127.0.0.1:8000", "localhost", "[::1]:8000", "evil.example", "localhost:9")]
[True, True, True, False, False]
>>> scrub_paths("/home/ann/docs/report.pdf: page 3: damaged", ["/home/ann/docs/report.pdf"])
'report.pdf: page 3: damaged'
"""

from __future__ import annotations

import os
import re

from jevsearch.errors import InvalidInputError

#: Names a local client may use to reach a server bound to a loopback address.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
#: Bind addresses that listen on every interface: the names clients use cannot be guessed from them.
WILDCARD_BINDS = ("0.0.0.0", "::", "")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)


def host_name(value: str) -> tuple[str, int | None] | None:
    """(name, port) of a Host header value, lower-cased, without IPv6 brackets or a trailing dot;
    None when it is malformed.

    >>> host_name("LocalHost:8000"), host_name("[::1]"), host_name("a b"), host_name("x:y")
    (('localhost', 8000), ('::1', None), None, None)
    """
    value = value.strip().lower()
    port = None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1:]
    else:
        name, sep, rest = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
        rest = ":" + rest if sep else ""
    if rest:
        if not rest.startswith(":") or not rest[1:].isdigit() or len(rest) > 6:
            return None
        port = int(rest[1:])
    name = name.rstrip(".")
    if not name or not re.fullmatch(r"[a-z0-9._:-]+", name):
        return None
    return name, port


class HostCheck:
    """The Host names (and port) the app answers to; see the module docstring."""

    def __init__(self, names, port: int | None = None):
        self.names = frozenset(names)
        self.port = port

    @classmethod
    def for_bind(cls, host: str = "127.0.0.1", port: int | None = None, allowed=()) -> HostCheck:
        """The check for a server bound to ``host``: loopback names, ``host`` itself unless it is a
        wildcard (0.0.0.0, ::), and ``allowed``. A wildcard bind without ``allowed`` is refused: the
        names clients will use must be said (InvalidInputError)."""
        names = set(LOOPBACK_NAMES)
        for value in allowed:
            parsed = host_name(str(value))
            if parsed is None or parsed[1] is not None:
                raise InvalidInputError(f"allowed host {value!r}: not a host name (hint: a name or address "
                                        "without a port, e.g. search.lan or 192.168.1.20)")
            names.add(parsed[0])
        if host.strip("[]") in WILDCARD_BINDS:
            if not allowed:
                raise InvalidInputError(
                    f"host {host}: listens on every address, so the names browsers will use for it are not known "
                    "(hint: name them, e.g. allowed_hosts=['search.lan', '192.168.1.20'])",
                    cli_hint=f"jevsearch serve --host {host} --allowed-host search.lan --allowed-host 192.168.1.20")
        else:
            parsed = host_name(host)
            if parsed is None:
                raise InvalidInputError(f"host {host!r}: not a host name or address")
            names.add(parsed[0])
        return cls(names, port)

    def allows(self, header: str | None) -> bool:
        parsed = host_name(header) if header else None
        if parsed is None:
            return False
        name, port = parsed
        return name in self.names and (port is None or self.port is None or port == self.port)


class Guard:
    """ASGI middleware: refuses requests whose Host header ``hosts`` does not allow (421), and adds
    :data:`HEADERS` to every response that passes through it."""

    def __init__(self, app, hosts: HostCheck):
        self.app, self.hosts = app, hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", ())}
                message = dict(message, headers=[*message.get("headers", ()),
                                                 *((k, v) for k, v in HEADERS if k not in have)])
            await send(message)

        if not self.hosts.allows(host):
            body = (f"421 misdirected request: this server does not answer to the host name {host!r:.80} "
                    "(hint: open it by the address it was started on, or start it with "
                    "--allowed-host NAME)\n").encode()
            await send_with_headers({"type": "http.response.start", "status": 421, "headers": [
                (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return None
        return await self.app(scope, receive, send_with_headers)


# An absolute POSIX or Windows path: from a separator (or drive) up to whitespace, a quote or a colon
# followed by a space (messages read "path: reason").
_ABS_PATH = re.compile(r"(?<![\w.~])(?:[A-Za-z]:)?[/\\](?:[^\s'\"<>|/\\]+[/\\])+"  # drive, folders
                       r"([^\s'\"<>|/\\]*?)(?=:\s|:$|[\s'\",;)]|$)")  # the base name, up to where it ends


def scrub_paths(message: str, known=()) -> str:
    """``message`` with absolute paths replaced by their base name: first the ``known`` ones (exact,
    so names with spaces go whole), then anything else shaped like one."""
    for path in sorted({os.fspath(p) for p in known if p}, key=len, reverse=True):
        if os.path.isabs(path):
            message = message.replace(path, os.path.basename(path.rstrip("/\\")) or path)
    return _ABS_PATH.sub(lambda m: m.group(1) or "(a folder)", message)
