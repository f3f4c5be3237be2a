"""The app's HTML: server-rendered pages, one stylesheet and a little plain JavaScript (no build step).

Every value from the index or the request is escaped (``html.escape``) or URL-encoded here; pages
work without JavaScript (token chips are links), which only adds progress and in-place updates.
"""

from __future__ import annotations

import hashlib
import html
import os
import re
from urllib.parse import urlencode

_CSS = """
*{box-sizing:border-box}body{margin:0;font:15px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d2330;background:#f4f5f8}
header{background:#1d2330;color:#fff;padding:.7rem 1.2rem;display:flex;gap:1.2rem;align-items:center;flex-wrap:wrap}
header a.brand{color:#fff;font-weight:700;font-size:1.15rem;text-decoration:none}header .info{color:#aab3c5;font-size:.85rem}
main{padding:1rem 1.2rem;max-width:1400px;margin:0 auto}
form.search{display:flex;gap:.5rem;flex-wrap:wrap;align-items:center;margin:.2rem 0 1rem}
form.search input[type=text]{flex:1 1 22rem;padding:.55rem .7rem;font-size:1rem;border:1px solid #b9c0cf;border-radius:6px}
form.search input[type=number]{width:4.5rem;padding:.5rem;border:1px solid #b9c0cf;border-radius:6px}
button{padding:.55rem 1rem;border:0;border-radius:6px;background:#3b5bdb;color:#fff;font-size:.95rem;cursor:pointer}
button.alt{background:#5c677d}.or{color:#5c677d}
#busy{background:#fff3bf;border:1px solid #f0c36d;padding:.5rem .8rem;border-radius:6px;margin:.5rem 0}
.error{background:#ffe3e3;border:1px solid #e03131;color:#7d1b1b;padding:.8rem 1rem;border-radius:6px;margin:.8rem 0}
.note{background:#e7f5ff;border:1px solid #74c0fc;padding:.5rem .8rem;border-radius:6px;margin:.5rem 0;font-size:.9rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:1rem}
a.card{display:block;background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;padding:.6rem;color:inherit;text-decoration:none}
a.card:hover{box-shadow:0 2px 10px #0003}a.card img{width:100%;height:auto;display:block;border:1px solid #e3e6ec;background:#fff}
.name{font-weight:600;margin-top:.4rem;overflow-wrap:anywhere}.meta{color:#5c677d;font-size:.85rem}
.snippet{font-size:.85rem;color:#333;margin-top:.3rem;max-height:5.6em;overflow:hidden}
.view{display:flex;gap:1.2rem;align-items:flex-start;flex-wrap:wrap}
.pic{position:relative;flex:0 1 auto;background:#fff;box-shadow:0 1px 3px #0002}
.pic img{max-width:100%;max-height:calc(100vh - 4rem);min-width:200px;width:auto;height:auto;display:block}
#heatwait{position:absolute;top:.6rem;right:.6rem;background:#1d2330d0;color:#fff;padding:.3rem .6rem;border-radius:4px;font-size:.85rem}
.side{flex:0 1 340px}.chips{display:flex;flex-wrap:wrap;gap:.4rem;margin:.5rem 0}
a.chip{padding:.25rem .6rem;border-radius:999px;background:#e3e6ec;color:#1d2330;text-decoration:none;font-size:.9rem}
a.chip.on{background:#3b5bdb;color:#fff}a.chip small{opacity:.75}
img.legend{width:100%;height:12px;display:block;border:1px solid #c9ced8;margin-top:.6rem}
.legendtext{display:flex;justify-content:space-between;font-size:.75rem;color:#5c677d}
.summary{font-size:.85rem;color:#333;margin:.4rem 0}
.path{color:#5c677d;font-size:.85rem;overflow-wrap:anywhere;margin:-.4rem 0 .8rem}
.passage{white-space:pre-wrap;font-size:.85rem;line-height:1.45;background:#fff;border:1px solid #e3e6ec;padding:.5rem;
 max-height:13.5em;overflow:hidden;color:#333}
.passage.big{max-height:none;font-size:1rem;padding:1rem 1.2rem;flex:1 1 30rem;max-width:52rem;box-shadow:0 1px 3px #0002}
mark{background:#ffd8a8;color:inherit;border-bottom:2px solid #e8590c;padding:0 .1em}
.querypic{display:flex;gap:1rem;align-items:center;margin:.2rem 0 1rem}
.querypic img{max-height:140px;max-width:240px;border:1px solid #c9ced8;background:#fff}
.matches{font-size:.85rem;margin:.4rem 0;padding-left:1.2rem}
a.open{display:inline-block;margin:.6rem 0;font-weight:600}
"""

