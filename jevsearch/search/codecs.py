"""Multi-vector codecs: how one page's [T, d] tokens are stored as one value, and how the scoring
kernels unpack that value. Pure functions on arrays and tensors; no I/O.

=========  ===============  ======================================================================
codec      bytes per token  one page's value (T tokens, d dims; little-endian, tokens in page order)
=========  ===============  ======================================================================
``fp16``   2d   (256)       T x d float16, row-major. Today's storage.
``fp32``   4d   (512)       T x d float32, row-major (indexes created with ``multi_dtype="float32"``).
``int8``   d + 4 (132)      T float32 scales s_t, then T x d int8 codes c_tk row-major (4T + dT bytes).
                            Token t is ``s_t * c_tk`` (a float32 product). The scales come first so
                            both parts are plain arrays (one zero-copy view each).
``binary`` d / 8 (16)       T x d/8 bytes, row-major. Byte b of token t holds dims 8b..8b+7, dim
                            8b+i in bit 7-i (most significant bit first, ``np.packbits``'s order);
                            a bit is 1 iff the value is > 0. Token t is ``(2 * bit - 1) / sqrt(d)``.
=========  ===============  ======================================================================

Scales, and what a score means:

* ``int8`` is symmetric per token: codes ``round(x / (max|x| / 127))`` in [-127, 127], then the scale
  refitted by least squares (``s = x.c / c.c``, the s that brings ``s * c`` closest to x; ~10% less
  score error than ``max|x| / 127``). Scores stay on the float scale; the rounding error is random,
  so the bound is statistical: on unit tokens of the benchmark's distribution and 24 query tokens,
  |int8 - float MaxSim| per page has mean 0.0022, p99 0.0069 and max 0.0102 over 3000 page x query
  pairs (it grows like sqrt(query tokens)). 1 bit more would halve it; the exact rescore of the
  best pages removes it from final scores.
* ``binary`` decodes to +-1/sqrt(d), a unit vector, so a page's score is a sum of cosines against
  unit sign vectors: on the same scale as float MaxSim but not close to it, meant for ranking
  (Vespa's "asymmetric" float-query-against-bits scoring).

Kernels (:mod:`jevsearch.search.maxsim`): ``fp16``/``fp32`` blocks are unpacked to float32 and scored
with a float32 matmul (the query is used as is). ``binary`` and ``int8`` blocks are copied as int8 (+-1
signs; the codes) and scored with an int8 x int8 -> int32 matmul (``torch._int_mm``) against the query
rows quantised to int8 (:func:`quantize_rows`): for ``binary`` in one part (per row |error| <= max|q| /
254 per dim, tiny next to the codes' own 1 bit), for ``int8`` in two (a high and a low int8 part, error
<= max|q| / 32258: the scores stay those of the float query; ``int8`` pages' per-token scales multiply
the [rows, tokens] similarities, 1/128 of the work of scaling the tokens). The int8 matmul is faster
than float32 with VNNI and still without it, where unpacking +-1/sqrt(d) to float32 is slower than fp16
(``benchmarks/codecs.py``, benchmarks/RESULTS.md). Binary is exact on every x86 ISA because one operand is +-1. Two full-range int8
operands are not: without VNNI the int8 matmul sums products in saturating 16-bit pairs. So ``int8``
pages take the int8 kernel only where :func:`int8_matmul_exact` (a worst-case product checked once per
process) says the CPU's matmul is exact, and the float32 kernel elsewhere.

>>> import numpy as np
>>> c = get("binary", 8)
>>> value = c.encode(np.array([[0.5, -1, 2, 0, -3, 1, 1, -1]], np.float32)); value
array([166], dtype=uint8)
>>> (c.decode(value, 1) * np.sqrt(8)).round(6).tolist()  # bit 1 -> +1, bit 0 (<= 0) -> -1
[[1.0, -1.0, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0]]
>>> get("int8", 128).bytes_per_token, get("binary", 128).bytes_per_token, get("float16", 128).name
(132, 16, 'fp16')
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch

from jevsearch.errors import CorruptIndexError, InvalidInputError

# torch warns that a read-only buffer (an LMDB view) is not writable, though the codecs only read
# it. The warning is emitted once per process, so emit it here, silenced, instead of filtering
# warnings on the hot path: warnings.catch_warnings is not thread-safe, and packers run on workers.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    torch.frombuffer(b"\0\0", dtype=torch.float16)

CODECS = ("fp16", "int8", "binary")  # the codecs a new index may choose
_ALIASES = {"float16": "fp16", "float32": "fp32"}  # a manifest's multi_dtype (indexes before codecs)


class Codec:
    """One page's tokens <-> one stored value (see the module docstring for the layouts).

    ``kernel``: ``"float"`` (blocks unpacked to float32, scored against the float query) or ``"int8"``
    (blocks unpacked to int8, scored against the query quantised to int8 in ``query_parts`` parts;
    scores times ``token_scale``). Subclasses define the layout; instances are per dimension and immutable.
    """

    name: str
    kernel = "float"
    query_parts = 1
    token_scale = 1.0

    def __init__(self, dim: int):
        self.dim = dim

    @property
    def bytes_per_token(self) -> int:
        raise NotImplementedError

    @property
    def block_dtype(self) -> torch.dtype:
        """The dtype of the unpacked tokens the CPU kernel multiplies."""
        return torch.float32 if self.kernel == "float" else torch.int8

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        """float [T, d] -> uint8 [T * bytes_per_token], the page's stored value."""
        raise NotImplementedError

    def decode(self, raw, n: int) -> np.ndarray:
        """A stored value of ``n`` tokens -> float32 [n, d]: the vectors the kernels score."""
        return self.unpack(tuple(torch.from_numpy(p.copy()) for p in self.split(raw, n)), torch.float32).numpy()

    def split(self, raw, n: int) -> tuple[np.ndarray, ...]:
        """A stored value -> its per-token parts, zero-copy views, each [n, ...] (fp16: values;
        int8: scales [n], codes [n, d]; binary: bytes [n, d/8])."""
        raise NotImplementedError

    def unpack(self, parts: tuple[torch.Tensor, ...], dtype: torch.dtype) -> torch.Tensor:
        """Parts [..., n, ...] (as :meth:`split` gives, possibly stacked and padded, on any device) ->
        tokens [..., n, d] in ``dtype``, with torch ops on the parts' device (the GPU path)."""
        raise NotImplementedError

    def unpack_block(self, raws: list, lengths: list[int], starts: np.ndarray, out: torch.Tensor,
                     buffer) -> torch.Tensor | None:
        """CPU: pages ``raws`` laid end to end into ``out`` [N, d] (``block_dtype``) from row ``starts[c]``
        -> the tokens' scales, float32 [N] (row n of the block stands for ``scales[n] * out[n]``), or None
        when the rows are the tokens themselves. ``buffer(name, dtype, numel)`` gives reused 1-d scratch
        tensors (see ``ConcatPacker``)."""
        raise NotImplementedError

    def _rows(self, tokens) -> np.ndarray:
        x = np.asarray(tokens)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InvalidInputError(f"tokens: shape {x.shape}, expected [T, {self.dim}] (hint: one page's "
                                    "multi-vectors, one row per token)")
        return x

    def _check(self, raw, n: int) -> None:
        size, need = memoryview(raw).nbytes, n * self.bytes_per_token
        if size != need:
            raise CorruptIndexError(f"multi-vectors: {size} bytes for {n} tokens, {self.name} needs {need} "
                                    "(hint: run verify)")

    def _view(self, raw, n: int, dtype, offset: int = 0, count: int = -1) -> np.ndarray:
        self._check(raw, n)
        return np.frombuffer(raw, dtype=dtype, offset=offset, count=count)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, dim={self.dim})"


