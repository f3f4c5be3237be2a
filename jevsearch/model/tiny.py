"""Write a tiny jina-embeddings-v4 checkpoint with RANDOM weights, in the real repo's on-disk layout.

For tests and offline smoke runs only: the embeddings it produces mean nothing. Everything it needs
(tokenizer, configs, chat template) ships inside the package, so it works with no network.

>>> from jevsearch.model.tiny import write_tiny_checkpoint
>>> path = write_tiny_checkpoint("/tmp/jina-tiny", seed=0)
>>> JinaV4Encoder.from_pretrained(path).encode_texts(["hello"]).single.shape
(1, 64)

Command line: ``python -m jevsearch.model.tiny DIR [--seed N]``.

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
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise InvalidInputError(f"{path}: exists and is not an empty directory (hint: pick a new path)")
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
    shutil.copyfile(ASSETS / "adapter_config.json", path / checkpoint.ADAPTER_CONFIG)
    for name in _COPIED:
        shutil.copyfile(ASSETS / name, path / name)
    (path / "README.md").write_text(_README.format(seed=seed))
    return path


def _bf16(tensors: dict) -> dict:
    return {k: v.detach().to(torch.bfloat16).contiguous() for k, v in sorted(tensors.items())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jevsearch.model.tiny",
        description="Write a tiny jina-embeddings-v4 checkpoint with RANDOM weights (tests, offline smoke runs).",
    )
    parser.add_argument("dir", help="where to write it (must not exist, or be empty)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    try:
        path = write_tiny_checkpoint(args.dir, seed=args.seed)
    except InvalidInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote a tiny jina-embeddings-v4 checkpoint with RANDOM weights (seed {args.seed}) to {path}: "
          "for tests and offline smoke runs only, its embeddings mean nothing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
