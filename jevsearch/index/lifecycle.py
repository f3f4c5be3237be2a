"""Creating, opening and closing an index directory (see :class:`jevsearch.index.Index` for its layout).

A new index is built in a temporary directory and moved into place, so a crash never leaves a
half-created index; opening takes the writer lock and cleans what a crashed writer left.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil

from jevsearch.errors import CorruptIndexError, IndexExistsError, InvalidInputError
from jevsearch.index import text
from jevsearch.index.layout import new_layout
from jevsearch.index.state import IndexState
from jevsearch.search import fde as fde_encoder
from jevsearch.store import fde, textindex, validate
from jevsearch.store.hnsw import FILE_NAME, HnswGraph
from jevsearch.store.lmdbenv import (
    CURRENT,
    ENV_PREFIX,
    current_env,
    fsync_dir,
    restore_current,
    store_dirs,
)
from jevsearch.store.lmdbstore import PageStore
from jevsearch.store.lock import WriterLock
from jevsearch.store.manifest import new_manifest


def create_dir(path, single_dim: int, single_full_dim: int | None, multi_dim: int, codec: str | None,
               keep_exact: bool | None, pool_factor: int | None, multi_dtype: str | None, hnsw_m: int,
               ef_construction: int, ef_search: int, model_info: dict | None, text_index: bool | None,
               stage1: str = "union") -> str:
    """Make the index directory (arguments: Index.create's); returns its path."""
    path = index_path(path)
    existing = os.path.isdir(path)
    # Another create's work folder (or a crashed one's) does not make the folder taken.
    if os.path.exists(path) and (not existing or any(not n.startswith(_TMP_PREFIX) for n in os.listdir(path))):
        raise IndexExistsError(f"{path}: already exists and is not empty "
                               "(hint: open it, or pick a new path)",
                               cli_hint="pick a new or empty folder for --index")
    manifest = _new_manifest(single_dim, single_full_dim, multi_dim, codec, keep_exact, pool_factor, multi_dtype,
                             hnsw_m, ef_construction, ef_search, model_info, text_index)
    manifest = with_stage1(manifest, stage1)
    parent = os.path.dirname(os.path.abspath(path))
    if not existing:
        os.makedirs(parent, exist_ok=True)
    state = {"next_page_id": 0, "gen": 0, "epoch": 0, "docs": 0, "pages": 0, "tokens": 0, "tombs": 0,
             "fields": 1}
    tmp = _new_dir(path if existing else parent)
    try:
        PageStore.initialise(tmp, manifest, state)
        HnswGraph(single_dim, hnsw_m, ef_construction, ef_search).save(tmp, epoch=0, next_page_id=0)
        if manifest.get("fde"):
            HnswGraph(manifest["fde"]["out"], hnsw_m, ef_construction, ef_search).save(
                tmp, epoch=0, next_page_id=0, file_name=fde.FILE_NAME)
        if manifest.get("text_index"):
            textindex.TextIndex.create(tmp, gen=0, epoch=0).close()
        if existing:
            # The store first: a create racing into the same folder fails there, before moving
            # anything of its own; CURRENT, which makes the folder an index, last.
            for name in sorted(os.listdir(tmp), key=lambda n: (n == CURRENT, not n.startswith(ENV_PREFIX))):
                os.rename(os.path.join(tmp, name), os.path.join(path, name))
            os.rmdir(tmp)
        else:
            os.rename(tmp, path)  # fails if another process got there first
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise IndexExistsError(f"{path}: another process is creating an index here ({e.strerror}) "
                                   "(hint: wait for it to finish, then open it)",
                                   cli_hint="another jevsearch command is creating it: wait for it to "
                                   "finish and rerun") from e
        raise
    fsync_dir(path if existing else parent)
    return path


def _new_manifest(single_dim, single_full_dim, multi_dim, codec, keep_exact, pool_factor, multi_dtype, hnsw_m,
                  ef_construction, ef_search, model_info, text_index) -> dict:
    layout = new_layout(validate.check_k(multi_dim, "multi_dim"), codec, keep_exact, pool_factor, multi_dtype,
                        single_dim=single_dim)
    manifest = layout.manifest(new_manifest(
        single_dim=single_dim, single_full_dim=single_full_dim, multi_dim=multi_dim, multi_dtype="float16",
        hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search, model_info=model_info))
    if text_index or (text_index is None and textindex.available()):
        textindex.tantivy()  # MissingDependencyError with the install command
        manifest["text_index"] = True
    return manifest


def with_stage1(m: dict, stage1: str) -> dict:
    """``m`` with the stage 1 it keeps: "union" records the FDE encoder's parameters (``"fde"``:
    :func:`jevsearch.search.fde.params`, from the multi-vectors' size), "single" records that the
    index keeps none (an index with neither was made before FDEs existed).

    >>> with_stage1({"multi_dim": 128}, "union")["fde"]["out"], with_stage1({"multi_dim": 8}, "single")
    (2560, {'multi_dim': 8, 'stage1': 'single'})
    """
    m = {k: v for k, v in m.items() if k not in ("fde", "stage1")}
    if stage1 == "union":
        return dict(m, fde=fde_encoder.params(m["multi_dim"]), stage1="union")
    if stage1 == "single":
        return dict(m, stage1="single")
    raise InvalidInputError(f"stage1: {stage1!r} (hint: 'union' or 'single')")


def open_store(path: str, readonly: bool, repair: bool) -> tuple[PageStore, WriterLock | None]:
    """The store of the index at ``path`` and, for a writer, its lock (arguments: Index.open's)."""
    try:
        current_env(path)  # NotAnIndexError before touching anything (no lock file in a random dir)
    except CorruptIndexError:
        if not (repair and not readonly and store_dirs(path)):
            raise
    lock = None if readonly else WriterLock(path)
    store = None
    try:
        if repair and lock is not None and not os.path.exists(os.path.join(path, "CURRENT")):
            restore_current(path)
        store = PageStore(path)
        if lock is not None:
            HnswGraph.remove_stale_temp(path, (FILE_NAME, fde.FILE_NAME))
            store.remove_stale()
            store.create_missing_tables()
            store.repair_manifest()
        return store, lock
    except BaseException:
        if store is not None:
            store.close()
        if lock is not None:
            lock.release()
        raise


def close(st: IndexState) -> None:
    """Release every handle of ``st`` (the HNSW saved first by the caller); the store set to None."""
    for scorer in st.scorers.values():
        scorer.close()
    text.close(st)
    st.view.close()
    st.fde_view.close()
    st.store.close()
    st.store = None
    if st.writer_lock is not None:
        st.writer_lock.release()
    st.view = st.fde_view = None


_TMP_PREFIX = ".jevsearch-create-"


def index_path(path) -> str:
    path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise InvalidInputError(f"index path: {path!r} is empty (hint: name a folder, e.g. indexes/papers)")
    return path


def _new_dir(parent: str) -> str:
    """A new uniquely named directory in ``parent`` with the umask's mode (mkdtemp forces 0700, which
    the index folder would keep)."""
    while True:
        tmp = os.path.join(parent, f"{_TMP_PREFIX}{secrets.token_hex(6)}")
        try:
            os.mkdir(tmp)
            return tmp
        except FileExistsError:
            continue