class FloatCodec(Codec):
    """Tokens as float16 (``fp16``) or float32 (``fp32``) values."""

    def __init__(self, name: str, dim: int):
        super().__init__(dim)
        self.name = name
        self.stored = np.dtype("<f2" if name == "fp16" else "<f4")
        self._torch = torch.float16 if name == "fp16" else torch.float32

    @property
    def bytes_per_token(self) -> int:
        return self.stored.itemsize * self.dim

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        # torch converts float32 -> float16 much faster than numpy (benchmarks/RESULTS.md).
        x = torch.from_numpy(np.ascontiguousarray(self._rows(tokens), dtype=np.float32))
        return x.to(self._torch).numpy().view(np.uint8).reshape(-1)

    def split(self, raw, n):
        return (self._view(raw, n, self.stored).reshape(n, self.dim),)

    def unpack(self, parts, dtype):
        return parts[0].to(dtype)

    def unpack_block(self, raws, lengths, starts, out, buffer):
        d = self.dim
        for raw, s, k in zip(raws, starts.tolist(), lengths):
            self._check(raw, k)
            out[s:s + k].copy_(torch.frombuffer(raw, dtype=self._torch).view(k, d))  # converts dtype
        return None


class Int8Codec(Codec):
    """Per-token symmetric int8 codes with a float32 scale (layout in the module docstring).

    ``kernel``: ``"int8"`` where :func:`int8_matmul_exact` holds (and d <= 1024, so that the two query
    parts combine exactly in int32), else ``"float"``; given explicitly, it is used as is.
    """

    name = "int8"
    query_parts = 2

    def __init__(self, dim: int, kernel: str | None = None):
        super().__init__(dim)
        if kernel not in (None, "float", "int8"):
            raise InvalidInputError(f"kernel: unknown kernel {kernel!r} (hint: 'float' or 'int8')")
        self.kernel = kernel or ("int8" if dim <= 1024 and int8_matmul_exact() else "float")

    @property
    def bytes_per_token(self) -> int:
        return self.dim + 4

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        x = self._rows(tokens).astype(np.float32, copy=False)  # [T, d]
        peak = np.abs(x).max(axis=1, keepdims=True)  # [T, 1]
        codes = np.rint(x * (127 / np.where(peak > 0, peak, 1))).astype(np.int8)  # [T, d] in [-127, 127]
        c = codes.astype(np.float32)
        cc = (c * c).sum(axis=1)  # [T]; 0 only for an all-zero token
        scales = ((x * c).sum(axis=1) / np.where(cc > 0, cc, 1)).astype("<f4")  # [T] least-squares fit
        return np.concatenate([scales.view(np.uint8), codes.view(np.uint8).reshape(-1)])

    def split(self, raw, n):
        scales = self._view(raw, n, "<f4", count=n)
        return scales, self._view(raw, n, np.int8, offset=4 * n).reshape(n, self.dim)

    def unpack(self, parts, dtype):
        scales, codes = parts
        return (codes.to(torch.float32) * scales.unsqueeze(-1)).to(dtype)

    def unpack_block(self, raws, lengths, starts, out, buffer):
        d, n = self.dim, int(starts[-1]) + lengths[-1]
        scales = buffer("scales", torch.float32, n)
        for raw, s, k in zip(raws, starts.tolist(), lengths):
            self._check(raw, k)
            scales[s:s + k].copy_(torch.frombuffer(raw, dtype=torch.float32, count=k))
            out[s:s + k].copy_(torch.frombuffer(raw, dtype=torch.int8, offset=4 * k).view(k, d))  # int8 or float32
        # The kernels scale the [rows, N] similarities, not the [N, d] codes (less work for the float32
        # kernel); the int8 kernel needs its codes unscaled anyway.
        return scales[:n]

    def __repr__(self) -> str:
        return f"Int8Codec('int8', dim={self.dim}, kernel={self.kernel!r})"