_JS = """
function showBusy(label){const b=document.getElementById('busy');if(!b)return;b.hidden=false;const t0=Date.now();
 const tick=async()=>{let s='';try{const j=await (await fetch('/api/status')).json();
  if(j.model==='loading')s='loading the model (first use)';else if(j.busy)s=j.busy;}catch(e){}
  b.textContent=label+' '+Math.round((Date.now()-t0)/1000)+' s'+(s?' \\u2014 '+s:'');};
 tick();setInterval(tick,700);}
document.querySelectorAll('form').forEach(f=>f.addEventListener('submit',()=>showBusy('Searching\\u2026')));
const heat=document.getElementById('heat'),wait=document.getElementById('heatwait');
if(heat){
 heat.addEventListener('load',()=>{wait.hidden=true;});
 heat.addEventListener('error',async()=>{let m='heat-map failed';try{m=(await (await fetch(heat.src)).json()).error;}catch(e){}
  wait.hidden=false;wait.textContent=m;});
 document.querySelectorAll('a.chip').forEach(a=>a.addEventListener('click',ev=>{ev.preventDefault();
  document.querySelectorAll('a.chip').forEach(c=>c.classList.toggle('on',c===a));
  wait.hidden=false;wait.textContent='computing heat-map\\u2026';heat.src=a.dataset.src;history.replaceState(null,'',a.href);
  const [lo,hi]=a.dataset.range.split(' ');for(const [id,v] of [['legend-lo',lo],['legend-cut',lo],['legend-hi',hi]]){
   const e=document.getElementById(id);if(e)e.textContent=v;}}));
}
"""


def _static(name: str, media: str, text: str) -> tuple[str, str, str]:
    """(media type, content, URL with a content hash: cached long, never stale)."""
    return media, text, f"/static/{name}?v={hashlib.sha256(text.encode()).hexdigest()[:12]}"


#: The app's stylesheet and script, served as files: the Content-Security-Policy allows no inline code.
STATIC = {"app.css": _static("app.css", "text/css; charset=utf-8", _CSS),
          "app.js": _static("app.js", "text/javascript; charset=utf-8", _JS)}


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def layout(title: str, body: str, info: dict | None = None, q: str = "", k: int | None = None,
           max_k: int = 100, mode: str | None = None) -> str:
    """A whole page: header with the search forms, then ``body`` (already HTML)."""
    counts = ""
    if info:
        counts = f"{_e(info['name'])} \u00b7 {info['documents']} documents \u00b7 {info['pages']} pages"
    k_value = f' value="{int(k)}"' if k else ""
    modes = "".join(f'<option value="{m}"{" selected" if m == mode else ""}>{m}</option>'
                    for m in ("hybrid", "lexical", "visual"))
    mode_select = (f' <label class="meta">mode <select name="mode" aria-label="mode"><option value="">default</option>'
                   f'{modes}</select></label>') if info is None or info.get("text_index") else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{_e(title)} \u2014 jevsearch</title><link rel="stylesheet" href="{STATIC['app.css'][2]}"></head>
<body><header><a class="brand" href="/">jevsearch</a><span class="info">{counts}</span></header>
<main>
<form class="search" action="/" method="get">
 <input type="text" name="q" value="{_e(q)}" placeholder="Search the pages, e.g. quarterly revenue by region" autofocus
  aria-label="query">
 <label class="meta">k <input type="number" name="k" min="1" max="{int(max_k)}"{k_value} aria-label="results"></label>
{mode_select}
 <button type="submit">Search</button>
</form>
<form class="search" action="/" method="post" enctype="multipart/form-data">
 <span class="or">or search with an image:</span> <input type="file" name="image" accept="image/*" aria-label="image query">
 <button class="alt" type="submit">Search by image</button>
