"""Write a tiny jina-embeddings-v4 checkpoint with RANDOM weights, in the real repo's on-disk layout.

For tests and offline smoke runs only: the embeddings it produces mean nothing. Everything it needs
(tokenizer, configs, chat template) ships inside the package, so it works with no network.

>>> from jevsearch.model.tiny import write_tiny_checkpoint
>>> path = write_tiny_checkpoint("/tmp/jina-tiny", seed=0)
>>> JinaV4Encoder.from_pretrained(path).encode_texts(["hello"]).single.shape
(1, 64)

Command line: ``python -m jevsearch.model.tiny DIR [--seed N] [--full-size]``.

``--full-size`` (:func:`write_full_size_checkpoint`) writes the real model's shapes (Qwen2.5-VL-3B text
2048 x 36 layers, vision 1280 x 32 blocks, LoRA r 32) in the real sharded layout
(``model-0000K-of-00002.safetensors`` + ``model.safetensors.index.json``), still with RANDOM weights:
the same time and memory as the real model, for benchmarks. ~7.5 GB, streamed one tensor at a time.

Layout written (as ``jinaai/jina-embeddings-v4``): ``config.json`` (the real config with hidden 64,
2 layers, vision depth 4), ``model.safetensors`` (bf16, the pre-v5 key layout ``model.layers.*``,
``visual.*``, ``multi_vector_projector.*``), ``adapters/adapter_config.json`` and
``adapters/adapter_model.safetensors`` (bf16, keys ``base_model.model.model.language_model...
.lora_{A,B}.<task>.weight``, non-zero B so tasks differ), ``tokenizer.json``,
``tokenizer_config.json``, ``special_tokens_map.json``, ``added_tokens.json``, ``chat_template.json``,
``preprocessor_config.json``, and a ``README.md`` saying the weights are random. The real repo's
``vocab.json`` / ``merges.txt`` are left out: ``tokenizer.json`` holds the same vocabulary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
from pathlib import Path

import torch

from jevsearch.errors import InvalidInputError
from jevsearch.model import checkpoint

ASSETS = Path(__file__).with_name("assets")
_COPIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
           "chat_template.json", "preprocessor_config.json")
_README = """# jina-embeddings-v4 tiny checkpoint — RANDOM WEIGHTS

Written by `jevsearch.model.tiny` (seed {seed}) for tests and offline smoke runs. The file layout is
the real `jinaai/jina-embeddings-v4` layout; the weights are random, so its embeddings mean nothing.
"""


def write_tiny_checkpoint(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a complete tiny checkpoint with random weights (seeded) to ``path``; returns the path.

    The same seed gives byte-identical files. ``path`` must not exist or be an empty directory.
    """
    path = _new_dir(path)
    config = json.loads((ASSETS / "tiny_config.json").read_text())
    adapter_config = json.loads((ASSETS / "adapter_config.json").read_text())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = checkpoint.build_module(config, adapter_config, "cpu", torch.float32, init=True)
        lora = {n: p for n, p in module.named_parameters() if ".lora_" in n}
        with torch.no_grad():
            for name, p in lora.items():
                # peft starts B at zero (LoRA = no-op); random B makes the three tasks differ.
                p.normal_(0.0, 0.05 if ".lora_B." in name else 1.0 / p.shape[1] ** 0.5)
    base = {checkpoint.param_to_old_key(n.replace(".base_layer.", ".")): p
            for n, p in module.named_parameters() if ".lora_" not in n}
    adapters = {"base_model.model." + n: p for n, p in lora.items()}

    from safetensors.torch import save_file

    (path / "adapters").mkdir(parents=True, exist_ok=True)
    save_file(_bf16(base), str(path / checkpoint.SINGLE_WEIGHTS), metadata={"format": "pt"})
    save_file(_bf16(adapters), str(path / checkpoint.ADAPTER_WEIGHTS), metadata={"format": "pt"})
    shutil.copyfile(ASSETS / "tiny_config.json", path / checkpoint.CONFIG_FILE)
    _copy_assets(path)
    (path / "README.md").write_text(_README.format(seed=seed))
    return path


#: The real jina-embeddings-v4 (Qwen2.5-VL-3B) sizes, written over the tiny config by --full-size.
FULL_SIZE = {
    "text": {"hidden_size": 2048, "intermediate_size": 11008, "num_attention_heads": 16,
             "num_key_value_heads": 2, "num_hidden_layers": 36},
    "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
               "out_hidden_size": 2048, "fullatt_block_indexes": [7, 15, 23, 31]},
    "mrope_section": [16, 24, 24],
    "matryoshka_dims": [128, 256, 512, 1024, 2048],
}
_SHARDS = 2
_CHUNK = 1 << 24  # values generated per step: bounds the writer's memory whatever the tensor size
_FULL_README = """# jina-embeddings-v4 at FULL SIZE — RANDOM WEIGHTS

Written by `jevsearch make-tiny-model --full-size` (seed {seed}). Real shapes and the real sharded layout,
so loading and encoding cost what the real model costs; the weights are RANDOM, so its embeddings
mean nothing. For benchmarks only (benchmarks/model.py).
"""


