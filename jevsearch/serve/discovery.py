"""How ``jevsearch search``/``explain`` find a running ``jevsearch serve`` of the same index (stdlib only).

``serve`` writes one small JSON record per index it serves into a per-user runtime folder, never into
the index (it may be on read-only storage)::

    $JEVSEARCH_RUNTIME_DIR, else $XDG_RUNTIME_DIR/jevsearch, else ~/.cache/jevsearch/servers
    <sha256 of the index's real path, 32 hex>.json   (folder 0700, file 0600)
    {"pid", "host", "port", "index": real path, "model": real path of --model or null, "token", "started"}

and removes it when it stops cleanly. A record is believed only when the folder and the file belong to
this user and no one else may write them, its process is alive and it names the same real path; the
record of a dead process is stale and removed. Only loopback servers are recorded (a server bound to
every interface is reached on its loopback address; one bound to another address is not recorded).

The token never travels: a request carries a fresh nonce and ``HMAC(token, "client:" + nonce)``, and
the answer proves the server holds the token too with ``HMAC(token, "server:" + nonce)``, so a process
that took over the port of a dead server learns nothing and cannot pass for it.

>>> sign("secret", "n1", "client") == sign("secret", "n1", "client") != sign("secret", "n1", "server")
True
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import time

log = logging.getLogger(__name__)

#: Request header: "<nonce>:<HMAC(token, 'client:' + nonce)>".
AUTH_HEADER = "X-Jevsearch-Auth"
#: Response header: HMAC(token, "server:" + the request's nonce).
PROOF_HEADER = "X-Jevsearch-Proof"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # a record is a file, never a link planted to point elsewhere


def runtime_dir() -> str:
    """The per-user folder of server records (see the module docstring)."""
    if os.environ.get("JEVSEARCH_RUNTIME_DIR"):
        return os.environ["JEVSEARCH_RUNTIME_DIR"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "jevsearch")
    return os.path.join(os.path.expanduser("~"), ".cache", "jevsearch", "servers")


def record_path(index) -> str:
    """The record file of the index at ``index`` (named by its real path, so every spelling finds it)."""
    real = os.path.realpath(os.fspath(index))
    return os.path.join(runtime_dir(), hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:32]
                        + ".json")


def index_identity(index) -> str | None:
    """``"dev:inode"`` of the index folder (None when it is not there): a folder removed and made
    again at the same path is another index, which a running server does not hold."""
    try:
        st = os.stat(os.fspath(index))
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}"


def loopback_address(host: str) -> str | None:
    """The address a local client reaches a server bound to ``host`` on; None when it has none."""
    host = host.strip("[]")
    if host in ("127.0.0.1", "localhost", "::1"):
        return host
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host)


def sign(token: str, nonce: str, role: str) -> str:
    return hmac.new(token.encode(), f"{role}:{nonce}".encode(), hashlib.sha256).hexdigest()


def check_auth(token: str, header: str | None) -> str | None:
    """The nonce of a request whose auth ``header`` was made with ``token``; None when it was not."""
    nonce, _, mac = (header or "").partition(":")
    if not nonce or len(nonce) > 128 or not hmac.compare_digest(mac, sign(token, nonce, "client")):
        return None
    return nonce


@contextlib.contextmanager
def announce(index, host: str, port: int, model=None):
    """Record a server of ``index`` listening on ``host``:``port`` while the block runs; yields its
    token (None when it cannot be reached on loopback or the record cannot be written: the server
    runs all the same, the CLI just does not use it)."""
    address = loopback_address(host)
    if address is None:
        yield None
        return
    token = secrets.token_urlsafe(32)
    path = record_path(index)
    record = {"pid": os.getpid(), "host": address, "port": port, "index": os.path.realpath(os.fspath(index)),
              "model": os.path.realpath(os.fspath(model)) if model is not None else None, "token": token,
              "started": time.time()}
    try:
        _write(path, record)
    except OSError as e:
        log.warning("cannot record this server for the CLI in %s (%s): jevsearch search will not use it",
                    os.path.dirname(path), e.strerror or e)
        yield token
        return
    try:
        yield token
    finally:
        if (_read(path) or {}).get("token") == token:  # not a newer server's record of the same index
            with contextlib.suppress(OSError):
                os.unlink(path)


def lookup(index) -> dict | None:
    """The record of a live server of ``index`` (see the module docstring), or None; removes a stale one."""
    path = record_path(index)
    record = _read(path)
    if record is None:
        return None
    if record.get("index") != os.path.realpath(os.fspath(index)):
        log.info("ignoring %s: it records another index", path)
        return None
    if not _alive(record.get("pid")):
        log.info("removing the stale record %s (its server, pid %s, is gone)", path, record.get("pid"))
        with contextlib.suppress(OSError):
            os.unlink(path)
        return None
    return record


def _write(path: str, record: dict) -> None:
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    if not _private(os.stat(folder)):
        raise OSError(f"{folder} is writable by other users")
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)


def _read(path: str) -> dict | None:
    """The record at ``path`` when it and its folder are this user's alone (None otherwise)."""
    try:
        if not _private(os.stat(os.path.dirname(path))):
            return None
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd) as f:
        if not _private(os.fstat(f.fileno()), group_read=False):
            log.info("ignoring %s: not this user's, or others may read or write it", path)
            return None
        try:
            record = json.load(f)
        except (ValueError, UnicodeDecodeError):
            return None
    ok = isinstance(record, dict) and isinstance(record.get("port"), int) and isinstance(record.get("token"), str)
    return record if ok else None


def _private(st: os.stat_result, group_read: bool = True) -> bool:
    """Owned by this user, writable by no one else (nor readable, unless ``group_read``)."""
    if not hasattr(os, "getuid"):  # no POSIX owners and modes (Windows): nothing here is known to be private
        return False
    others = stat.S_IWGRP | stat.S_IWOTH | (0 if group_read else stat.S_IRGRP | stat.S_IROTH)
    return st.st_uid == os.getuid() and not st.st_mode & others


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process took that pid: not our server
        return False
    return True
