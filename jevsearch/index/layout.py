"""How an index stores its page vectors, and converting an index from one way to another.

An index's :class:`Layout` is read from its manifest (format version 3 records it, 4 when the
singles are cut to their prefix; older indexes are plain floats):

* ``codec``: how the ``multi`` table holds each page's tokens (:mod:`jevsearch.search.codecs`):
  ``fp16`` (256 B per 128-d token, today's storage), ``int8`` (132 B) or ``binary`` (16 B, one sign
  bit per dim).
* ``keep_exact``: also keep each page's float16 tokens in the ``exact`` table. A search then scores
  the codes of its ``candidates`` and reads the exact tokens of only the best of them for the final
  exact MaxSim (:mod:`jevsearch.index.search`: a window that widens while a page outside it could
  still reach the top k, or a fixed ``rescore``); its hits and scores are those of float16 storage
  whenever the codes keep the true top k inside the window.
* ``pool_factor`` 1, 2 or 3: each page's tokens are pooled at ingest (:mod:`jevsearch.search.pooling`),
  leaving ~1/f of them; queries never are. A pooled page's rows no longer follow its patch grid, so
  ``Engine.explain`` recomputes its heat-maps from the source file.
* single vectors: float16 in format version 3 (float32 before). Single vectors serve to rebuild the
  HNSW (whose own copies are float16 already) by re-truncating them (Matryoshka: a prefix,
  renormalised), insensitive to float16's 3 significant digits (cosine error ~1e-6), so the 4 KB per
  page float32 would add buys nothing. A layout with float tokens (fp16 codes or ``keep_exact``) keeps
  all D dims (also what ``search_singles(exact=True)`` scans). A codes-only layout keeps the first
  ``single_dim`` dims (``single_prefix``, format version 4), exactly what the rebuild reads: 2048
  float16 dims plus a checksum are 4104 B, one LMDB value of two 4 KB pages, 8 KB per page, more than
  a page's 770 binary codes (12 KB in 3-4 pages); 128 dims are 264 B, sharing LMDB pages with others.

Conversion (``Index.compact(codec=...)``): :func:`conversion` is a :class:`~jevsearch.store.rewrite.Rewrite`
that re-encodes every page into a fresh store swapped in atomically. It needs the float tokens
(``fp16`` codes or kept exact tokens) unless nothing but dropping the exact tokens is asked.

>>> m = {"multi_dim": 128, "multi_dtype": "float16", "single_dtype": "float32"}
>>> Layout.of(m)
Layout(codec='fp16', keep_exact=False, pool_factor=1, single_dtype='float32')
>>> Layout.of(with_codec(m, "binary", True, 2)).bytes_per_token
{'multi': 16, 'exact': 256}
>>> Layout.of(with_codec(dict(m, single_dim=128), "binary", False, 1, single_prefix=True)).single_prefix
128
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from jevsearch.errors import CorruptIndexError, FormatVersionError, InvalidInputError
from jevsearch.search import codecs, pooling, rerank
from jevsearch.store import validate, verify
from jevsearch.store.hnsw import truncate_normalize
from jevsearch.store.lmdbstore import (
    EXACT,
    PAGE_REC,
    PageStore,
    dump_json,
    load_json,
    page_key,
)
from jevsearch.store.manifest import MULTI_DTYPES, upgraded, with_codec
from jevsearch.store.rewrite import Rewrite
from jevsearch.store.schema import FDE
from jevsearch.store.visual import PageView

__all__ = ["DEFAULT_CODEC", "Layout", "conversion", "new_layout"]

# The codec of a new index, and keep_exact when not given (kept for int8 and binary): binary codes
# with the exact tokens kept give the hits and scores of float16 storage (recall@10 0.994-0.996 against
# fp16 two-stage at the same candidates) while a search reads 1/16 of the bytes for its candidates and
# scores them 2.2x faster; see README, "Compact multi-vectors", for the measurements.
DEFAULT_CODEC = "binary"
DEFAULT_KEEP_EXACT = True
# A search's default (candidates, rescore); rescore is raised to 3k. fp16: 100 candidates. Codes that
# rank as fp16 does (binary with exact tokens; int8, within 1e-2 of its scores) and are scored by the
# int8 kernel cost 0.4-0.6x fp16 per candidate (benchmarks/search.py, k=10): they take 200 candidates,
# recall@10 against exhaustive 0.968 at 10k pages (fp16 at 100: 0.918) at 0.86-0.95x fp16's latency at
# 100, 1.08x at 100k pages, where the HNSW's share grows (250 candidates: 0.974 at 0.98-1.07x at 10k,
# 1.25x at 100k). Rescoring 30 keeps fp16's top 10 at 10k and 100k pages (1.0 at 100 candidates; 20:
# 1.0 at 10k but 0.992 at 100k; 16: 0.996 / 0.986), for ~0.08 ms per page more. Binary codes alone
# rank by the signs (0.79-0.82 of the exhaustive top 10 whatever the candidates), and int8 on a CPU
# whose int8 matmul saturates costs what fp16 does: 100. DEFAULT_RESCORE is where the default window
# starts: it widens while a page outside could still enter the top k (rerank.rescore_more).
DEFAULT_CANDIDATES, WIDE_CANDIDATES, DEFAULT_RESCORE = 100, 200, 30


@dataclass(frozen=True, eq=False, repr=False)
class Layout:
    """How one index stores page vectors (see the module docstring). Immutable; compare with ==."""

    codec: codecs.Codec
    keep_exact: bool = False
    pool_factor: int = 1
    single_dtype: np.dtype = np.dtype(np.float32)
    single_prefix: int = 0  # dims of each single vector stored (the index's single_dim); 0: all of them

    @classmethod
    def of(cls, manifest: dict) -> Layout:
        """The layout a manifest describes; FormatVersionError for a codec this version does not know."""
        name = manifest.get("codec") or manifest["multi_dtype"]
        try:
            codec = codecs.get(name, manifest["multi_dim"])
        except InvalidInputError:
            raise FormatVersionError(f"index codec {name!r} is not one this jevsearch reads "
                                     "(hint: upgrade jevsearch)") from None
        return cls(codec, bool(manifest.get("keep_exact")), int(manifest.get("pool_factor", 1)),
                   np.dtype(manifest.get("single_dtype", "float32")), int(manifest.get("single_stored_dim") or 0))

    def __eq__(self, other) -> bool:
        return isinstance(other, Layout) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self):
        return self.codec.name, self.codec.dim, self.keep_exact, self.pool_factor, self.single_dtype.name, \
            self.single_prefix

    def __repr__(self) -> str:
        return (f"Layout(codec={self.codec.name!r}, keep_exact={self.keep_exact}, pool_factor={self.pool_factor}, "
                f"single_dtype={self.single_dtype.name!r}"
                + (f", single_prefix={self.single_prefix})" if self.single_prefix else ")"))

    def __str__(self) -> str:
        """In words: "binary codes + exact tokens, pooled by 2"."""
        return (f"{self.codec.name} codes" + (" + exact tokens" if self.keep_exact else "")
                + (f", pooled by {self.pool_factor}" if self.pool_factor > 1 else ""))

    @functools.cached_property  # read per page on the search path: made once
    def exact_codec(self) -> codecs.Codec | None:
        """The codec of the ``exact`` table (float16), None when exact tokens are not kept."""
        return codecs.get("fp16", self.codec.dim) if self.keep_exact else None

    @property
    def has_floats(self) -> bool:
        """Whether the stored tokens include float ones (float codes or exact tokens)."""
        return self.keep_exact or self.codec.name in ("fp16", "fp32")

    @functools.cached_property
    def bytes_per_token(self) -> dict[str, int]:
        """Stored bytes per token of each per-token table."""
        out = {"multi": self.codec.bytes_per_token}
        if self.keep_exact:
            out[EXACT] = self.exact_codec.bytes_per_token
        return out

    def depth(self, k: int, candidates, rescore) -> tuple[int, int]:
        """A search's (candidates, rescore) from the caller's values (None: this layout's default,
        see DEFAULT_CANDIDATES), checked: InvalidInputError names a bad one, and ``rescore`` above
        ``candidates``. Both are raised to ``k``.

        >>> Layout(codecs.get("binary", 128), keep_exact=True).depth(10, 100, 200)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        jevsearch.errors.InvalidInputError: rescore: 200 is more than candidates (100) (hint: ...)
        """
        wide = self.codec.kernel == "int8" and (self.keep_exact or self.codec.name == "int8")
        default_c, default_r = WIDE_CANDIDATES if wide else DEFAULT_CANDIDATES, DEFAULT_RESCORE
        candidates = default_c if candidates is None else validate.check_k(candidates, "candidates")
        if rescore is None:
            rescore = min(max(default_r, 3 * k), candidates)
        elif validate.check_k(rescore, "rescore") > candidates:
            raise InvalidInputError(f"rescore: {rescore} is more than candidates ({candidates}) (hint: rescore pages "
                                    "are picked among the candidates: raise candidates or lower rescore)")
        return max(candidates, k), max(rescore, k)

    def encode(self, item: dict) -> dict:
        """A document checked by ``validate.prepare_documents`` -> the same dict in its stored form:
        ``multis`` replaced by ``codes`` (P stored values), ``exact`` (P float16 values, or None) and
        ``tokens`` (each page's token count after pooling); ``singles`` in ``single_dtype`` (their
        ``single_prefix`` when set; ``single_full_dim``: their D as given)."""
        multis = pooling.pool_pages(item.pop("multis"), self.pool_factor)
        exact = self.exact_codec
        singles = item["singles"][:, : self.single_prefix or None]
        return dict(item, codes=[self.codec.encode(m) for m in multis], tokens=[len(m) for m in multis],
                    exact=None if exact is None else [exact.encode(m) for m in multis],
                    single_full_dim=item["singles"].shape[1],
                    singles=torch.from_numpy(np.ascontiguousarray(singles)).to(_TORCH[self.single_dtype.name]).numpy())

    def stored(self, store: PageStore, txn, doc: dict, single_dim: int) -> dict:
        """Document ``doc``'s stored values in :meth:`encode`'s form (copies: valid after ``txn``), for
        a copy that encodes nothing again; CorruptIndexError when a value is missing."""
        ids = range(doc["first"], doc["first"] + doc["pages"])
        values = {t: [store.get(txn, t, page_key(pid)) for pid in ids]
                  for t in ("single", "multi") + ((EXACT,) if self.keep_exact else ())}
        records = [store.page(txn, pid) for pid in ids]
        if any(v is None for vs in values.values() for v in vs) or None in records:
            raise CorruptIndexError(f"{doc['doc_id']}: stored values missing (hint: Index.verify() lists them; "
                                    "re-add the document from its file)")
        singles = np.stack([np.frombuffer(v, store.single_dtype) for v in values["single"]])
        fdes = [store.get(txn, FDE, page_key(pid)) for pid in ids] if store.has_table(FDE) else []
        return {"singles": singles, "fde": [None if v is None else bytes(v) for v in fdes] or None, "codes": [bytes(v) for v in values["multi"]],
                "exact": [bytes(v) for v in values[EXACT]] if self.keep_exact else None,
                "tokens": [r[2] for r in records], "numbers": doc.get("page_numbers"),
                "texts": [store.text(txn, pid) for pid in ids] if doc["text"] else None,
                "views": [store.view(txn, pid) or PageView() for pid in ids],
                "truncated": truncate_normalize(singles, single_dim)}

    def scorers(self, device, dtype) -> dict[str, rerank.Scorer]:
        """A scorer per table a search reads: "multi" (the codes) and, when kept, "exact"."""
        out = {"multi": rerank.Scorer(self.codec.dim, self.codec, device, dtype)}
        if self.keep_exact:
            out[EXACT] = rerank.Scorer(self.codec.dim, self.exact_codec, device, dtype)
        return out

    def tokens(self, store: PageStore, txn, page_id: int, n: int) -> np.ndarray:
        """A page's best stored float tokens [n, d] (float32, a copy): the exact ones when kept, else
        its codes decoded. ChecksumError when damaged; CorruptIndexError when missing."""
        table, codec = (EXACT, self.exact_codec) if self.keep_exact else ("multi", self.codec)
        raw = store.get(txn, table, page_key(page_id))
        if raw is None:
            raise _missing(store, table, page_id)
        return codec.decode(raw, n)

    def parts(self) -> list[verify.Part]:
        """What :func:`jevsearch.store.verify.check_index` checks of each page's tokens."""
        out = [_part("multi", self.codec)]
        if self.keep_exact:
            out.append(_part(EXACT, self.exact_codec))
        return out

    def manifest(self, m: dict) -> dict:
        """``m`` rewritten to describe this layout (plain float16 without the new fields: version 2)."""
        if self.codec.name in ("fp16", "fp32") and not self.keep_exact and self.pool_factor == 1 \
                and self.single_dtype == np.float32:
            m = {k: v for k, v in m.items() if k not in ("codec", "keep_exact", "pool_factor")}
            return dict(m, format_version=2 if m.get("checksums") else 1, single_dtype="float32",
                        multi_dtype="float16" if self.codec.name == "fp16" else "float32")
        return with_codec(m, self.codec.name, self.keep_exact, self.pool_factor, bool(self.single_prefix))