</form>
<div id="busy" hidden></div>
{body}
</main><script src="{STATIC['app.js'][2]}"></script></body></html>"""


def highlighted(snippet: str) -> str:
    """A snippet escaped, its «matched words» (hybrid and lexical search) in <mark>."""
    return _MARKED.sub(r"<mark>\1</mark>", _e(snippet))


_MARKED = re.compile("\u00ab([^\u00ab\u00bb<>]*)\u00bb")


def error_box(message: str) -> str:
    return f'<div class="error" role="alert">{_e(message)}</div>'


def short_names(paths) -> dict[str, str]:
    """Each path's shortest tail of folders that no other path of ``paths`` ends with: enough to tell
    two report.pdf apart.

    >>> short_names(["/a/2023/report.pdf", "/a/2024/report.pdf", "/a/manual.pdf"])["/a/2024/report.pdf"]
    '2024/report.pdf'
    """
    parts = {p: p.replace("\\", "/").split("/") for p in set(paths)}
    names = {}
    for p, comps in parts.items():
        n = 1
        while n < len(comps) and any(q != p and parts[q][-n:] == comps[-n:] for q in parts):
            n += 1
        names[p] = "/".join(comps[-n:]).lstrip("/") or p
    return names


def marked(text: str, marks, limit: int | None = None) -> str:
    """``text`` escaped, the spans of ``marks`` [(start, end, title)] in ``<mark>``; cut at ``limit`` chars."""
    out, at = [], 0
    end = len(text) if limit is None else min(len(text), limit)
    for a, b, title in marks:
        if a >= end:
            break
        if a < at:
            continue
        out.append(_e(text[at:a]) + f'<mark title="{_e(title)}">{_e(text[a:b])}</mark>')
        at = b
    out.append(_e(text[at:end]) + ("\u2026" if end < len(text) else ""))
    return "".join(out)


def passage_marks(ex, token: int | None = None) -> list[tuple[int, int, str]]:
    """(start, end, title) of the passage words a :class:`PassageExplanation` matched, for :func:`marked`."""
    return [(a, b, ", ".join(ex.label(i) for i in ids)) for a, b, ids in ex.marks(token)]


def _heading(count: int, link_query: dict) -> str:
    if "qi" in link_query:
        pic = f'/query-image/{link_query["qi"]}.png'
        return (f'<div class="querypic"><img id="query-image" src="{_e(pic)}" alt="the uploaded image">'
                f'<p class="meta">{count} best pages for the uploaded image; click one to see where it matched.</p>'
                '</div>')
    return (f'<p class="meta">{count} best pages for <q>{_e(link_query.get("q", ""))}</q>; click one to see where '
            'it matched.</p>')


def results(hits: list[dict], link_query: dict, passage_marks: dict | None = None) -> str:
    """The results grid: a card per hit (thumbnail, document name, page, score, snippet; a text passage:
    its text with the words the query matched marked, ``passage_marks[page_id]``).
    ``link_query``: ``{"q": text}`` or ``{"qi": image id}``, and ``k``."""
    if not hits:
        return '<p class="meta">No results: the index is empty.</p>'
    names = short_names([h["path"] for h in hits])
    cards = []
    for h in hits:
        href = f"/page/{h['page_id']}?" + urlencode(link_query)
        name = names[h["path"]]
        if h["metadata"].get("kind") == "text":
            marks = (passage_marks or {}).get(h["page_id"], ())
            top = f'<div class="passage">{marked(h["snippet"] or "", marks, 600)}</div>'
            where, snippet = "passage", ""
        else:
            top = f'<img src="/thumb/{h["page_id"]}" alt="page {h["page"]} of {_e(name)}" loading="lazy">'
            where, snippet = "page", f'<div class="snippet">{highlighted(h["snippet"])}</div>'
        cards.append(
            f'<a class="card" href="{_e(href)}" data-rank="{h["rank"]}">{top}'
            f'<div class="name" title="{_e(h["path"])}">{_e(name)}</div>'
            f'<div class="meta">{where} {h["page"]} \u00b7 score {h["score"]:.3f}</div>{snippet}</a>')
    return f'{_heading(len(hits), link_query)}<div class="grid" id="results">{"".join(cards)}</div>'


def _chips(ex, base: str, link_query: dict, token: int | None, heat: str | None) -> str:
    """A chip per meaningful query token (``ex.label``: the token and its term of the score), first
    "all query words"; with ``heat`` (the heat-map URL) a chip swaps the picture in place."""
    def chip(index: int | None) -> str:
        params = dict(link_query, **({"token": index} if index is not None else {}))
        word, score = ex.label(index).rsplit(" ", 1)
        src = f' data-src="{_e(heat + urlencode(params))}" data-range="{_range(ex, index)}"' if heat else ""
        title = ""
        if ex.kind == "text" and index is not None:
            title = "".join(f' title="matched {_e(w)} ({v:.3f})"' for w, v in ex.matches(index))
        on = " on" if index == token else ""
        return (f'<a class="chip{on}" href="{_e(base + urlencode(params))}"{src}{title}>{_e(word)} '
                f'<small>{score}</small></a>')

    meaningful = [i for i, m in enumerate(ex.meaningful) if m]
    chips = [chip(None)]
    if len(meaningful) <= 64:  # an image query has hundreds of patch tokens: "all" only
        chips += [chip(i) for i in meaningful]
    return f'<h3>Query tokens</h3><div class="chips" id="tokens">{"".join(chips)}</div>'


def _range(ex, token: int | None) -> str:
    """The colour key's numbers for a map: where tinting starts and the best patch."""
    from jevsearch.engine import THRESHOLD

    lo, hi = ex.scale(token)
    return f"{lo + THRESHOLD * (hi - lo):.3f} {hi:.3f}"


