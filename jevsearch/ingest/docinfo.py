"""What an ingest records about a PDF itself, for filters and for display.

Every document's metadata records ``kind`` ("pdf", "image", "text"), ``sha256``, ``size``,
``mtime_ns`` and ``added`` (jevsearch.engine; the field index also offers them as ``bytes`` and
``mtime``, an ISO 8601 UTC string: jevsearch.store.fields). A PDF also gets its own metadata where it
has them: ``title``, ``author`` and ``created`` (its creation date as ISO 8601, UTC when the PDF gives
a time zone, e.g. ``"2023-11-02T14:05:00Z"``). ISO strings compare in time order, so
``{"created": {"$gte": "2024"}}`` works.

>>> pdf_date("D:20231102150500+01'00'"), pdf_date("D:2024"), pdf_date("yesterday")
('2023-11-02T14:05:00Z', '2024-01-01T00:00:00', None)
"""

from __future__ import annotations

import datetime as dt
import re

#: Metadata keys the ingest sets: a caller's metadata may not use them (Engine.add refuses them,
#: update_metadata keeps them).
INGEST_FIELDS = ("sha256", "kind", "size", "mtime_ns", "added", "missing_pages", "partial", "title", "author",
                 "created")

_PDF_DATE = re.compile(r"(?:D:)?(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:(Z)|([+-])(\d{2})'?(\d{2})?'?)?")


def pdf_fields(meta: dict | None) -> dict:
    """``title``, ``author``, ``created`` from a PDF's metadata dictionary (pymupdf's
    ``Document.metadata``, read where the file is open already: the render child), those it has."""
    meta = meta or {}
    out = {k: " ".join(str(meta.get(k) or "").split()) for k in ("title", "author")}
    out = {k: v for k, v in out.items() if v}
    created = pdf_date(meta.get("creationDate") or "")
    if created:
        out["created"] = created
    return out


def pdf_date(text: str) -> str | None:
    """A PDF date string (``D:YYYYMMDDHHmmSSOHH'mm'``, parts after the year optional) -> ISO 8601."""
    m = _PDF_DATE.fullmatch(text.strip())
    if not m:
        return None
    y, mo, d, h, mi, s, z, sign, tzh, tzm = m.groups()
    try:
        t = dt.datetime(int(y), int(mo or 1), int(d or 1), int(h or 0), int(mi or 0), int(s or 0))
    except ValueError:
        return None
    if not (z or sign):
        return t.strftime("%Y-%m-%dT%H:%M:%S")
    offset = dt.timedelta(hours=int(tzh or 0), minutes=int(tzm or 0)) * (-1 if sign == "-" else 1)
    return (t - offset).strftime("%Y-%m-%dT%H:%M:%SZ")
