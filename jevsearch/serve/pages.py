"""The app's HTML: server-rendered pages with inline CSS and a little plain JavaScript (no build step).

Every value from the index or the request is escaped (``html.escape``) or URL-encoded here; pages
work without JavaScript (token chips are links), which only adds progress and in-place updates.
"""

from __future__ import annotations

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
.legend{height:10px;border-radius:3px;background:linear-gradient(90deg,#000004,#57106e,#bc3754,#f98e09,#fcffa4)}
.legendtext{display:flex;justify-content:space-between;font-size:.75rem;color:#5c677d}
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
  wait.hidden=false;wait.textContent='computing heat-map\\u2026';heat.src=a.dataset.src;history.replaceState(null,'',a.href);}));
}
"""


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
<title>{_e(title)} \u2014 jevsearch</title><style>{_CSS}</style></head>
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
</main><script>{_JS}</script></body></html>"""


def marked(snippet: str) -> str:
    """A snippet escaped, its «matched words» (hybrid and lexical search) in <mark>."""
    return _MARKED.sub(r"<mark>\1</mark>", _e(snippet))


_MARKED = re.compile("\u00ab([^\u00ab\u00bb<>]*)\u00bb")


def error_box(message: str) -> str:
    return f'<div class="error" role="alert">{_e(message)}</div>'


def results(hits: list[dict], query_label: str, link_query: dict) -> str:
    """The results grid: a card per hit (thumbnail, document name, page, score, snippet)."""
    if not hits:
        return '<p class="meta">No results: the index is empty.</p>'
    cards = []
    for h in hits:
        href = f"/page/{h['page_id']}?" + urlencode(link_query)
        cards.append(
            f'<a class="card" href="{_e(href)}" data-rank="{h["rank"]}">'
            f'<img src="/thumb/{h["page_id"]}" alt="page {h["page"]} of {_e(os.path.basename(h["path"]))}" loading="lazy">'
            f'<div class="name" title="{_e(h["path"])}">{_e(os.path.basename(h["path"]))}</div>'
            f'<div class="meta">page {h["page"]} \u00b7 score {h["score"]:.3f}</div>'
            f'<div class="snippet">{marked(h["snippet"])}</div></a>')
    return (f'<p class="meta">{len(hits)} best pages for {_e(query_label)}; click one to see where it matched.</p>'
            f'<div class="grid" id="results">{"".join(cards)}</div>')


def page_view(hit, ex, link_query: dict, token: int | None, problem: str | None) -> str:
    """A page large with its heat-map, a chip per meaningful query token, and a link to the source."""
    name = os.path.basename(hit.path)
    base = f"/page/{hit.page_id}?"

    def chip(index: int | None, label: str, score: float | None) -> str:
        params = dict(link_query, **({"token": index} if index is not None else {}))
        src = f"/heatmap/{hit.page_id}.png?" + urlencode(params)
        on = " on" if index == token else ""
        extra = f" <small>{score:.2f}</small>" if score is not None else ""
        return (f'<a class="chip{on}" href="{_e(base + urlencode(params))}" data-src="{_e(src)}">'
                f'{_e(label)}{extra}</a>')

    if ex is not None:
        img_params = dict(link_query, **({"token": token} if token is not None else {}))
        picture = f"/heatmap/{hit.page_id}.png?" + urlencode(img_params)
        meaningful = [i for i, m in enumerate(ex.meaningful) if m]
        chips = [chip(None, "all query words", None)]
        if len(meaningful) <= 64:  # an image query has hundreds of patch tokens: "all" only
            chips += [chip(i, ex.tokens[i].strip(), float(ex.token_scores[i])) for i in meaningful]
        side = (f'<div class="meta">score {ex.score:.3f} (sum over the query tokens of their best match)</div>'
                f'<h3>Query tokens</h3><div class="chips" id="tokens">{"".join(chips)}</div>'
                '<div class="legend"></div><div class="legendtext"><span>least similar</span><span>most similar</span></div>'
                + (f'<div class="note">{_e(ex.note)}</div>' if ex.note else ""))
    else:
        picture = f"/page-image/{hit.page_id}.png"
        side = '<p class="meta">Search with a query to see where it matches on this page.</p>'
    if problem is None:
        source = (f'<a class="open" id="open-source" href="/doc/{hit.page_id}#page={hit.page}" target="_blank" '
                  f'rel="noopener">Open {_e(name)} at page {hit.page} \u2197</a>')
    else:
        source = f'<div class="error">Source file: {_e(problem)}.</div>'
    back = f'<a href="/?{_e(urlencode(link_query))}">\u2190 back to results</a>' if link_query.get("q") else ""
    return f"""{back}
<h2 title="{_e(hit.path)}">{_e(name)} \u2014 page {hit.page}</h2>
<div class="view"><div class="pic"><img id="heat" src="{_e(picture)}" alt="page {hit.page} with heat-map">
<div id="heatwait">computing heat-map\u2026</div></div>
<div class="side">{source}{side}</div></div>"""
