"""Read a jina-embeddings-v4 snapshot into the stock Qwen2.5-VL classes + peft LoRA, strictly.

A snapshot is the Hugging Face repo ``jinaai/jina-embeddings-v4`` on disk::

    config.json                      Qwen2.5-VL config + task_names, matryoshka_dims, multi_vector_projector_dim
    model.safetensors                base weights, or model-0000K-of-0000N.safetensors + model.safetensors.index.json
    adapters/adapter_config.json     LoRA r, alpha, target regex, exclude_modules
    adapters/adapter_model.safetensors  base_model.model.<module>.lora_{A,B}.<task>.weight
    tokenizer.json, preprocessor_config.json, ...

Base keys come in the pre-v5 layout (``model.layers.*``, ``visual.*``) or the v5 one
(``model.language_model.*``, ``model.visual.*``); both map onto :class:`JinaV4Module`. Every tensor
in the files must land on exactly one parameter of the right shape and every parameter must get one:
anything else is a :class:`CheckpointError` naming the keys, raised before any weight is copied.

>>> snap = resolve_snapshot("tests/fixtures/jina-v4-tiny/ckpt")
>>> module, config, weights = load_module(snap, device="cpu", dtype=torch.float32, vision=False)
>>> config["task_names"]
['retrieval', 'text-matching', 'code']
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import struct
import warnings
from pathlib import Path

import torch
from torch import nn

from jevsearch.errors import CheckpointError
from jevsearch.model.weights import REDOWNLOAD, VISION, LazyWeights

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SINGLE_WEIGHTS = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapters/adapter_config.json"
ADAPTER_WEIGHTS = "adapters/adapter_model.safetensors"
#: The jina-specific keys config.json must have besides the Qwen2.5-VL ones.
JINA_KEYS = ("task_names", "matryoshka_dims", "multi_vector_projector_dim")
#: Files fetched for a hub id.
HUB_FILES = ["*.json", "model*.safetensors", "adapters/*", "*.txt"]
_ADAPTER_PREFIX = "base_model.model."
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class JinaV4Module(nn.Module):
    """The network: stock ``Qwen2_5_VLModel`` as ``model`` plus the ``multi_vector_projector`` linear.

    Attribute names mirror the reference, so peft's module paths (``model.language_model.layers...``,
    ``multi_vector_projector``) are the adapter file's keys minus ``base_model.model.``.
    """

    def __init__(self, qwen_config, multi_dim: int):
        super().__init__()
        from transformers import Qwen2_5_VLModel

        self.model = Qwen2_5_VLModel(qwen_config)
        self.multi_vector_projector = nn.Linear(qwen_config.text_config.hidden_size, multi_dim)


# ----- locating files ----------------------------------------------------------------------------
def resolve_snapshot(name: str | os.PathLike) -> Path:
    """A local snapshot directory for ``name``: the directory itself, or a hub download.

    A hub id is fetched with ``huggingface_hub.snapshot_download`` (only when ``name`` is not an
    existing path); without network the error says to download the snapshot and pass its path.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{name}: not a directory (hint: pass the snapshot directory, not a file in it)")
    if not _HUB_ID.match(str(name)):
        raise CheckpointError(f"{name}: no such directory (hint: pass a model snapshot directory or a hub id)")
    try:
        from huggingface_hub import constants, snapshot_download

        offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
        # Only what loading reads: no ONNX exports, no remote code.
        return Path(snapshot_download(repo_id=str(name), local_files_only=offline, allow_patterns=HUB_FILES))
    except ImportError as e:
        raise CheckpointError(f"{name}: huggingface_hub is not installed (hint: pip install huggingface_hub, "
                              "or download the snapshot and pass its path)") from e
    except Exception as e:  # offline, unknown repo, HTTP errors: all mean "no snapshot here"
        raise CheckpointError(
            f"{name}: not a local directory and the Hugging Face hub download failed ({type(e).__name__}: {e}) "
            f"(hint: download the snapshot and pass its path, e.g. `hf download {name} --local-dir DIR` "
            "on a machine with network)"
        ) from e


def read_json(snapshot: Path, rel: str) -> dict:
    f = snapshot / rel
    if not f.is_file():
        raise CheckpointError(f"{f}: missing (hint: copy the complete model snapshot)")
    try:
        data = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{f}: unreadable JSON: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{f}: expected a JSON object")
    return data


