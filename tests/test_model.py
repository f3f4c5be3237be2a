"""The encoder against the reference outputs of tests/fixtures/jina-v4-tiny, and its input handling.

The fixture is a tiny random checkpoint written by the reference implementation; expected/fp32 holds
what the reference computes in float32 (its default, torchvision-based image processor), and
expected/fp32_slow_image_processor the same with the PIL image processor.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jevsearch.errors import InvalidInputError
from jevsearch.model import JinaV4Encoder, plan_batches
from jevsearch.model import processor as processor_mod

FIX = Path(__file__).parent / "fixtures" / "jina-v4-tiny"
CKPT = FIX / "ckpt"
EXP = FIX / "expected"
TASKS = ["retrieval", "text-matching", "code"]
COS = 0.99999


@pytest.fixture(scope="module")
def enc():
    return JinaV4Encoder.from_pretrained(CKPT, device="cpu", dtype=torch.float32)


def _inputs(name):
    return json.loads((EXP / "inputs" / name).read_text())


def _image_paths():
    return [str(EXP / "inputs" / x["file"]) for x in _inputs("images.json")]


def _assert_matches(e, sub, task, name, cos=COS):
    """Single and per-row multi cosines >= cos, identical token counts, all truncations."""
    ref = EXP / sub / task
    single = np.load(ref / f"{name}_single.npy")
    assert e.single.dtype == np.float32 and e.single.shape == single.shape
    assert np.sum(e.single * single, axis=1).min() >= cos
    lengths = np.load(ref / f"{name}_multi_lengths.npy")
    assert [m.shape[0] for m in e.multi] == lengths.tolist()
    multi = np.load(ref / f"{name}_multi.npy")
    for i, m in enumerate(e.multi):
        assert m.dtype == np.float32 and m.shape[1] == multi.shape[2]
        assert np.sum(m * multi[i, : len(m)], axis=1).min() >= cos, f"{name}[{i}]"


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("kind", ["query", "passage"])
def test_texts_match_reference(enc, task, kind):
    texts = _inputs("queries.json" if kind == "query" else "passages.json")
    e = enc.encode_texts(texts, task=task, prompt_name=kind)
    _assert_matches(e, "fp32", task, f"text_{kind}")
    for k in enc.matryoshka_dims:
        t = enc.encode_texts(texts, task=task, prompt_name=kind, truncate_dim=k)
        ref = np.load(EXP / "fp32" / task / f"text_{kind}_single_trunc{k}.npy")
        assert t.single.shape == (len(texts), k)
        assert np.sum(t.single * ref, axis=1).min() >= COS
        np.testing.assert_allclose(np.linalg.norm(t.single, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("task", TASKS)
def test_images_match_reference(enc, task):
    e = enc.encode_images(_image_paths(), task=task)
    _assert_matches(e, "fp32", task, "image")
    for k in enc.matryoshka_dims:
        ref = np.load(EXP / "fp32" / task / f"image_single_trunc{k}.npy")
        assert np.sum(e.truncated(k).single * ref, axis=1).min() >= COS
    t = enc.encode_images(_image_paths()[:2], task=task, truncate_dim=8)
    assert np.sum(t.single * np.load(EXP / "fp32" / task / "image_single_trunc8.npy")[:2], axis=1).min() >= COS
    # The PIL-processor reference differs from fp32/ only by resize rounding: single vectors agree
    # to 1e-6, per-token rows only to ~1.5e-4 (which is why we reproduce the default processor).
    slow = np.load(EXP / "fp32_slow_image_processor" / task / "image_single.npy")
    assert np.sum(e.single * slow, axis=1).min() >= COS


def test_text_matching_passages_use_query_prefix(enc):
    passages = _inputs("passages.json")
    ids = enc.processor.tokenize_texts(passages, prefix="Query: ")
    ref_ids = np.load(EXP / "inputs/tokenized/text-matching/text_passage_input_ids.npy")
    ref_mask = np.load(EXP / "inputs/tokenized/text-matching/text_passage_attention_mask.npy")
    for i, row in enumerate(ids):
        assert row == ref_ids[i][ref_mask[i] == 1].tolist()
    # The reference's task-as-argument quirk (Passage: prefix) is not what we produce.
    e = enc.encode_texts(passages, task="text-matching", prompt_name="passage")
    quirk = np.load(EXP / "fp32/text-matching/text_passage_taskarg_single.npy")
    assert np.sum(e.single * quirk, axis=1).max() < COS


@pytest.mark.parametrize("task", ["retrieval", "code"])
def test_text_tokens_match_reference(enc, task):
    for kind, prefix in (("query", "Query: "), ("passage", "Passage: ")):
        texts = _inputs("queries.json" if kind == "query" else "passages.json")
        ref_ids = np.load(EXP / f"inputs/tokenized/{task}/text_{kind}_input_ids.npy")
        batch = enc.processor.text_batch(enc.processor.tokenize_texts(texts, prefix))
        np.testing.assert_array_equal(batch.input_ids.numpy(), ref_ids)
        np.testing.assert_array_equal(batch.attention_mask.numpy(),
                                      np.load(EXP / f"inputs/tokenized/{task}/text_{kind}_attention_mask.npy"))


def test_image_inputs_and_3d_positions_match_reference(enc):
    images = [Image.open(p) for p in _image_paths()]
    batch = enc.processor.image_batch(images)
    np.testing.assert_array_equal(batch.input_ids.numpy(), np.load(EXP / "inputs/tokenized/image_input_ids.npy"))
    np.testing.assert_array_equal(batch.image_grid_thw.numpy(), np.load(EXP / "inputs/tokenized/image_grid_thw.npy"))
    mask = batch.attention_mask.numpy().astype(bool)
    ref = np.load(EXP / "fp32/debug/image_position_ids_3d.npy")  # [3, B, L]
    ours = enc._rope_positions(batch).numpy()
    np.testing.assert_array_equal(ours[:, mask], ref[:, mask])
    # The trap: 1-D positions (what transformers falls back to without mm_token_type_ids) differ.
    one_d = np.broadcast_to(np.cumsum(mask, axis=1) - 1, ours.shape)
    assert (one_d[:, mask] != ref[:, mask]).any()


def test_pixels_agree_with_stock_pil_processor(enc):
    """Same normalisation and patch order as transformers' PIL Qwen2-VL processor; only resize rounding differs."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    cfg = json.loads((CKPT / "preprocessor_config.json").read_text())
    stock = Qwen2VLImageProcessorPil(min_pixels=cfg["min_pixels"], max_pixels=cfg["max_pixels"],
                                     image_mean=cfg["image_mean"], image_std=cfg["image_std"])
    images = [Image.open(p) for p in _image_paths()]
    ref = stock(images, return_tensors="pt")
    batch = enc.processor.image_batch(images)
    np.testing.assert_array_equal(batch.image_grid_thw.numpy(), ref["image_grid_thw"].numpy())
    diff = (batch.pixel_values - ref["pixel_values"]).abs()
    assert diff.mean() < 1e-3 and (diff > 0.05).float().mean() < 1e-3


