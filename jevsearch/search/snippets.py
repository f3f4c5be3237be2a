"""Snippets: a short window of a page's text layer, around the query's words when they occur.

Pure string functions (no I/O); the text comes from the page's PDF text layer stored at ingest.

>>> snippet("Intro. " + "filler " * 40 + "Revenue by region grew 12% in Q3. " + "more " * 40, "quarterly revenue by region", width=60)
'… filler filler Revenue by region grew 12% in Q3. more …'
>>> snippet("", "anything")
''
>>> highlight("Invoice INV-2024-08817 from Café Müller, 東京都庁", "inv-2024-08817 cafe 東京")
'Invoice «INV-2024-08817» from «Café» Müller, «東京»都庁'
>>> highlight("the harbor warehouse", "warehouse harbor")
'the «harbor warehouse»'
"""

from __future__ import annotations

import re
import unicodedata

# Words too common to locate anything on a page.
_STOP = frozenset(
    "a an and are as at be by for from has have how in into is it its of on or that the this to was were "
    "what when where which who why will with".split()
)
_WORD = re.compile(r"\w+", re.UNICODE)
_MAX_MATCHES = 2000  # bounds the window search on huge pages


def query_terms(query: str) -> list[str]:
    """Lower-case content words of a query, in order, without duplicates or stop words."""
    seen: dict[str, None] = {}
    for w in _WORD.findall(query.lower()):
        if len(w) > 1 and w not in _STOP:
            seen.setdefault(w)
    return list(seen)


def snippet(text: str, query: str | None = None, width: int = 160) -> str:
    """About ``width`` characters of ``text``, centred on the densest cluster of query terms.

    Terms match at word starts, so ``revenue`` finds ``revenues``. Without a query, or when no term
    occurs (e.g. an image query, a scanned page), the start of the page. Cuts fall on word boundaries
    and are marked with an ellipsis.
    """
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    terms = query_terms(query) if query else []
    start = _best_window(text, terms, width) if terms else 0
    end = min(len(text), start + width)
    if start > 0:  # move to the next word start, so no word is cut in half
        space = text.find(" ", start, end)
        start = space + 1 if space != -1 else start
    if end < len(text):
        space = text.rfind(" ", start, end)
        end = space if space > start else end
    return ("… " if start > 0 else "") + text[start:end] + (" …" if end < len(text) else "")


def _best_window(text: str, terms: list[str], width: int) -> int:
    pattern = re.compile(r"\b(" + "|".join(re.escape(t) for t in terms) + ")", re.IGNORECASE)
    matches = []
    for m in pattern.finditer(text):
        matches.append((m.start(), m.end(), m.group(1).lower()))
        if len(matches) >= _MAX_MATCHES:
            break
    if not matches:
        return 0
    best, best_key = matches[0], (-1, -1)
    right = 0
    # Two pointers: the window opening at match i holds matches i..right-1 (all ending within width).
    for i, first in enumerate(matches):
        right = max(right, i)
        while right < len(matches) and matches[right][1] - first[0] <= width:
            right += 1
        inside = matches[i:right]
        key = (len({m[2] for m in inside}), len(inside))
        if key > best_key:
            best, best_key = (first[0], inside[-1][1] if inside else first[1], first[2]), key
    # Centre the cluster in the window.
    cluster_start, cluster_end = best[0], best[1]
    return max(0, min(len(text) - width, cluster_start - (width - (cluster_end - cluster_start)) // 2))


MARK_OPEN, MARK_CLOSE = "«", "»"
_CJK_CHAR = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df]")


def fold(text: str) -> str:
    """``text`` lower-cased with accents removed, character for character (same length: a character
    whose folding is not one character stays as it is), so positions match the original."""
    out = []
    for ch in text:
        base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c)).lower()
        out.append(base if len(base) == 1 else ch.lower() if len(ch.lower()) == 1 else ch)
    return "".join(out)


def highlight(text: str, query: str | None) -> str:
    """``text`` with the query's words and phrases marked «like this» where they occur (case and
    accents ignored; a query word with inner punctuation, e.g. INV-2024-08817, matches across any
    punctuation between its parts; CJK text by character runs)."""
    if not text or not query:
        return text
    folded = fold(text)
    spans = []
    for word in fold(query).replace('"', " ").split():
        parts = re.findall(r"[^\W_]+", word)
        if not parts or (len(parts) == 1 and len(parts[0]) < 2 and not _CJK_CHAR.match(parts[0])):
            continue
        if _CJK_CHAR.search(word):
            pattern = re.escape("".join(parts))
        else:
            pattern = r"(?<![^\W_])" + r"[\W_]+".join(re.escape(p) for p in parts) + r"(?![^\W_])"
        spans += [m.span() for m in re.finditer(pattern, folded)]
    if not spans:
        return text
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and (start <= merged[-1][1] or not text[merged[-1][1]:start].strip()):  # one mark per run
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, pos = [], 0
    for start, end in merged:
        out += [text[pos:start], MARK_OPEN, text[start:end], MARK_CLOSE]
        pos = end
    return "".join(out + [text[pos:]])