def read_model_config(snapshot: Path) -> dict:
    """config.json, checked for the keys the encoder needs."""
    config = read_json(snapshot, CONFIG_FILE)
    for key in (*JINA_KEYS, "text_config", "vision_config", "image_token_id", "vision_start_token_id",
                "vision_end_token_id"):
        if key not in config:
            raise CheckpointError(f"{snapshot / CONFIG_FILE}: no {key!r} (hint: not a jina-embeddings-v4 config)")
    return config


def base_weight_files(snapshot: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The base safetensors files, and the shard index's weight map when sharded."""
    single, index = snapshot / SINGLE_WEIGHTS, snapshot / SHARD_INDEX
    if single.is_file() and index.is_file():
        raise CheckpointError(f"{snapshot}: both {SINGLE_WEIGHTS} and {SHARD_INDEX} (hint: keep one of them)")
    if single.is_file():
        return [single], None
    if not index.is_file():
        raise CheckpointError(f"{snapshot}: missing {SINGLE_WEIGHTS} (or {SHARD_INDEX} with its shards) "
                              "(hint: copy the complete model snapshot)")
    weight_map = read_json(snapshot, SHARD_INDEX).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: no weight_map")
    files = []
    for name in sorted(set(weight_map.values())):
        shard = snapshot / name
        if not shard.is_file():
            raise CheckpointError(f"{shard}: missing (listed in {SHARD_INDEX})")
        files.append(shard)
    return files, weight_map


# ----- key layouts -------------------------------------------------------------------------------
def base_key_to_param(key: str) -> str:
    """Parameter name in :class:`JinaV4Module` for a base checkpoint key (either layout)."""
    if key.startswith(("model.language_model.", "model.visual.")):
        return key
    if key.startswith("model."):
        return "model.language_model." + key[len("model."):]
    if key.startswith("visual."):
        return "model." + key
    return key


def param_to_old_key(name: str) -> str:
    """The pre-v5 checkpoint key of a :class:`JinaV4Module` parameter (the real repo's layout)."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    if name.startswith("model.visual."):
        return name[len("model."):]
    return name


def adapter_key_to_param(key: str) -> str | None:
    if not key.startswith(_ADAPTER_PREFIX):
        return None
    return base_key_to_param(key[len(_ADAPTER_PREFIX):])


# ----- strict loading ----------------------------------------------------------------------------
def _headers(path: Path) -> tuple[dict, int]:
    """A safetensors file's tensor table {key: {"dtype", "shape", "data_offsets"}} and where its data starts.

    Also checks the file is as long as its header says: an interrupted download leaves a file cut
    short, which the safetensors reader would only report as an "incomplete metadata" traceback.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            (n,) = struct.unpack("<Q", f.read(8))
            head = f.read(n)
        table, end = None, 8 + n
        if len(head) == n:
            table = json.loads(head)
            table.pop("__metadata__", None)
            end += max((int(info["data_offsets"][1]) for info in table.values()), default=0)
    except (OSError, struct.error, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        raise CheckpointError(f"{path}: not a safetensors file: {e} (hint: {REDOWNLOAD})") from e
    if size < end:
        raise CheckpointError(f"{path}: truncated: {size} bytes but its header describes {end} "
                              f"(an interrupted download?) (hint: {REDOWNLOAD})")
    return table, 8 + n


def _some(keys, k: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:k]) + (f" and {len(keys) - k} more" if len(keys) > k else "")


#: One tensor's place in its file: (path, key, file dtype, shape, start, end) with byte offsets in the file.
Entry = tuple
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def plan_strict(shapes: dict[str, tuple], files: list[Path], to_param, what: str,
                weight_map: dict[str, str] | None = None) -> dict[str, Entry]:
    """Where each parameter of ``shapes`` ({name: shape}) is in ``files`` (keys mapped by ``to_param``).

    Checks everything from the headers alone, before any weight is read: each key maps to a parameter,
    no parameter is fed twice or not at all, shapes agree, dtypes are floating, and a shard index
    matches its shards. Raises :class:`CheckpointError` naming the keys.
    """
    plan: dict[str, Entry] = {}
    unexpected, wrong_shape, wrong_dtype, seen = [], [], [], set()
    for path in files:
        table, data_start = _headers(path)
        for key, info in table.items():
            seen.add(key)
            if weight_map is not None and weight_map.get(key) != path.name:
                raise CheckpointError(f"{path}: tensor {key} is not listed for this shard in {SHARD_INDEX}")
            name = to_param(key)
            if name is None or name not in shapes:
                unexpected.append(key)
                continue
            if name in plan:
                raise CheckpointError(f"{what}: {key} and {plan[name][1]} both load {name} (hint: mixed key layouts)")
            shape = tuple(shapes[name])
            if tuple(info["shape"]) != shape:
                wrong_shape.append(f"{key} has shape {tuple(info['shape'])}, expected {shape}")
            if info["dtype"] not in _DTYPES:
                wrong_dtype.append(f"{key} ({info['dtype']})")
            begin, stop = (data_start + int(o) for o in info["data_offsets"])
            plan[name] = (path, key, _DTYPES.get(info["dtype"]), shape, begin, stop)
    if weight_map is not None and set(weight_map) - seen:
        raise CheckpointError(f"{what}: {SHARD_INDEX} lists tensors no shard has: {_some(set(weight_map) - seen)}")
    missing = set(shapes) - set(plan)
    problems = []
    if missing:
        problems.append(f"missing tensors {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {_some(unexpected)}")
    if wrong_shape:
        problems.append("mis-shaped tensors " + "; ".join(wrong_shape[:5]))
    if wrong_dtype:
        problems.append("non-float tensors " + _some(wrong_dtype))
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems) +
                              " (hint: the files do not match config.json, or are damaged: re-download the snapshot)")
    return plan


