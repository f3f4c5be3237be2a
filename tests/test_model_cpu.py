"""The CPU paths of the model: dtype by measurement, weights read once, lazy vision tower, int8, query cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jevsearch.model import JinaV4Encoder, cpu
from jevsearch.model.cache import QueryCache, image_key, text_key
from jevsearch.model.kernels import OneDnnLinear, onednn_faster
from jevsearch.model.quant import Int8Linear
from jevsearch.model.weights import VISION

FIX = Path(__file__).parent / "fixtures" / "jina-v4-tiny"
CKPT = FIX / "ckpt"
INPUTS = FIX / "expected" / "inputs"


def _texts():
    return json.loads((INPUTS / "queries.json").read_text())[:6]


def _images():
    return [str(INPUTS / x["file"]) for x in json.loads((INPUTS / "images.json").read_text())][:2]


def _worst_cos(a, b) -> float:
    return float(np.min(np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))))


@pytest.fixture(scope="module")
def enc32():
    return JinaV4Encoder.from_pretrained(CKPT, device="cpu", dtype=torch.float32)


# ----- dtype by measurement ----------------------------------------------------------------------
def test_dtype_choice_needs_native_bf16_and_a_faster_matmul():
    def never(dtype):
        raise AssertionError("no native bf16: nothing is timed")

    assert cpu.choose_dtype(frozenset({"avx2", "avx512f", "avx512_vnni"}), never) == torch.float32
    faster = {torch.bfloat16: 1.0, torch.float32: 2.0}
    slower = {torch.bfloat16: 3.0, torch.float32: 2.0}
    assert cpu.choose_dtype(frozenset({"avx512_bf16"}), faster.get) == torch.bfloat16
    assert cpu.choose_dtype(frozenset({"amx_bf16"}), faster.get) == torch.bfloat16
    assert cpu.choose_dtype(frozenset({"avx512_bf16"}), slower.get) == torch.float32


def test_default_dtype_is_measured_once_and_follows_the_flags():
    first = cpu.default_cpu_dtype()
    assert cpu.default_cpu_dtype() is first  # cached: measured once per process
    if not cpu.NATIVE_BF16 & cpu.cpu_flags():
        assert first == torch.float32
    assert cpu.int8_input_dtype() in (torch.bfloat16, torch.float32)
    report = cpu.kernel_report()
    assert report["default_dtype"] == str(first).removeprefix("torch.") and "torch_cpu_capability" in report


# ----- lazy vision tower -------------------------------------------------------------------------
def test_text_use_never_loads_the_vision_tower_and_an_image_does(tmp_path):
    enc = JinaV4Encoder.from_pretrained(CKPT, device="cpu", dtype=torch.float32)
    visual = [p for n, p in enc.module.named_parameters() if n.startswith(VISION)]
    assert visual and all(p.device.type == "meta" for p in visual) and not enc.weights.vision_loaded
    enc.encode_texts(_texts(), task="retrieval")
    assert not enc.weights.vision_loaded
    enc.encode_images(_images()[:1])
    assert enc.weights.vision_loaded
    assert all(p.device.type == "cpu" for p in enc.module.parameters())


def test_engine_opens_without_loading_and_text_search_leaves_vision_unbuilt(tmp_path):
    from jevsearch import Engine

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Revenue grew in every region.\n\nCosts fell.")
    with Engine.create(tmp_path / "ix", model=str(CKPT)) as eng:
        eng.add([tmp_path / "docs"])
    with Engine.open(tmp_path / "ix", readonly=True, model=str(CKPT)) as eng:
        assert eng._encoder is None  # checked by fingerprint, nothing loaded
        assert eng.search("revenue", k=1)
        assert not eng.encoder.weights.vision_loaded
        eng.search(Image.open(_images()[0]).convert("RGB"), k=1)
        assert eng.encoder.weights.vision_loaded


# ----- the small-M linear kernel ----------------------------------------------------------------
@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_onednn_linear_matches_torch_linear_on_query_shapes():
    lin = torch.nn.Linear(256, 96)
    ref = torch.nn.Linear(256, 96)
    ref.load_state_dict(lin.state_dict())
    OneDnnLinear.wrap(lin)
    with torch.no_grad():
        for x in (torch.randn(1, 256), torch.randn(2, 12, 256), torch.randn(256, 7).t()):
            torch.testing.assert_close(lin(x), ref(x), atol=1e-5, rtol=1e-5)
    assert lin.weight.data_ptr() == lin.state_dict()["weight"].data_ptr()  # same weights, no copy


def test_encoder_picks_the_kernel_by_measurement_and_gives_the_same_vectors(enc32):
    lm = enc32.module.model.language_model
    fast = [m for m in lm.modules() if type(m) is OneDnnLinear]
    assert bool(fast) == onednn_faster(torch.float32)
    if not fast:
        fast = [OneDnnLinear.wrap(m) for m in lm.modules() if type(m) is torch.nn.Linear]
    with_fast = enc32.encode_texts(_texts())
    for m in fast:
        m.__class__ = torch.nn.Linear
    try:
        plain = enc32.encode_texts(_texts())
    finally:
        for m in fast:
            m.__class__ = OneDnnLinear
    np.testing.assert_allclose(with_fast.single, plain.single, atol=1e-5)
    for a, b in zip(with_fast.multi, plain.multi):
        np.testing.assert_allclose(a, b, atol=1e-5)


# ----- weight-only int8 --------------------------------------------------------------------------
def test_int8_language_model_stays_close_to_float32(enc32):
    enc8 = JinaV4Encoder.from_pretrained(CKPT, device="cpu", dtype="int8")
    assert enc8.dtype_name == "int8"
    layers = [m for n, m in enc8.module.named_modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 7 * enc8.config["text_config"]["num_hidden_layers"]
    for task in ("retrieval", "code"):
        a, b = enc32.encode_texts(_texts(), task=task), enc8.encode_texts(_texts(), task=task)
        assert _worst_cos(a.single, b.single) >= 0.99
        assert min(_worst_cos(x, y) for x, y in zip(a.multi, b.multi)) >= 0.99
    a, b = enc32.encode_images(_images()), enc8.encode_images(_images())
    assert _worst_cos(a.single, b.single) >= 0.99


def _mapped_from(path: Path) -> list[tuple[int, int]]:
    return [tuple(int(x, 16) for x in line.split()[0].split("-")) for line in open("/proc/self/maps")
            if line.rstrip().endswith(str(path))]


def test_int8_layers_are_quantised_once_then_mapped_from_the_cache(enc32, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("JEVSEARCH_CACHE_DIR", str(tmp_path))
    first = JinaV4Encoder.from_pretrained(CKPT, device="cpu", dtype="int8")
    (cached,) = (tmp_path / "int8").glob("*.safetensors")
    again = JinaV4Encoder.from_pretrained(CKPT, device="cpu", dtype="int8")
    spans = _mapped_from(cached)
    layers = [m for m in again.module.modules() if isinstance(m, Int8Linear)]
    assert layers and all(any(a <= m.weight_int8.data_ptr() < b for a, b in spans) for m in layers)
    np.testing.assert_array_equal(first.encode_texts(_texts()).single, again.encode_texts(_texts()).single)
    data = bytearray(cached.read_bytes())  # one flipped byte: named in the log, quantised again, same vectors
    data[-5] ^= 0xFF
    cached.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        healed = JinaV4Encoder.from_pretrained(CKPT, device="cpu", dtype="int8")
    assert "checksum mismatch" in caplog.text
    np.testing.assert_array_equal(first.encode_texts(_texts()).single, healed.encode_texts(_texts()).single)
    assert JinaV4Encoder.from_pretrained(CKPT, device="cpu", dtype="int8").module is not None
    assert not list((tmp_path / "int8").glob(".tmp-*"))


# ----- query cache -------------------------------------------------------------------------------
def test_cache_hits_misses_and_lru_eviction_by_entries_and_bytes():
    cache = QueryCache(max_entries=2, max_bytes=10_000)
    k = [text_key("fp", "float32", "retrieval", "Query: ", t) for t in "abc"]
    row, multi = np.ones(4, np.float32), np.ones((3, 4), np.float32)
    assert cache.get(k[0]) is None and cache.misses == 1
    cache.put(k[0], row, multi)
    cache.put(k[1], row, multi)
    assert cache.get(k[0]) is not None and cache.hits == 1  # k[0] is now the most recent
    cache.put(k[2], row, multi)
    assert len(cache) == 2 and cache.get(k[1]) is None and cache.get(k[0]) is not None
    assert not cache.get(k[0])[1].flags.writeable
    cache.put(k[1], row, np.ones((1000, 4), np.float32))  # 16 kB: over the byte bound, not kept
    assert cache.get(k[1]) is None and len(cache) == 2
    big = QueryCache(max_entries=10, max_bytes=3 * (16 + 48))
    for key in k + [text_key("fp", "float32", "retrieval", "Query: ", "d")]:
        big.put(key, row, multi)
    assert len(big) == 3 and big.get(k[0]) is None  # the oldest left to keep the bytes bound


def test_cache_keys_change_with_model_dtype_task_prompt_and_pixels():
    base = text_key("fp", "float32", "retrieval", "Query: ", "x")
    assert len({base, text_key("fp2", "float32", "retrieval", "Query: ", "x"),
                text_key("fp", "int8", "retrieval", "Query: ", "x"), text_key("fp", "float32", "code", "Query: ", "x"),
                text_key("fp", "float32", "retrieval", "Passage: ", "x"),
                text_key("fp", "float32", "retrieval", "Query: ", "y")}) == 6
    a, b = Image.new("RGB", (8, 8), "white"), Image.new("RGB", (8, 8), "black")
    assert image_key("fp", "float32", "retrieval", 100, a) == image_key("fp", "float32", "retrieval", 100, a.copy())
    assert image_key("fp", "float32", "retrieval", 100, a) != image_key("fp", "float32", "retrieval", 100, b)
    assert image_key("fp", "float32", "retrieval", 100, a) != image_key("fp", "float32", "retrieval", 200, a)


def test_encoder_serves_repeated_queries_from_its_cache(enc32):
    enc32.query_cache = QueryCache()
    texts = _texts()[:3]
    first = enc32.encode_texts(texts, cache=True)
    assert enc32.query_cache.misses == 3 and len(enc32.query_cache) == 3
    again = enc32.encode_texts([texts[1], "something new"], cache=True)
    assert enc32.query_cache.hits == 1 and enc32.query_cache.misses == 4
    np.testing.assert_array_equal(again.single[0], first.single[1])
    np.testing.assert_allclose(again.single[1], enc32.encode_texts(["something new"]).single[0], atol=1e-6)
    enc32.encode_texts(texts[:1], task="code", cache=True)
    assert enc32.query_cache.misses == 5  # another task: another key
    assert enc32.encode_texts(texts[:1], cache=True, truncate_dim=16).single.shape == (1, 16)


# ----- weights read once -------------------------------------------------------------------------
_PEAK_CHILD = r"""
import gc, json, sys, torch
from jevsearch.model import JinaV4Encoder
dtype = getattr(torch, sys.argv[2])
JinaV4Encoder.from_pretrained(sys.argv[1], device="cpu", dtype=dtype)  # imports, code paths, tokenizer warm
gc.collect()
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
enc = JinaV4Encoder.from_pretrained(sys.argv[1], device="cpu", dtype=dtype)
weights = sum(p.nbytes for p in enc.module.parameters() if p.device.type == "cpu")
peak = status("VmHWM:") - before
anon = status("RssAnon:")
from jevsearch.model import checkpoint
again = checkpoint.load_module(checkpoint.resolve_snapshot(sys.argv[1]), "cpu", dtype, vision=False)
print(json.dumps({"peak": peak, "anon": status("RssAnon:") - anon, "weights": weights}))
"""


@pytest.fixture(scope="module")
def scaled_ckpt(tmp_path_factory):
    """A checkpoint (bf16 files) scaled up enough that a second copy of its weights would show."""
    from jevsearch.model.tiny import full_size_config, write_streamed_checkpoint

    config = full_size_config()
    sizes = {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8, "num_key_value_heads": 2,
             "num_hidden_layers": 4}
    for d in (config, config["text_config"]):
        d.update(sizes)
        d["rope_scaling"]["mrope_section"] = [8, 12, 12]
    config["vision_config"].update(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=512,
                                   fullatt_block_indexes=[0])
    config["matryoshka_dims"] = [128, 256, 512]
    return write_streamed_checkpoint(tmp_path_factory.mktemp("scaled") / "scaled", config)


def _load_peak(ckpt, dtype: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PEAK_CHILD, str(ckpt), dtype], capture_output=True,
                         text=True, check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_loading_holds_the_weights_once(scaled_ckpt):
    """Converting (bf16 files to float32): peak memory <= 1.15x the weights it makes (+ a constant)."""
    got = _load_peak(scaled_ckpt, "float32")
    assert got["weights"] > 200e6
    assert got["peak"] <= 1.15 * got["weights"] + 32e6, got


def test_the_embedding_table_stays_in_the_files_dtype_and_rows_come_out_in_float32(enc32):
    from jevsearch.model.weights import CastEmbedding

    emb = enc32.module.model.language_model.embed_tokens
    assert isinstance(emb, CastEmbedding) and emb.weight.dtype == torch.bfloat16  # the fixture's files are bf16
    assert emb(torch.tensor([[1, 2]])).dtype == torch.float32
    assert any(a <= emb.weight.data_ptr() < b for a, b in _mapped_from(CKPT / "model.safetensors"))


def test_weights_in_the_files_dtype_are_mapped_not_copied(scaled_ckpt):
    """Loading in the files' own dtype copies nothing: the parameters are the page cache's pages
    (``anon``: the private memory a second load of the weights adds)."""
    got = _load_peak(scaled_ckpt, "bfloat16")
    assert got["weights"] > 150e6
    assert got["anon"] <= 0.05 * got["weights"] + 32e6, got
    assert got["peak"] <= 1.15 * got["weights"] + 32e6, got