def _legend(ex, alpha: float, token: int | None) -> str:
    start, best = _range(ex, token).split()
    one = ex.unit.removesuffix("es").removesuffix("s")
    return (f'<img class="legend" src="/legend.png?alpha={alpha:g}" alt="colour key">'
            f'<div class="legendtext"><span id="legend-lo">{start}</span><span id="legend-hi">{best}</span></div>'
            f'<div class="meta">similarity of a query {one} and a page patch; patches under '
            f'<span id="legend-cut">{start}</span> are not tinted</div>')


def _matches(ex, tokens) -> str:
    """A line per query token: the passage word it matched best, and where its term of the score came
    from when that was the ``Passage:`` prompt instead."""
    items = []
    for i in tokens:
        word, score = ex.label(i).rsplit(" ", 1)
        prompt = f' <span class="meta">(its {score} in the score: the \u201cPassage:\u201d prompt)</span>' \
            if ex.from_prompt(i) else ""
        items += [f'<li>{_e(word)} \u2192 <mark>{_e(w)}</mark> {v:.3f}{prompt}</li>' for w, v in ex.matches(i)]
    return f'<ul class="matches">{"".join(items)}</ul>'


def page_view(hit, ex, link_query: dict, token: int | None, problem: str | None, alpha: float = 0.7) -> str:
    """A page large with its heat-map (a text passage: its text with the matched words marked), a chip
    per meaningful query token, and a link to the source. ``link_query``: q or qi, and k."""
    name = os.path.basename(hit.path)
    base = f"/page/{hit.page_id}?"
    text = hit.metadata.get("kind") == "text"
    where = f"passage {hit.page}" if text else f"page {hit.page}"
    side = '<p class="meta">Search with a query to see where it matches on this page.</p>'
    picture = f"/page-image/{hit.page_id}.png"
    if ex is not None:
        side = f'<div class="summary" id="summary">{_e(ex.summary())}</div>'
        if text:
            side += _chips(ex, base, link_query, token, None)
            side += _matches(ex, [token] if token is not None else [i for i, m in enumerate(ex.meaningful) if m][:64])
        else:
            img_params = dict(link_query, **({"token": token} if token is not None else {}))
            picture = f"/heatmap/{hit.page_id}.png?" + urlencode(img_params)
            side += _chips(ex, base, link_query, token, f"/heatmap/{hit.page_id}.png?") + _legend(ex, alpha, token)
        side += f'<div class="note">{_e(ex.note)}</div>' if ex.note else ""
    if problem is None:
        source = (f'<a class="open" id="open-source" href="/doc/{hit.page_id}#page={hit.page}" target="_blank" '
                  f'rel="noopener">Open {_e(name)}{"" if text else f" at page {hit.page}"} \u2197</a>')
    else:
        source = f'<div class="error">Source file: {_e(problem)}.</div>'
    back = ""
    if link_query.get("q") or link_query.get("qi"):
        back = f'<a id="back" href="/?{_e(urlencode(link_query))}">\u2190 back to the results</a>'
    if text:
        marks = passage_marks(ex, token) if ex is not None else []
        view = f'<div class="passage big" id="passage">{marked(hit.text or "", marks)}</div>'
    else:
        view = (f'<div class="pic"><img id="heat" src="{_e(picture)}" alt="{where} with heat-map">'
                '<div id="heatwait">computing heat-map\u2026</div></div>')
    return f"""{back}
<h2 title="{_e(hit.path)}">{_e(name)} \u2014 {where}</h2>
<div class="path">{_e(hit.path)}</div>
<div class="view">{view}
<div class="side">{source}{side}</div></div>"""