def qwen_config(config: dict, dtype: torch.dtype):
    """The stock ``Qwen2_5_VLConfig`` for a jina config.json (sdpa attention, the given dtype)."""
    from transformers import Qwen2_5_VLConfig

    def sub(d: dict) -> dict:
        d = {k: v for k, v in d.items() if k not in ("torch_dtype", "dtype")}
        d["dtype"] = dtype
        return d

    keep = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id", "tie_word_embeddings")
    qc = Qwen2_5_VLConfig(text_config=sub(config["text_config"]), vision_config=sub(config["vision_config"]),
                          **{k: config[k] for k in keep if k in config})
    # flash-attention in the reference config is a GPU-only choice; sdpa is exact and runs everywhere.
    qc._attn_implementation = "sdpa"
    return qc


@contextlib.contextmanager
def _parameters_on_meta():
    """Every parameter created inside goes to the meta device (no memory); buffers stay real.

    Rotary frequencies and other computed buffers are made at construction and are not in the files,
    so they must be real; the weights are assigned later, read straight from the files.
    """
    register = nn.Module.register_parameter

    def to_meta(self, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(self, name, param)

    nn.Module.register_parameter = to_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def build_module(config: dict, adapter_config: dict, device, dtype: torch.dtype, init: bool = False,
                 empty: bool = False) -> JinaV4Module:
    """:class:`JinaV4Module` with one LoRA per task injected (random weights if ``init``, else empty).

    ``empty``: parameters on the meta device, to be assigned by :class:`LazyWeights`.
    """
    from peft import LoraConfig, inject_adapter_in_model
    from transformers.initialization import no_init_weights

    qc = qwen_config(config, dtype)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # the projector and anything outside transformers' dtype handling
    meta = _parameters_on_meta() if empty else contextlib.nullcontext()
    try:
        with torch.device(device), meta:
            if init:
                module = JinaV4Module(qc, int(config["multi_vector_projector_dim"]))
            else:
                with no_init_weights():
                    module = JinaV4Module(qc, int(config["multi_vector_projector_dim"]))
    finally:
        torch.set_default_dtype(prev)
    fields = set(LoraConfig.__dataclass_fields__)
    try:
        lora = LoraConfig(**{k: v for k, v in adapter_config.items() if k in fields})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{ADAPTER_CONFIG}: not a usable LoRA config: {e}") from e
    if str(lora.peft_type).split(".")[-1] != "LORA" or lora.use_dora:
        raise CheckpointError(f"{ADAPTER_CONFIG}: peft_type {lora.peft_type}, use_dora {lora.use_dora} "
                              "(hint: only plain LoRA adapters are supported)")
    # Empty LoRA weights (init False) unless asked for random ones; strict loading fills them all.
    lora.init_lora_weights = "gaussian" if init else False
    lora.inference_mode = True
    with warnings.catch_warnings(), (_parameters_on_meta() if empty else contextlib.nullcontext()):
        # Injecting a second and third adapter is exactly what we want; peft warns about it.
        warnings.filterwarnings("ignore", message=".*multiple adapters.*")
        for task in config["task_names"]:
            inject_adapter_in_model(lora, module, adapter_name=task)
    return module


def load_module(snapshot: Path, device, dtype: torch.dtype, *, int8: bool = False,
                vision: bool = True) -> tuple[JinaV4Module, dict, LazyWeights]:
    """Build the module for ``snapshot``, check every base and adapter tensor, and load them.

    Every file header is checked before any weight is read (strict, as :func:`plan_strict`). The
    weights are read once, straight into parameters in ``dtype``. ``vision=False`` leaves the vision
    tower on the meta device until ``weights.load_vision()``; ``int8``: see :class:`LazyWeights`.
    """
    config = read_model_config(snapshot)
    adapter_config = read_json(snapshot, ADAPTER_CONFIG)
    adapter_file = snapshot / ADAPTER_WEIGHTS
    if not adapter_file.is_file():
        raise CheckpointError(f"{adapter_file}: missing (hint: copy the complete model snapshot, adapters/ included)")
    files, weight_map = base_weight_files(snapshot)
    module = build_module(config, adapter_config, "cpu", dtype, empty=True)
    named = dict(module.named_parameters())
    # peft moved each adapted Linear's weights to `<module>.base_layer.*`; the files name `<module>.*`.
    real = {n.replace(".base_layer.", "."): n for n in named if ".lora_" not in n}
    base = plan_strict({f: tuple(named[n].shape) for f, n in real.items()}, files, base_key_to_param,
                       "base weights", weight_map)
    lora = plan_strict({n: tuple(p.shape) for n, p in named.items() if ".lora_" in n}, [adapter_file],
                       adapter_key_to_param, str(adapter_file))
    cache = None
    if int8:
        from jevsearch.model.int8cache import cache_file

        cache = cache_file(fingerprint(snapshot))
    weights = LazyWeights(module, {**{real[f]: e for f, e in base.items()}, **lora}, device, dtype, int8, cache)
    weights.load(lambda n: vision or not n.startswith(VISION))
    log.info("loaded %s: %d base and %d adapter tensors", snapshot, len(base), len(lora))
    module.eval()
    module.requires_grad_(False)
    return module, config, weights


# ----- identity ----------------------------------------------------------------------------------
_FULL_HASH_MAX = 256 * 1024 * 1024
_WINDOWS, _WINDOW = 64, 64 * 1024


def fingerprint(snapshot: Path) -> str:
    """sha256 hex identifying a snapshot's model; cheap even for the real 7.5 GB of weights.

    Hashes config.json, adapters/adapter_config.json and the shard index in full, and for every
    weight file (base file or shards, adapter weights) its name and size plus: the whole file when it
    is at most 256 MiB (the tiny checkpoints, the real adapters), else its full safetensors header
    and 64 evenly spaced 64 KiB windows of its data (4 MiB per multi-GB shard). Changed configs,
    shapes, dtypes or retrained weights change it; an edit confined between windows of a large file
    whose layout is unchanged would not. A re-sharded copy gets a different fingerprint.
    """
    h = hashlib.sha256()
    for rel in (CONFIG_FILE, ADAPTER_CONFIG, SHARD_INDEX):
        if (snapshot / rel).is_file():
            h.update(rel.encode() + b"\0" + (snapshot / rel).read_bytes())
    files, _ = base_weight_files(snapshot)
    for path in [*files, snapshot / ADAPTER_WEIGHTS]:
        size = path.stat().st_size
        h.update(f"{path.relative_to(snapshot).as_posix()}\0{size}\0".encode())
        with open(path, "rb") as f:
            if size <= _FULL_HASH_MAX:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                continue
            (n,) = struct.unpack("<Q", f.read(8))
            h.update(f.read(n))
            start = 8 + n
            span = max(size - start - _WINDOW, 0)
            for i in range(_WINDOWS):
                f.seek(start + span * i // (_WINDOWS - 1))
                h.update(f.read(_WINDOW))
    return h.hexdigest()