def full_size_config() -> dict:
    """The tiny config.json with the real model's sizes (text, vision, rope sections, Matryoshka dims)."""
    config = json.loads((ASSETS / "tiny_config.json").read_text())
    for d in (config, config["text_config"]):
        d.update(FULL_SIZE["text"])
        d["rope_scaling"]["mrope_section"] = list(FULL_SIZE["mrope_section"])
    config["vision_config"].update(FULL_SIZE["vision"])
    config["matryoshka_dims"] = list(FULL_SIZE["matryoshka_dims"])
    return config


def write_full_size_checkpoint(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a checkpoint with the real model's shapes and RANDOM weights to ``path``; returns the path."""
    return write_streamed_checkpoint(path, full_size_config(), seed)


def write_streamed_checkpoint(path: str | os.PathLike, config: dict, seed: int = 0) -> Path:
    """Write a sharded checkpoint of ``config``'s shapes with RANDOM weights to ``path``; returns the path.

    Shapes come from the module built on the meta device (no memory); each tensor is generated in
    chunks and written straight into its shard, so memory stays ~100 MB whatever the size written.
    """
    path = _new_dir(path)
    adapter_config = json.loads((ASSETS / "adapter_config.json").read_text())
    module = checkpoint.build_module(config, adapter_config, "meta", torch.bfloat16)
    base = {checkpoint.param_to_old_key(n.replace(".base_layer.", ".")): tuple(p.shape)
            for n, p in module.named_parameters() if ".lora_" not in n}
    adapters = {"base_model.model." + n: tuple(p.shape) for n, p in module.named_parameters() if ".lora_" in n}
    del module
    gen = torch.Generator().manual_seed(seed)
    keys = sorted(base)
    total = sum(_numel(base[k]) * 2 for k in keys)
    shards: list[list[str]] = [[] for _ in range(_SHARDS)]
    done = 0
    for k in keys:  # contiguous halves by bytes, as the hub's sharding does
        shards[min(done * _SHARDS // total, _SHARDS - 1)].append(k)
        done += _numel(base[k]) * 2
    weight_map = {}
    for i, names in enumerate(shards):
        shard = f"model-{i + 1:05d}-of-{_SHARDS:05d}.safetensors"
        _stream_safetensors(path / shard, {k: base[k] for k in names}, gen, lora=False)
        weight_map.update(dict.fromkeys(names, shard))
    (path / checkpoint.SHARD_INDEX).write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (path / "adapters").mkdir()
    _stream_safetensors(path / checkpoint.ADAPTER_WEIGHTS, adapters, gen, lora=True)
    (path / checkpoint.CONFIG_FILE).write_text(json.dumps(config, indent=2))
    _copy_assets(path)
    (path / "README.md").write_text(_FULL_README.format(seed=seed))
    return path


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _stream_safetensors(file: Path, shapes: dict[str, tuple], gen: torch.Generator, lora: bool) -> None:
    """A bf16 safetensors file of random tensors, written tensor by tensor and chunk by chunk."""
    table, offset = {"__metadata__": {"format": "pt"}}, 0
    for k in sorted(shapes):
        end = offset + _numel(shapes[k]) * 2
        table[k] = {"dtype": "BF16", "shape": list(shapes[k]), "data_offsets": [offset, end]}
        offset = end
    head = json.dumps(table, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for k in sorted(shapes):
            shape = shapes[k]
            if len(shape) == 1 and not lora and k.endswith("weight"):  # norms start at one, like the real ones
                f.write(torch.ones(shape, dtype=torch.bfloat16).view(torch.uint8).numpy().tobytes())
                continue
            std = (0.05 if ".lora_B." in k else 1.0 / shape[-1] ** 0.5) if lora else 0.02
            left = _numel(shape)
            while left:
                n = min(left, _CHUNK)
                chunk = torch.empty(n).normal_(0.0, std, generator=gen).to(torch.bfloat16)
                f.write(chunk.view(torch.uint8).numpy().tobytes())
                left -= n


def _new_dir(path) -> Path:
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise InvalidInputError(f"{path}: exists and is not an empty directory (hint: pick a new path)")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _copy_assets(path: Path) -> None:
    shutil.copyfile(ASSETS / "adapter_config.json", path / checkpoint.ADAPTER_CONFIG)
    for name in _COPIED:
        shutil.copyfile(ASSETS / name, path / name)


def _bf16(tensors: dict) -> dict:
    return {k: v.detach().to(torch.bfloat16).contiguous() for k, v in sorted(tensors.items())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jevsearch.model.tiny",
        description="Write a tiny jina-embeddings-v4 checkpoint with RANDOM weights (tests, offline smoke runs).",
    )
    parser.add_argument("dir", help="where to write it (must not exist, or be empty)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--full-size", action="store_true", help="the real model's shapes (~7.5 GB, benchmarks)")
    args = parser.parse_args(argv)
    try:
        write = write_full_size_checkpoint if args.full_size else write_tiny_checkpoint
        path = write(args.dir, seed=args.seed)
    except InvalidInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote a tiny jina-embeddings-v4 checkpoint with RANDOM weights (seed {args.seed}) to {path}: "
          "for tests and offline smoke runs only, its embeddings mean nothing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
