"""Checkpoint loading: strict tensor accounting, both key layouts, shards, missing files, hub id, tiny writer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from jevsearch.errors import CheckpointError
from jevsearch.model import JinaV4Encoder
from jevsearch.model.tiny import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "tests" / "fixtures" / "jina-v4-tiny" / "ckpt"
QUERIES = ["What is the capital of France?", "quicksort python"]
IMAGE = ROOT / "tests" / "fixtures" / "jina-v4-tiny" / "expected" / "inputs" / "images" / "img0_300x400.png"


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(CKPT, dst)
    for f in dst.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)
    return dst


def _outputs(path) -> tuple[np.ndarray, list, np.ndarray]:
    enc = JinaV4Encoder.from_pretrained(path, device="cpu", dtype=torch.float32)
    t = enc.encode_texts(QUERIES, task="code")
    return t.single, t.multi, enc.encode_images([IMAGE], task="text-matching").single


@pytest.fixture(scope="module")
def reference_outputs():
    return _outputs(CKPT)


def _edit(path: Path, fn) -> None:
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("model.layers.1.mlp.up_proj.weight"), r"missing tensors model\.language_model\.layers\.1\.mlp\.up_proj\.weight"),
    (lambda t: t.update({"model.norm.weight": torch.ones(65, dtype=torch.bfloat16)}),
     r"model\.norm\.weight has shape \(65,\), expected \(64,\)"),
    (lambda t: t.update({"lm_head.weight": torch.zeros(3, 64)}), r"unexpected tensors lm_head\.weight"),
    (lambda t: t.update({"visual.blocks.0.attn.qkv.bias": torch.zeros(96, dtype=torch.int32)}), r"non-float.*qkv\.bias"),
])
def test_corrupt_base_weights_are_refused(tmp_path, edit, message):
    ckpt = _copy(tmp_path)
    _edit(ckpt / "model.safetensors", edit)
    with pytest.raises(CheckpointError, match=message):
        JinaV4Encoder.from_pretrained(ckpt, device="cpu")


def test_corrupt_adapter_weights_are_refused(tmp_path):
    ckpt = _copy(tmp_path)
    key = "base_model.model.multi_vector_projector.lora_B.code.weight"
    _edit(ckpt / "adapters/adapter_model.safetensors", lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=r"missing tensors multi_vector_projector\.lora_B\.code\.weight"):
        JinaV4Encoder.from_pretrained(ckpt, device="cpu")
    # An adapter trained with another rank than adapter_config.json says.
    ckpt = _copy(tmp_path / "rank")
    cfg = json.loads((ckpt / "adapters/adapter_config.json").read_text())
    cfg["r"] = 16
    (ckpt / "adapters/adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"lora_A\.code\.weight has shape \(32, 128\), expected \(16, 128\)"):
        JinaV4Encoder.from_pretrained(ckpt, device="cpu")


@pytest.mark.parametrize("rel, keep", [("model.safetensors", 0.5), ("model.safetensors", 0.999),
                                       ("model.safetensors", 12 / 19831088),  # cut inside the header
                                       ("adapters/adapter_model.safetensors", 0.7)])
def test_truncated_weights_say_redownload(tmp_path, rel, keep):
    """An interrupted download: the file is cut short. A CheckpointError names it and the fix."""
    ckpt = _copy(tmp_path)
    path = ckpt / rel
    os.truncate(path, max(9, int(path.stat().st_size * keep)))
    with pytest.raises(CheckpointError) as info:
        JinaV4Encoder.from_pretrained(ckpt, device="cpu")
    assert str(path) in str(info.value) and "truncated" in str(info.value)
    assert "download the model snapshot again" in str(info.value)


@pytest.mark.parametrize("rel", ["config.json", "adapters/adapter_config.json", "adapters/adapter_model.safetensors",
                                 "tokenizer.json", "preprocessor_config.json", "model.safetensors"])
def test_missing_files_are_named(tmp_path, rel):
    ckpt = _copy(tmp_path)
    (ckpt / rel).unlink()
    with pytest.raises(CheckpointError, match=rel.split("/")[-1].replace(".", r"\.")):
        JinaV4Encoder.from_pretrained(ckpt, device="cpu")


def test_sharded_checkpoint_gives_identical_outputs(tmp_path, reference_outputs):
    ckpt = _copy(tmp_path)
    tensors = load_file(str(ckpt / "model.safetensors"))
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for name, part in shards.items():
        save_file({k: tensors[k] for k in part}, str(ckpt / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    single, multi, image = _outputs(ckpt)
    np.testing.assert_array_equal(single, reference_outputs[0])
    for a, b in zip(multi, reference_outputs[1]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(image, reference_outputs[2])

    # An index that points at a shard that is not there.
    (ckpt / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors: missing"):
        JinaV4Encoder.from_pretrained(ckpt, device="cpu")


def test_new_key_layout_gives_identical_outputs(tmp_path, reference_outputs):
    ckpt = _copy(tmp_path)

    def to_new(t):
        for k in list(t):
            if k.startswith("model."):
                t["model.language_model." + k[len("model."):]] = t.pop(k)
            elif k.startswith("visual."):
                t["model." + k] = t.pop(k)

    _edit(ckpt / "model.safetensors", to_new)
    single, _, image = _outputs(ckpt)
    np.testing.assert_array_equal(single, reference_outputs[0])
    np.testing.assert_array_equal(image, reference_outputs[2])


def test_hub_id_without_network_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="download the snapshot and pass its path"):
        JinaV4Encoder.from_pretrained("jevsearch-tests/no-such-model")
    with pytest.raises(CheckpointError, match="no such directory"):
        JinaV4Encoder.from_pretrained("./no/such/dir")


def test_hub_id_resolves_through_snapshot_download(monkeypatch):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, **kwargs):  # stands in for the network; the rest runs for real
        calls.append((repo_id, kwargs))
        return str(CKPT)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    enc = JinaV4Encoder.from_pretrained("jinaai/jina-embeddings-v4", device="cpu")
    assert calls[0][0] == "jinaai/jina-embeddings-v4" and "adapters/*" in calls[0][1]["allow_patterns"]
    assert enc.identity["name"] == "jinaai/jina-embeddings-v4"


def test_fingerprint_follows_content_not_path(tmp_path):
    a = JinaV4Encoder.from_pretrained(CKPT, device="cpu").identity
    ckpt = _copy(tmp_path)
    b = JinaV4Encoder.from_pretrained(ckpt, device="cpu").identity
    assert a["fingerprint"] == b["fingerprint"] and a["name"] != b["name"]
    _edit(ckpt / "model.safetensors",
          lambda t: t.update({"model.norm.weight": t["model.norm.weight"] + 1}))
    assert JinaV4Encoder.from_pretrained(ckpt, device="cpu").identity["fingerprint"] != a["fingerprint"]


def test_tiny_writer_round_trip(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "tiny", seed=0)
    assert "RANDOM" in (path / "README.md").read_text()
    # The real repo's layout: old base keys, new adapter keys, every file the loader and processor read.
    base = load_file(str(path / "model.safetensors"))
    assert "model.layers.0.self_attn.q_proj.weight" in base and "visual.merger.mlp.0.weight" in base
    assert {v.dtype for v in base.values()} == {torch.bfloat16}
    adapters = load_file(str(path / "adapters/adapter_model.safetensors"))
    assert "base_model.model.model.language_model.layers.1.mlp.down_proj.lora_B.code.weight" in adapters
    assert set(base) == set(load_file(str(CKPT / "model.safetensors")))
    assert set(adapters) == set(load_file(str(CKPT / "adapters/adapter_model.safetensors")))

    enc = JinaV4Encoder.from_pretrained(path, device="cpu")
    t = enc.encode_texts(QUERIES, task="retrieval", truncate_dim=16)
    assert t.single.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(t.single, axis=1), 1.0, atol=1e-6)
    i = enc.encode_images([IMAGE], task="code")
    assert i.multi[0].shape == (154 + 11, 128)
    assert np.abs(enc.encode_texts(QUERIES, task="code").single[:, :16] - t.single).max() > 1e-3

    again = write_tiny_checkpoint(tmp_path / "again", seed=0)
    other = write_tiny_checkpoint(tmp_path / "other", seed=1)
    fp = enc.identity["fingerprint"]
    assert JinaV4Encoder.from_pretrained(again, device="cpu").identity["fingerprint"] == fp
    assert JinaV4Encoder.from_pretrained(other, device="cpu").identity["fingerprint"] != fp
    with pytest.raises(ValueError, match="not an empty directory"):
        write_tiny_checkpoint(path)


def test_tiny_cli_says_weights_are_random(tmp_path):
    out = subprocess.run([sys.executable, "-m", "jevsearch.model.tiny", str(tmp_path / "t"), "--seed", "3"],
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "RANDOM weights (seed 3)" in out.stdout
    assert (tmp_path / "t" / "adapters" / "adapter_model.safetensors").is_file()