def test_image_tokens_match_reference(enc):
    sizes = [(x["width"], x["height"]) for x in _inputs("images.json")]
    expected = json.loads((EXP / "reference_checks.json").read_text())["rules"]["vision_tokens_per_image"]
    assert [enc.image_tokens(w, h) for w, h in sizes] == expected
    assert enc.image_prompt_tokens == 11
    # A smaller pixel budget means fewer tokens, and encode_images honours it.
    n = enc.image_tokens(1000, 1400, max_pixels=100_000)
    assert n < expected[2] and n * 28 * 28 <= 100_000
    e = enc.encode_images([_image_paths()[2]], max_pixels=100_000)
    assert e.multi[0].shape[0] == n + enc.image_prompt_tokens


def test_attributes_and_identity(enc):
    assert (enc.hidden_size, enc.multi_dim) == (64, 128)
    assert enc.matryoshka_dims == (4, 8, 16, 32, 64)
    assert enc.task_names == tuple(TASKS)
    assert (enc.min_pixels, enc.max_pixels) == (3136, 602112)
    ident = json.loads(json.dumps(enc.identity))
    assert ident["name"] == str(CKPT)
    assert len(ident["fingerprint"]) == 64 and int(ident["fingerprint"], 16) >= 0
    assert (ident["hidden_size"], ident["multi_dim"], ident["matryoshka_dims"]) == (64, 128, [4, 8, 16, 32, 64])


