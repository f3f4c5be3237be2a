"""Plain-text documents (.txt, .md): read, split into passages, encode; each passage is one "page".

Passages are cut by tokens, not characters: MaxSim scores grow with a page's token count (every query
token takes its best match among more candidates), so passages are kept about as long as a page image
of the same index and compete with pages on equal terms in one ranking. The numbers:

* budget = the token count of a full page image at the index's pixel budget (768 for jina-v4's
  default), clamped to [PASSAGE_MIN_TOKENS, PASSAGE_MAX_TOKENS] = [64, 512]. 512 because the
  model's 32k-token text window is far beyond what one multi-vector "page" should hold: a passage
  is shown whole as a hit's snippet, and late-interaction passages are commonly 180-512 tokens;
* overlap = budget // 8 tokens (64 at 512) repeated at the start of the next passage, so a sentence
  cut by a boundary is whole in one of the two;
* a cut prefers, within the last quarter of the budget, a blank line, then a line end, then a
  sentence end, then a space; a single "word" longer than that is cut at a token boundary.

Tokens are counted with the model's own tokenizer when one is given (``tokenizers.Tokenizer``), else
approximated deterministically (a word piece of up to 6 letters/digits or one other symbol counts one
token: ~1.2 tokens per English word, close to the Qwen2 tokenizer's count). The ``Passage: `` prompt
the encoder adds is not counted (3 tokens).

>>> chunk_text("One. Two three.\\n\\nFour five six seven.", budget=6, overlap=1)
['One. Two three.', 'three.\\n\\nFour five six', 'six seven.']
>>> chunk_text("  \\n ", budget=6, overlap=1)
[]
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from jevsearch.errors import DocumentError, InvalidInputError

log = logging.getLogger(__name__)

PASSAGE_MIN_TOKENS = 64
PASSAGE_MAX_TOKENS = 512
OVERLAP_DIVISOR = 8
ENCODE_PASSAGES = 32  # passages per encoder call: bounds the embeddings held for one long file
_APPROX_TOKEN = re.compile(r"[^\W_]{1,6}|[^\w\s]|_", re.UNICODE)
_SENTENCE_END = frozenset(".!?;:")


def passage_budget(page_tokens: int) -> tuple[int, int]:
    """(tokens per passage, overlap) for an index whose page images have ``page_tokens`` tokens.

    >>> passage_budget(768), passage_budget(128), passage_budget(10)
    ((512, 64), (128, 16), (64, 8))
    """
    budget = max(PASSAGE_MIN_TOKENS, min(PASSAGE_MAX_TOKENS, int(page_tokens)))
    return budget, budget // OVERLAP_DIVISOR


def read_text(path: str) -> str:
    """A text file's content: UTF-8 (a byte-order mark is dropped), line ends normalised to ``\\n``.
    Raises DocumentError for bytes that are not UTF-8."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        from jevsearch.ingest.sources import os_reason

        raise DocumentError(path, os_reason(e)) from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DocumentError(path, f"not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start} "
                                  "(hint: convert the file to UTF-8, e.g. iconv -t UTF-8)") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def token_spans(text: str, tokenizer=None) -> np.ndarray:
    """Character (start, end) of each token of ``text`` -> int64 [n, 2] (the approximation has no
    whitespace tokens; the tokenizer's count, e.g. blank lines, as the encoder will)."""
    if tokenizer is not None:
        spans = tokenizer.encode(text, add_special_tokens=False).offsets
    else:
        spans = [m.span() for m in _APPROX_TOKEN.finditer(text)]
    return np.array(spans, dtype=np.int64).reshape(-1, 2)