_TORCH = {"float16": torch.float16, "float32": torch.float32}


def _part(table: str, codec: codecs.Codec) -> verify.Part:
    if codec.name == "binary":
        return verify.Part(table, codec.bytes_per_token, None)  # any bits are valid signs
    if codec.name in ("fp16", "fp32"):
        return verify.Part(table, codec.bytes_per_token, lambda raw, n: codec.split(raw, n)[0])
    return verify.Part(table, codec.bytes_per_token, codec.decode)


def _missing(store: PageStore, table: str, page_id: int) -> CorruptIndexError:
    return CorruptIndexError(f"{store.index_dir}: the {table} value of page id {page_id} is missing "
                             f"(hint: Index.verify() lists what is damaged)")


def new_layout(dim: int, codec=None, keep_exact=None, pool_factor=None, multi_dtype=None,
               current: Layout | None = None, single_dim: int | None = None) -> Layout:
    """The layout asked for at create (``current`` None) or by ``compact`` (from ``current``; None
    keeps each of its settings, and a new codec gets that codec's default ``keep_exact``). Every
    parameter is checked: InvalidInputError names the bad one. ``single_dim`` (the index's): a
    codes-only layout stores that prefix of each single vector (see the module docstring).

    >>> new_layout(128, "int8", pool_factor=2)
    Layout(codec='int8', keep_exact=True, pool_factor=2, single_dtype='float16')
    >>> new_layout(128, "fp16") == new_layout(128, multi_dtype="float16")   # today's storage, version 2
    True
    >>> new_layout(128, "binary", keep_exact=False, single_dim=128)
    Layout(codec='binary', keep_exact=False, pool_factor=1, single_dtype='float16', single_prefix=128)
    >>> new_layout(128, "jpeg")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    jevsearch.errors.InvalidInputError: codec: 'jpeg' is not one of fp16, int8, binary (hint: ...)
    """
    if multi_dtype is not None:
        if multi_dtype not in MULTI_DTYPES:
            raise InvalidInputError(f"multi_dtype: {multi_dtype!r} (hint: 'float16' or 'float32'; or codec=)")
        if codec not in (None, codecs.get(multi_dtype, dim).name) or keep_exact or pool_factor not in (None, 1):
            raise InvalidInputError(f"multi_dtype: {multi_dtype!r} is the storage of indexes before codecs, "
                                    "without codec, keep_exact or pool_factor (hint: pass codec= instead)")
        return Layout(codecs.get(multi_dtype, dim))
    if codec is None and current is not None and current.codec.name == "fp32":  # multi_dtype="float32"
        if not keep_exact and pool_factor in (None, 1):
            return current
        codec = "fp16"  # converted, it stores float16 as every index does now
    name = codec if codec is not None else current.codec.name if current is not None else DEFAULT_CODEC
    if not isinstance(name, str) or name not in codecs.CODECS:
        raise InvalidInputError(f"codec: {name!r} is not one of {', '.join(codecs.CODECS)} (hint: binary is the "
                                "smallest; fp16 stores the tokens as they are)")
    float_codes = name in ("fp16", "fp32")
    if keep_exact is None:
        same = current is not None and current.codec.name == name
        keep_exact = current.keep_exact if same else (DEFAULT_KEEP_EXACT and not float_codes)
    if not isinstance(keep_exact, (bool, np.bool_)):
        raise InvalidInputError(f"keep_exact: {keep_exact!r} is not True or False")
    if keep_exact and float_codes:
        raise InvalidInputError(f"keep_exact: {name} codes are float tokens already (hint: keep_exact=True "
                                "goes with codec='int8' or 'binary')")
    pool = pooling.check_pool_factor(pool_factor if pool_factor is not None
                                     else current.pool_factor if current is not None else 1)
    prefix = 0 if float_codes or keep_exact or single_dim is None else validate.check_k(single_dim, "single_dim")
    layout = Layout(codecs.get(name, dim), bool(keep_exact), pool, np.dtype(np.float16), prefix)
    if float_codes and not keep_exact and pool == 1:
        return Layout(layout.codec)  # today's storage: version 2, float32 singles (older jevsearch opens it)
    return layout