class BinaryCodec(Codec):
    """The sign bit of each dim, packed 8 to a byte (layout in the module docstring).

    On the CPU a 256-entry table maps each byte to its 8 dims as +-1 int8 (one int64 per byte, by
    ``torch.index_select``): the fastest unpacking measured, ahead of np.take on the same table,
    np.unpackbits and shifts (``benchmarks/codecs.py``, benchmarks/RESULTS.md).
    """

    name = "binary"
    kernel = "int8"

    def __init__(self, dim: int):
        if dim % 8:
            raise InvalidInputError(f"codec: binary needs multi_dim divisible by 8, got {dim} "
                                    "(hint: use fp16 or int8)")
        super().__init__(dim)
        self.token_scale = 1.0 / math.sqrt(dim)
        signs = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.int8) * 2 - 1  # [256, 8]
        self._signs = torch.from_numpy(signs)
        self._table = torch.from_numpy(signs.view(np.int64).reshape(256))  # byte -> its 8 +-1 int8 at once

    @property
    def bytes_per_token(self) -> int:
        return self.dim // 8

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        return np.packbits(self._rows(tokens) > 0, axis=1).reshape(-1)

    def split(self, raw, n):
        return (self._view(raw, n, np.uint8).reshape(n, self.dim // 8),)

    def unpack(self, parts, dtype):
        codes = parts[0]  # [..., n, d/8] uint8
        signs = self._signs.to(device=codes.device, dtype=dtype) * self.token_scale  # [256, 8]
        return signs[codes.long()].flatten(-2)  # [..., n, d/8, 8] -> [..., n, d]

    def stage_block(self, raws, lengths, starts, buffer, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
        """CPU: the pages' bytes end to end -> [N, d/8] in ``dtype`` (a reused buffer), the packed signs
        (int32: widened as copied, the indices ``unpack_block`` looks up)."""
        w, n = self.dim // 8, int(starts[-1]) + lengths[-1]
        staged = buffer(f"signs {dtype}", dtype, n * w)  # one buffer per dtype: none reallocated in turn
        for raw, s, k in zip(raws, starts.tolist(), lengths):
            self._check(raw, k)
            staged[s * w:(s + k) * w].copy_(torch.frombuffer(raw, dtype=torch.uint8))
        return staged[: n * w].view(n, w)

    def unpack_block(self, raws, lengths, starts, out, buffer):
        index = self.stage_block(raws, lengths, starts, buffer, torch.int32).reshape(-1)  # index_select: int32
        torch.index_select(self._table, 0, index, out=out.view(-1).view(torch.int64))
        return None


def get(codec, dim: int) -> Codec:
    """The codec named ``codec`` for ``dim``-d tokens (a Codec passes through). Also takes a
    manifest's ``multi_dtype`` (``"float16"``/``"float32"``, or that numpy dtype): indexes made
    before codecs store plain floats.

    >>> get("fp16", 128), get(np.float32, 4)
    (FloatCodec('fp16', dim=128), FloatCodec('fp32', dim=4))
    """
    if isinstance(codec, Codec):
        return codec
    name = codec if isinstance(codec, str) else np.dtype(codec).name
    name = _ALIASES.get(name, name)
    if name in ("fp16", "fp32"):
        return FloatCodec(name, dim)
    if name == "int8":
        return Int8Codec(dim)
    if name == "binary":
        return BinaryCodec(dim)
    raise InvalidInputError(f"codec: unknown codec {codec!r} (hint: one of {', '.join(CODECS)})")


def quantize_rows(x: torch.Tensor, parts: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 rows [R, d] -> (int8 codes [parts * R, d], float32 scales [R]): row r is about
    ``scales[r] * sum_p 127**(parts-1-p) * codes[p * R + r]``, symmetric per row.

    ``parts=1``: codes in [-127, 127], scale max|x_r| / 127, error <= scale / 2 per dim. ``parts=2``:
    then the rounding residual quantised by a step 127x finer (codes in [-64, 64]), error <= max|x_r| /
    32258. An all-zero row gets codes 0, scale 0.

    >>> codes, scales = quantize_rows(torch.tensor([[0.5, -1.0], [0.0, 0.0]]))
    >>> codes.tolist(), scales.tolist()
    ([[64, -127], [0, 0]], [0.007874015718698502, 0.0])
    >>> codes, scales = quantize_rows(torch.tensor([[0.25, -1.0]]), parts=2)
    >>> codes.tolist()                   # 0.25 ~ (127 * 32 - 32) * scale, scale = 1 / 127**2
    [[32, -127], [-32, 0]]
    """
    if parts not in (1, 2):
        raise InvalidInputError(f"parts: {parts} (hint: 1 or 2)")
    scales = x.abs().amax(dim=1) / 127  # [R]
    step = torch.where(scales > 0, scales, 1).unsqueeze(1)  # [R, 1]
    high = torch.round(x / step)  # [R, d] in [-127, 127]
    if parts == 1:
        return high.to(torch.int8), scales
    low = torch.round((x - high * step) * (127 / step))  # [R, d] in [-64, 64]: |residual| <= step / 2
    return torch.cat([high, low]).to(torch.int8), scales / 127


@functools.cache
def int8_matmul_exact() -> bool:
    """Whether this process's int8 matmul (``torch._int_mm`` on the CPU) is exact for full-range
    operands, checked once on the worst case: rows and columns of +-127 (equal signs: every product
    +16129) beside random ones. oneDNN with VNNI accumulates in int32 and passes; without VNNI it adds
    products in saturating 16-bit pairs and fails (here with ``ONEDNN_MAX_CPU_ISA=AVX2`` or
    ``AVX512_CORE``), so the CPU is measured, not assumed from its name or flags.
    """
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (32, 256), generator=g, dtype=torch.int8)  # [32, 256]
    b = torch.randint(-127, 128, (256, 64), generator=g, dtype=torch.int8)  # [256, 64]
    a[:4], b[:, :4] = 127, 127
    a[4:8], b[:, 4:8] = -127, -127
    try:
        got = torch._int_mm(a, b)  # [32, 64] int32
    except RuntimeError:  # a torch build without a CPU int8 matmul
        return False
    return torch.equal(got.double(), a.double() @ b.double())