def chunk_text(text: str, budget: int, overlap: int, tokenizer=None) -> list[str]:
    """Split ``text`` into passages of at most ``budget`` tokens, consecutive ones sharing about
    ``overlap`` tokens (see the module docstring for where cuts fall). Empty or blank text -> []."""
    if budget < 1 or not 0 <= overlap < budget:
        raise InvalidInputError(f"chunk_text: budget={budget}, overlap={overlap} (hint: 0 <= overlap < budget)")
    spans = token_spans(text, tokenizer)
    n, out, i = len(spans), [], 0
    starts, ends = spans[:, 0], spans[:, 1]
    while i < n:
        j = min(n, i + budget)
        if j < n:
            j = _cut(text, starts, ends, i + max(1, budget * 3 // 4), j)
        out.append(text[starts[i]:ends[j - 1]].strip())
        if j >= n:
            break
        i = _word_start(text, starts, i, max(i + 1, j - overlap), j)
    return out


def _cut(text: str, starts: np.ndarray, ends: np.ndarray, lo: int, hi: int) -> int:
    """The best token index in [lo, hi] to end a passage before (passage = tokens ..c-1)."""
    best, best_rank = hi, -1
    for c in range(hi, lo - 1, -1):  # from the end: the longest passage among equally good cuts
        rank = _boundary(text, int(ends[c - 1]), int(starts[c]))
        if rank > best_rank:
            best, best_rank = c, rank
            if rank == 4:
                break
    return best


def _boundary(text: str, a: int, b: int) -> int:
    """How good a cut between the characters ``a`` and ``b`` is: 4 a blank line, 3 a line end, 2 a
    sentence end, 1 a space, 0 inside a word. The whitespace around the gap counts too: BPE tokens
    carry their leading space (" word") and blank lines may be tokens of their own."""
    while a > 0 and text[a - 1].isspace():
        a -= 1
    while b < len(text) and text[b].isspace():
        b += 1
    run = text[a:b]
    if "\n\n" in run:
        return 4
    if "\n" in run:
        return 3
    if run and a > 0 and text[a - 1] in _SENTENCE_END:
        return 2
    return 1 if run else 0


def _word_start(text: str, starts: np.ndarray, first: int, lo: int, hi: int) -> int:
    """Where the next passage starts: a token starting a word (so an overlap never begins mid-word or
    on a lone full stop), looked for back to ``first + 1`` (a longer overlap) and then on to ``hi``;
    ``lo`` when there is none (one long "word")."""
    def word(c: int) -> bool:  # BPE tokens may carry the space before their word
        return starts[c] == 0 or text[starts[c] - 1].isspace() or text[starts[c]].isspace()

    for c in (*range(lo, max(first, lo - (hi - lo) - 1), -1), *range(lo + 1, hi)):
        if word(c):
            return c
    return lo


def ingest_texts(sources: Sequence, encoder, sink: Callable, *, report, page_tokens: int,
                 hashes: Mapping[str, str] | None = None, task: str = "retrieval", progress: bool = False):
    """Index text sources one by one into ``report`` (an IngestReport): read, chunk
    (:func:`passage_budget` of ``page_tokens``), encode with the passage prompt, ``sink(EncodedDocument)``.
    ``hashes``: SHA-256 already computed per path (else hashed here). A file that fails (not UTF-8,
    empty, unreadable) is reported and the rest goes on; like PDFs, each document is stored whole or
    not at all."""
    from tqdm.auto import tqdm

    from jevsearch.ingest.pipeline import EncodedDocument
    from jevsearch.ingest.sources import file_sha256, os_reason

    budget, overlap = passage_budget(page_tokens)
    tokenizer = getattr(getattr(encoder, "processor", None), "tokenizer", None)
    hashes = hashes or {}
    t_wall = time.perf_counter()
    for src in tqdm(sources, unit="doc", desc="text documents", disable=None if progress else True,
                    dynamic_ncols=True):
        try:
            t0 = time.perf_counter()
            try:
                sha256 = hashes.get(src.path) or file_sha256(src.path)
            except OSError as e:
                raise DocumentError(src.path, os_reason(e)) from e
            passages = chunk_text(read_text(src.path), budget, overlap, tokenizer)
            report.timings["render"] += time.perf_counter() - t0
            if not passages:
                raise DocumentError(src.path, "empty text file: nothing to index")
            t0 = time.perf_counter()
            singles, multis = [], []
            for k in range(0, len(passages), ENCODE_PASSAGES):
                emb = encoder.encode_texts(passages[k:k + ENCODE_PASSAGES], task=task, prompt_name="passage")
                singles.append(emb.single)
                multis += emb.multi
            report.timings["encode"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            sink(EncodedDocument(src.path, "text", sha256, np.concatenate(singles), multis, passages, []))
            report.timings["store"] += time.perf_counter() - t0
        except (DocumentError, InvalidInputError) as e:
            report.failed.append((src.path, getattr(e, "reason", None) or str(e)))
            log.info("%s: %s", src.path, report.failed[-1][1])
            continue
        report.added.append(src.path)
        report.pages += len(passages)
        report.tokens += sum(len(m) for m in multis)
    report.timings["wall"] += time.perf_counter() - t_wall
    return report