def conversion(store: PageStore, manifest: dict, old: Layout, new: Layout) -> Rewrite:
    """The rewrite of ``store`` (layout ``old``, ``manifest``) into layout ``new``; InvalidInputError
    when ``old`` lacks what ``new`` needs. A version-1 store gets its checksums on the way (the
    caller checks its vectors first, as for :func:`~jevsearch.store.rewrite.upgrade`).

    The codes of every page are written first, then the exact tokens: the codes, which every search
    reads, lie together in the new file rather than between the exact tokens read only for rescoring.
    """
    needs_floats = new.codec.name != old.codec.name or new.keep_exact or new.pool_factor != old.pool_factor
    if needs_floats and not old.has_floats:
        raise InvalidInputError(f"codec: this index keeps only {old.codec.name} codes, not its float tokens: it "
                                f"cannot become {new} (hint: re-index the documents into a new index)")
    if old.pool_factor > 1 and new.pool_factor != old.pool_factor:
        raise InvalidInputError(f"pool_factor: this index's tokens are already pooled by {old.pool_factor}; the "
                                "original tokens are gone (hint: keep pool_factor, or re-index)")
    pool = new.pool_factor if new.pool_factor != old.pool_factor else 1
    target = new.manifest(upgraded(manifest) if not manifest.get("checksums") else manifest)
    source = (EXACT, old.exact_codec) if old.keep_exact else ("multi", old.codec)
    totals: dict[bytes, int] = {}  # doc key -> its tokens after pooling

    def floats(txn, pid: int, n: int) -> np.ndarray:
        raw = store.get(txn, source[0], page_key(pid))
        if raw is None:
            raise _missing(store, source[0], pid)
        return pooling.pool_tokens(source[1].decode(raw, n), pool)

    def fill(put) -> None:
        with store.read() as txn:
            for pid, dkey, number, n in store.iter_pages(txn):
                tokens = floats(txn, pid, n)
                put("multi", page_key(pid), new.codec.encode(tokens), append=True)
                if pool > 1:
                    put("pages", page_key(pid), PAGE_REC.pack(dkey, number, len(tokens)), append=True)
                    totals[dkey] = totals.get(dkey, 0) + len(tokens)
            if new.keep_exact:  # second pass: see the docstring (pooling is deterministic)
                for pid, _, _, n in store.iter_pages(txn):
                    put(EXACT, page_key(pid), new.exact_codec.encode(floats(txn, pid, n)), append=True)
            if pool > 1:
                for key, raw in store.items(txn, "docs"):
                    doc = load_json(raw)
                    put("docs", bytes(key), dump_json(dict(doc, tokens=totals.get(bytes(key), 0))))

    def single(key: bytes, payload) -> np.ndarray:
        return np.frombuffer(payload, dtype=old.single_dtype)[: new.single_prefix or None].astype(new.single_dtype)

    drop = lambda key, payload: None  # noqa: E731 - written again by fill
    transforms = {"multi": drop, EXACT: drop}
    if pool > 1:
        transforms.update(pages=drop, docs=drop)
    if (new.single_dtype, new.single_prefix) != (old.single_dtype, old.single_prefix):
        transforms["single"] = single
    return Rewrite(manifest=target, transforms=transforms, new_tables=(EXACT,), fill=fill,
                   state=(lambda state: dict(state, tokens=sum(totals.values()))) if pool > 1 else None)