def test_batching_does_not_change_results(enc):
    texts = _inputs("queries.json") + _inputs("passages.json")
    one_by_one = enc.encode_texts(texts, max_batch_tokens=1)
    together = enc.encode_texts(texts, max_batch_tokens=100_000)
    np.testing.assert_allclose(one_by_one.single, together.single, atol=1e-5)
    for a, b in zip(one_by_one.multi, together.multi):
        np.testing.assert_allclose(a, b, atol=1e-5)
    imgs = enc.encode_images(_image_paths(), max_batch_tokens=1)
    imgs_together = enc.encode_images(_image_paths(), max_batch_tokens=100_000)
    np.testing.assert_allclose(imgs.single, imgs_together.single, atol=1e-5)


def test_plan_batches_respects_budget_and_bounds_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 500, size=200).tolist()
    batches = plan_batches(lengths, max_tokens=1000)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) == 1 or len(b) * longest <= 1000
        assert all(4 * lengths[i] >= 3 * longest for i in b)
    assert plan_batches([2000, 3], max_tokens=100) == [[0], [1]]
    assert plan_batches([5, 100, 90, 7, 60], max_tokens=200) == [[1, 2], [4], [3], [0]]


def test_switching_tasks_reloads_nothing(enc):
    before = {n: p.data_ptr() for n, p in enc.module.named_parameters()}
    a = enc.encode_texts(["quicksort"], task="retrieval").single
    b = enc.encode_texts(["quicksort"], task="code").single
    c = enc.encode_texts(["quicksort"], task="retrieval").single
    assert {n: p.data_ptr() for n, p in enc.module.named_parameters()} == before
    assert np.abs(a - b).max() > 1e-3
    np.testing.assert_array_equal(a, c)


# ----- bad input -----------------------------------------------------------------------------
def test_empty_inputs(enc):
    e = enc.encode_texts([])
    assert e.single.shape == (0, 64) and e.single.dtype == np.float32 and e.multi == []
    assert enc.encode_images([], truncate_dim=8).single.shape == (0, 8)
    e = enc.encode_texts([""], prompt_name="passage")
    assert e.multi[0].shape == (len(enc.processor.tokenize_texts([""], "Passage: ")[0]), 128)
    assert np.isfinite(e.single).all()


@pytest.mark.parametrize("kwargs, word", [
    (dict(task="summarize"), "task"),
    (dict(prompt_name="document"), "prompt_name"),
    (dict(truncate_dim=100), "truncate_dim"),
    (dict(max_batch_tokens=0), "max_batch_tokens"),
])
def test_bad_text_arguments(enc, kwargs, word):
    with pytest.raises(ValueError, match=word):
        enc.encode_texts(["x"], **kwargs)


@pytest.mark.parametrize("kwargs, word", [
    (dict(device="tpu9"), "device"),
    (dict(dtype="int4"), "dtype"),
    (dict(dtype="float31"), "dtype"),
    (dict(max_batch_tokens=-5), "max_batch_tokens"),
])
def test_bad_load_arguments(kwargs, word):
    with pytest.raises(InvalidInputError, match=word):
        JinaV4Encoder.from_pretrained(CKPT, **kwargs)


def test_bad_text_containers(enc):
    with pytest.raises(InvalidInputError, match="wrap one in a list"):
        enc.encode_texts("a single string")
    with pytest.raises(InvalidInputError, match=r"texts\[1\]"):
        enc.encode_texts(["ok", 3])


def test_long_text_is_truncated_and_logged(enc, caplog):
    text = "word " * 40_000
    with caplog.at_level(logging.WARNING, logger="jevsearch.model.processor"):
        ids = enc.processor.tokenize_texts(["short", text], prefix="Passage: ")
    assert len(ids[1]) == processor_mod.MAX_TEXT_TOKENS and len(ids[0]) < 10
    assert "truncated" in caplog.text and "text 1" in caplog.text


