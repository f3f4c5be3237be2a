"""Heat-maps (Engine.explain) and thumbnails: known answers on synthetic vectors, the real tiny model's
token layout, and the whole path on real PDFs (a non-square page, a /Rotate 90 page), including
indexes made before layouts were recorded.
"""

from __future__ import annotations

import functools
import logging
import shutil

import lmdb
import numpy as np
import pymupdf
import pytest
from _store_child import unit
from PIL import Image

from jevsearch import Engine, Hit, Index, ShardedEngine
from jevsearch.errors import DocumentError, InvalidInputError, PageNotFoundError
from jevsearch.ingest import thumbnail as thumbs
from jevsearch.ingest.pages import open_document
from jevsearch.ingest.sources import Source
from jevsearch.search.explain import Explanation, blend, heat_colors, patch_maps
from jevsearch.store.lmdbenv import current_env
from jevsearch.store.schema import page_key
from jevsearch.store.visual import PageView
from tests.ingest_corpus import make_truncated_pdf, tiny_encoder

MAX_PIXELS = 128 * 28 * 28


# ----- pure math ------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows, cols, cell", [(3, 5, (2, 1)), (5, 3, (1, 2)), (4, 4, (0, 3))])
def test_hottest_cell_is_the_patch_equal_to_the_query_token(rows, cols, cell):
    rng = np.random.default_rng(rows * 10 + cols)
    first, tail = 4, 7
    page = unit(rng, first + rows * cols + tail, 128)
    query = unit(rng, 3, 128)
    page[first + cell[0] * cols + cell[1]] = query[1]  # patch (r, c) is query token 1
    maps, scores = patch_maps(query, page, first, rows, cols)
    assert maps.shape == (3, rows, cols) and maps.dtype == np.float32
    assert np.unravel_index(maps[1].argmax(), maps[1].shape) == cell
    assert maps[1][cell] == pytest.approx(1.0, abs=1e-6) and scores[1] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(scores, (query @ page.T).max(1), rtol=1e-6)  # the MaxSim terms, prompt rows too

    # The blended picture has that cell's square, and only it, in the hottest colour, at its place on
    # a non-square picture (cells 40 x 30 px).
    img = np.asarray(blend(Image.new("RGB", (cols * 40, rows * 30), "white"), maps[1], alpha=1.0)).astype(int)
    hot = np.all(img == heat_colors(np.float32(1.0)), axis=-1)
    ys, xs = np.nonzero(hot)
    assert (ys.min() // 30, xs.min() // 40, ys.max() // 30, xs.max() // 40) == cell * 2
    assert hot.sum() == 40 * 30


def test_explanation_tokens_combined_map_and_errors():
    maps = np.stack([np.full((2, 3), v, np.float32) for v in (0.1, 0.2, 0.6)])
    maps[2, 1, 2] = 0.9
    ex = Explanation(["Query", " revenue", " region"], np.array([False, True, True]), maps,
                     np.array([0.1, 0.2, 0.9], np.float32), Image.new("RGB", (60, 40)))
    np.testing.assert_allclose(ex.combined(), maps[1:].max(0))  # where any query word matches best
    assert ex.scale() == pytest.approx((0.6, 0.9)) and ex.scale(1) == pytest.approx((0.2, 0.2))  # median, max
    assert ex.token_index("revenue") == 1 and ex.token_index(" region") == 2
    assert ex.score == pytest.approx(1.2) and ex.grid == (2, 3)
    assert "revenue" in ex.label(1) and ex.overlay(token=" revenue").size == (60, 40)
    for bad in (5, "zebra", 1.5):
        with pytest.raises(InvalidInputError, match="token"):
            ex.overlay(token=bad)
    with pytest.raises(InvalidInputError, match="alpha"):
        blend(ex.image, maps[0], alpha=2)
    with pytest.raises(InvalidInputError, match="does not fit"):
        patch_maps(np.ones((1, 4), np.float32), np.ones((5, 4), np.float32), first=2, rows=2, cols=2)


# ----- the model's token layout -------------------------------------------------------------------
def test_layout_matches_the_models_token_order_on_a_non_square_image():
    """Invert one 28x28 square of an image: the visual row that changes most is the one PageView's
    layout assigns to that square (so rows vs columns and the prompt offset are the model's)."""
    enc = tiny_encoder()
    proc = enc.processor
    rng = np.random.default_rng(0)
    base = (rng.random((4 * 28, 7 * 28, 3)) * 255).astype(np.uint8)
    rows, cols = proc.image_grid(7 * 28, 4 * 28)
    assert (rows, cols) == (4, 7)
    view = PageView(rows, cols, proc.image_prefix_tokens, rows * cols + proc.image_prompt_tokens)
    a = enc.encode_images([Image.fromarray(base)]).multi[0]
    start, stop = view.grid_rows(len(a))
    for r, c in [(1, 5), (3, 0), (0, 6)]:
        changed = base.copy()
        changed[r * 28:(r + 1) * 28, c * 28:(c + 1) * 28] ^= 255
        b = enc.encode_images([Image.fromarray(changed)]).multi[0]
        moved = (1 - (a * b).sum(1))[start:stop].reshape(rows, cols)
        assert np.unravel_index(moved.argmax(), moved.shape) == (r, c)


def test_token_labels_align_with_query_vectors():
    enc = tiny_encoder()
    labels, meaningful = enc.processor.text_token_labels("revenue by région, 2024", "Query: ")
    emb = enc.encode_texts(["revenue by région, 2024"]).multi[0]
    assert len(labels) == len(meaningful) == len(emb)
    assert labels[:3] == ["Query", ":", " revenue"] and meaningful[:3] == [False, False, True]
    assert "".join(labels) == "Query: revenue by région, 2024"
    assert [lab for lab, m in zip(labels, meaningful) if not m] == ["Query", ":", ",", " "]
    labels, meaningful = enc.processor.image_token_labels(2, 3)
    assert labels[4] == "patch 0,0" and labels[9] == "patch 1,2" and sum(meaningful) == 6
    assert len(labels) == 6 + enc.image_prompt_tokens


# ----- stored views at the index level -----------------------------------------------------------
def test_page_views_are_stored_validated_and_deleted_with_their_pages(tmp_path):
    rng = np.random.default_rng(1)
    multis = [unit(rng, 2 + 6 + 1, 32), unit(rng, 5, 32)]
    with Index.create(tmp_path / "i", single_dim=8, multi_dim=32) as idx:
        with pytest.raises(InvalidInputError, match="does not fit"):
            idx.add_embeddings("a", unit(rng, 2, 8), multis, page_views=[PageView(2, 4, 2, 9), None])
        with pytest.raises(InvalidInputError, match="page_views"):
            idx.add_embeddings("a", unit(rng, 2, 8), multis, page_views=[PageView(2, 3, 2, 9)])
        views = [PageView(2, 3, 2, 9, b"thumb"), None]
        idx.add_embeddings("a", unit(rng, 2, 8), multis, page_views=views, metadata={"v": 1})
        hits = idx.search_embeddings(None, multis[0][3:5], k=2, exhaustive=True)
        first = next(h for h in hits if h.page == 1)
        multi, view = idx.page_data(first)
        assert view == views[0] and view.grid_rows(len(multi)) == (2, 8)
        np.testing.assert_array_equal(multi, multis[0].astype(np.float16).astype(np.float32))  # what is scored
        assert idx.page_data(next(h for h in hits if h.page == 2))[1] is None
        assert idx.page_hit(first.page_id).page == 1
        assert idx.stats()["bytes"]["visual"] > 0
        idx.add_embeddings("a", unit(rng, 1, 8), [unit(rng, 4, 32)], metadata={"v": 2})  # replaced
        with pytest.raises(PageNotFoundError, match="search again"):
            idx.page_data(first)
        with pytest.raises(PageNotFoundError):
            idx.page_hit(first.page_id)
        idx.verify()  # the old page's view went with it: no orphans
        with idx._state.store.read() as txn:
            assert list(idx._state.store.iter_keys(txn, "visual")) == []


def _drop_visual_table(path):
    """Make ``path`` look like an index written before the visual table existed."""
    env_dir, _ = current_env(str(path))
    env = lmdb.open(env_dir, max_dbs=16)
    try:
        db = env.open_db(b"visual", create=False)
        with env.begin(write=True) as txn:
            txn.drop(db, delete=True)
    finally:
        env.close()


def test_an_index_without_the_visual_table_opens_and_gets_it_back(tmp_path):
    rng = np.random.default_rng(2)
    with Index.create(tmp_path / "i", single_dim=8, multi_dim=32) as idx:
        idx.add_embeddings("a", unit(rng, 1, 8), [unit(rng, 5, 32)])
    _drop_visual_table(tmp_path / "i")
    with Index.open(tmp_path / "i", readonly=True) as idx:
        hit = idx.search_embeddings(None, unit(rng, 2, 32), k=1, exhaustive=True)[0]
        assert idx.page_data(hit)[1] is None and "visual" not in idx.stats()["bytes"]
        idx.verify()
    with Index.open(tmp_path / "i") as idx:  # a writer adds the table
        idx.add_embeddings("b", unit(rng, 1, 8), [unit(rng, 5, 32)], page_views=[PageView(1, 3, 1, 5)])
        hit = idx.search_embeddings(None, unit(rng, 2, 32), k=2, exhaustive=True)
        assert sorted(idx.page_data(h)[1] is None for h in hit) == [False, True]
        idx.compact()
        idx.verify()
    with Index.open(tmp_path / "i", readonly=True) as idx:
        assert idx.page_data(idx.page_hit(1))[1] == PageView(1, 3, 1, 5)


# ----- the engine, end to end on real PDFs ----------------------------------------------------------
def _pdf_with_square(path, *, rotate: int, square: bool, size=(700, 420)):
    """A landscape page (or a portrait page shown landscape by /Rotate 90) with text, and maybe a
    black square in the right half."""
    doc = pymupdf.open()
    page = doc.new_page(width=size[0], height=size[1])
    page.insert_textbox(pymupdf.Rect(20, 20, size[0] - 20, 120), "quarterly revenue by region " * 6, fontsize=11)
    if square:
        page.draw_rect(pymupdf.Rect(size[0] * 0.62, size[1] * 0.55, size[0] * 0.62 + 60, size[1] * 0.55 + 60),
                       color=(0, 0, 0), fill=(0, 0, 0))
    page.set_rotation(rotate)
    doc.save(str(path))
    doc.close()


def _square_cell(path, geometry):
    """Grid cell (row, col) of the square's centre, found in the raster the model sees."""
    with open_document(Source(str(path), "pdf")) as doc:
        raster = doc.render(0, geometry)
    dark = np.asarray(raster.convert("L")) < 40
    dark[: raster.height // 3] = False  # not the text
    ys, xs = np.nonzero(dark)
    return raster, (int(ys.mean()) // geometry.factor, int(xs.mean()) // geometry.factor)


@pytest.fixture(scope="module", params=("one", "sharded"))
def engine_pages(tmp_path_factory, request):
    """A landscape page and a /Rotate 90 page (shown landscape), each with a square, in one index or in
    a sharded one: explain answers the same on both."""
    root = tmp_path_factory.mktemp("explain")
    _pdf_with_square(root / "wide.pdf", rotate=0, square=True)
    _pdf_with_square(root / "turned.pdf", rotate=90, square=True, size=(420, 700))
    create = Engine.create if request.param == "one" else functools.partial(ShardedEngine.create, shards=2)
    eng = create(root / "idx", model=tiny_encoder(), max_pixels=MAX_PIXELS)
    eng.add([root / "wide.pdf", root / "turned.pdf"])
    yield root, eng
    eng.close()


@pytest.mark.parametrize("name", ["wide.pdf", "turned.pdf"])
def test_explain_finds_the_patch_in_the_right_orientation(engine_pages, name):
    root, eng = engine_pages
    raster, cell = _square_cell(root / name, eng.page_geometry)
    assert raster.width > raster.height  # both are shown landscape (the rotation is applied)
    hit = next(h for h in eng.search("quarterly revenue", k=2, mode="visual") if h.path == str(root / name))

    # Query = the page's own raster: its visual token at the square's cell is (up to float16 storage)
    # the stored row of that cell, so its map peaks there.
    ex = eng.explain(hit, raster)
    rows, cols = ex.grid
    assert (rows, cols) == (raster.height // 28, raster.width // 28) and cols > rows
    i = ex.tokens.index(f"patch {cell[0]},{cell[1]}")
    assert ex.meaningful[i] and ex.source == "stored" and ex.note == ""
    assert np.unravel_index(ex.maps[i].argmax(), ex.maps[i].shape) == cell
    assert ex.maps[i][cell] == pytest.approx(1.0, abs=2e-3)

    # The overlay of that token (on its own range, without its label) tints the square alone,
    # on the picture as displayed.
    over = np.asarray(blend(ex.image, ex.combined(i), 1.0, None, ex.scale(i))).astype(int)
    hot = np.any(over != np.asarray(ex.image.convert("RGB")), axis=-1)
    ys, xs = np.nonzero(hot)
    h, w = over.shape[:2]
    assert (int(ys.mean() * rows / h), int(xs.mean() * cols / w)) == cell

    # Text query: the maps are exactly the stored vectors' similarities and sum to the hit's score.
    text = eng.explain(hit, "quarterly revenue")
    assert text.tokens == ["Query", ":", " quarterly", " revenue"] and text.meaningful.tolist() == [False, False, True, True]
    assert text.score == pytest.approx(hit.score, abs=1e-4)
    multi, view = eng.page_data(hit)
    q = eng.encoder.encode_texts(["quarterly revenue"]).multi[0]
    np.testing.assert_allclose(text.maps.reshape(4, -1), (q @ multi.T)[:, view.first:view.first + rows * cols],
                               atol=1e-5)


def test_explain_recomputes_for_pages_without_a_layout_and_says_so(tmp_path):
    _pdf_with_square(tmp_path / "turned.pdf", rotate=90, square=True, size=(420, 700))
    with Engine.create(tmp_path / "idx", model=tiny_encoder(), max_pixels=MAX_PIXELS) as eng:
        eng.add([tmp_path / "turned.pdf"])
        hit = eng.search("revenue", k=1)[0]
        stored = eng.explain(hit, "quarterly revenue")
        # Stored rows that are not one per patch (as pooled tokens would be): recomputed, and said why.
        multi, view = eng.page_data(hit)
        with eng._state.store.write() as txn:
            eng._state.store.put(txn, "visual", page_key(hit.page_id),  # sealed: a valid record, not a damaged one
                           PageView(view.rows, view.cols, view.first, view.tokens + 3).encode())
        pooled = eng.explain(hit, "quarterly revenue")
        assert pooled.source == "recomputed" and "not one per patch" in pooled.note
        np.testing.assert_allclose(pooled.maps, stored.maps, atol=2e-3)
    _drop_visual_table(tmp_path / "idx")  # as if indexed by an older jevsearch
    with Engine.open(tmp_path / "idx", readonly=True) as eng:
        hit = eng.search("revenue", k=1)[0]
        again = eng.explain(hit, "quarterly revenue")
        assert again.source == "recomputed" and "no patch layout" in again.note
        np.testing.assert_allclose(again.maps, stored.maps, atol=2e-3)  # float16 storage vs fresh float32
        assert again.image.size[0] > again.image.size[1]
        (tmp_path / "turned.pdf").write_bytes(b"%PDF-1.4 something else")
        with pytest.raises(DocumentError, match="changed since it was indexed"):
            eng.explain(hit, "quarterly revenue")


def test_thumbnails_are_small_stored_and_survive_the_source(tmp_path, caplog):
    _pdf_with_square(tmp_path / "turned.pdf", rotate=90, square=True, size=(420, 700))
    with Engine.create(tmp_path / "idx", model=tiny_encoder(), max_pixels=MAX_PIXELS) as eng:
        eng.add([tmp_path / "turned.pdf"])
        hit = eng.search("revenue", k=1)[0]
        view = eng.page_data(hit, vectors=False)[1]
        assert thumbs.mime_type(view.thumbnail) in ("image/webp", "image/jpeg") and len(view.thumbnail) < 8000
        small = eng.thumbnail(hit)
        w, h = eng.page_geometry.fit_page(700, 420)  # made from the raster the model saw (shown landscape)
        assert small.size == (256, round(256 * h / w))
        assert eng.thumbnail(hit, width=100).width == 100
        big = eng.thumbnail(hit, width=700)  # larger than stored: rendered from the unchanged source
        assert big.width == 700 and _sharpness(big) > 1.5 * _sharpness(small.resize(big.size, Image.Resampling.BICUBIC))
        with pytest.raises(InvalidInputError, match="width"):
            eng.thumbnail(hit, width=0)

        (tmp_path / "turned.pdf").unlink()  # the source is gone: the stored thumbnail still shows
        assert np.array_equal(np.asarray(eng.thumbnail(hit)), np.asarray(small))
        with caplog.at_level(logging.WARNING, logger="jevsearch.visuals"):
            assert eng.thumbnail(hit, width=512).width == 512
        assert "gone" in caplog.text and "upscaled" in caplog.text


def _sharpness(img):
    g = np.asarray(img.convert("L"), np.float32)
    return float(np.abs(np.diff(g, axis=1)).mean())


def test_explain_a_partial_document_finds_its_pages_by_number(tmp_path):
    """Page 1 of a cut PDF cannot be rendered: pages 2 and 3 are stored as the document's first two
    pages; the hit for page 3 must be explained with page 3's vectors (stored == recomputed from page 3)."""
    make_truncated_pdf(tmp_path / "cut.pdf")
    with Engine.create(tmp_path / "idx", model=tiny_encoder(), max_pixels=MAX_PIXELS) as eng:
        eng.add([tmp_path / "cut.pdf"])
        hits = {h.page: h for h in eng.search("revenue", k=5)}
        assert sorted(hits) == [2, 3]
        stored = {p: eng.explain(h, "revenue") for p, h in hits.items()}
        assert eng.page_hit(hits[3].page_id).page == 3 and stored[3].source == "stored"
        assert eng.thumbnail(hits[3]).size == eng.thumbnail(Hit(**{**vars(hits[3]), "page_id": None})).size
        with pytest.raises(PageNotFoundError):
            eng.page_data(Hit(hits[3].doc_id, 1, 0.0, hits[3].metadata))  # the page left out
    _drop_visual_table(tmp_path / "idx")
    with Engine.open(tmp_path / "idx", readonly=True) as eng:
        for page, h in hits.items():
            again = eng.explain(h, "revenue")
            assert again.source == "recomputed"
            np.testing.assert_allclose(again.maps, stored[page].maps, atol=2e-3)


def test_moved_and_copied_files_keep_their_views(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    _pdf_with_square(docs / "a.pdf", rotate=0, square=True)
    with Engine.create(tmp_path / "idx", model=tiny_encoder(), max_pixels=MAX_PIXELS) as eng:
        eng.add([docs])
        (docs / "a.pdf").rename(docs / "moved.pdf")
        shutil.copy(docs / "moved.pdf", docs / "copy.pdf")
        report = eng.add([docs], prune=True)
        assert report.moved and report.copied  # neither re-encoded: the views come with the vectors
        for h in eng.search("revenue", k=2):
            multi, view = eng.page_data(h)
            assert view is not None and view.grid_rows(len(multi)) and view.thumbnail
            assert eng.explain(h, "revenue").source == "stored"