def test_long_text_encodes_truncated(enc, monkeypatch, caplog):
    # The forward for a full 32768-token text is slow on 2 cores; a lower cap exercises the same path.
    monkeypatch.setattr(processor_mod, "MAX_TEXT_TOKENS", 300)
    with caplog.at_level(logging.WARNING):
        e = enc.encode_texts(["word " * 1000, "short"])
    assert [m.shape[0] for m in e.multi][0] == 300 and "truncated" in caplog.text


def test_tiny_and_huge_images(enc):
    e = enc.encode_images([Image.new("RGB", (5, 5), "red"), Image.new("RGB", (5000, 4000), "white")])
    assert e.multi[0].shape[0] == enc.image_tokens(5, 5) + 11 == 4 + 11
    huge = enc.image_tokens(5000, 4000)
    assert huge * 28 * 28 <= enc.max_pixels and e.multi[1].shape[0] == huge + 11
    with pytest.raises(InvalidInputError, match="aspect ratio"):
        enc.encode_images([Image.new("RGB", (1, 300))])


def test_image_modes(enc, tmp_path):
    rgb = Image.new("RGB", (64, 48), (120, 120, 120))
    gray = Image.new("L", (64, 48), 120)
    transparent = Image.new("RGBA", (64, 48), (0, 0, 0, 0))  # composited on white
    white = Image.new("RGB", (64, 48), (255, 255, 255))
    cmyk = Image.new("CMYK", (64, 48), (0, 50, 100, 0))
    palette = Image.new("P", (64, 48), 3)
    la = Image.new("LA", (64, 48), (120, 255))
    cmyk.save(tmp_path / "cmyk.jpg")
    e = enc.encode_images([rgb, gray, transparent, white, cmyk, palette, la, tmp_path / "cmyk.jpg"])
    assert np.isfinite(e.single).all() and len(e.multi) == 8
    np.testing.assert_allclose(e.single[0], e.single[1], atol=1e-6)
    np.testing.assert_allclose(e.single[2], e.single[3], atol=1e-6)
    np.testing.assert_allclose(e.single[0], e.single[6], atol=1e-6)


def test_unreadable_images_name_the_file(enc, tmp_path):
    bad = tmp_path / "garbage.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(InvalidInputError, match="garbage.png"):
        enc.encode_images([_image_paths()[0], bad])
    with pytest.raises(InvalidInputError, match="missing.png"):
        enc.encode_images([tmp_path / "missing.png"])
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(Path(_image_paths()[2]).read_bytes()[:2000])
    with pytest.raises(InvalidInputError, match="truncated.png"):
        enc.encode_images([truncated])
    with pytest.raises(InvalidInputError, match=r"images\[0\]"):
        enc.encode_images([np.zeros((4, 4, 3))])
    with pytest.raises(InvalidInputError, match="wrap one in a list"):
        enc.encode_images(Image.new("RGB", (8, 8)))
    with pytest.raises(InvalidInputError, match="max_pixels"):
        enc.encode_images([Image.new("RGB", (8, 8))], max_pixels=10)


def test_bfloat16_path_stays_close_to_float32():
    """The GPU default dtype, run on CPU: same shapes and float32 outputs, cosine to the fp32 reference >= 0.999."""
    enc16 = JinaV4Encoder.from_pretrained(CKPT, device="cpu", dtype="bfloat16")
    e = enc16.encode_texts(_inputs("queries.json"), task="code")
    assert e.single.dtype == np.float32
    assert np.sum(e.single * np.load(EXP / "fp32/code/text_query_single.npy"), axis=1).min() >= 0.999
    i = enc16.encode_images(_image_paths()[:1], task="code")
    assert np.sum(i.single * np.load(EXP / "fp32/code/image_single.npy")[:1], axis=1).min() >= 0.999
    assert i.multi[0].shape == (165, 128) and i.multi[0].dtype == np.float32
