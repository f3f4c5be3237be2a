"""The jina-embeddings-v4 encoder: texts and page images to single and multi vectors.

>>> enc = JinaV4Encoder.from_pretrained("tests/fixtures/jina-v4-tiny/ckpt")   # random tiny weights
>>> e = enc.encode_texts(["what is a transformer?"], task="retrieval", prompt_name="query")
>>> e.single.shape, e.multi[0].shape
((1, 64), (7, 128))
>>> enc.encode_images(["page.png"], truncate_dim=32).single.shape
(1, 32)

Built on the stock ``transformers`` Qwen2.5-VL classes and ``peft`` LoRA (never remote code); all
task adapters stay resident and a call only switches which one is active.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from jevsearch.errors import InvalidInputError
from jevsearch.model import checkpoint
from jevsearch.model.cache import QUERY_CACHE, image_key, text_key
from jevsearch.model.processor import JinaV4Processor

log = logging.getLogger(__name__)

PROMPT_NAMES = ("query", "passage")
#: Padded tokens per forward when ``max_batch_tokens`` is not given: small on CPU (latency, RAM),
#: larger on GPU where batching pays.
DEFAULT_BATCH_TOKENS = {"cpu": 4096, "cuda": 16384}


@dataclass
class Embeddings:
    """What the encoder returns for n inputs.

    ``single``: float32 ndarray [n, D], L2-normalised rows (D = hidden size, or the truncate_dim).
    ``multi``: list of n float32 ndarrays [T_i, multi_dim], one L2-normalised row per input token
    (prefix / prompt tokens included, padding removed).
    """

    single: np.ndarray
    multi: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.multi)

    def truncated(self, dim: int) -> Embeddings:
        """Matryoshka: single vectors cut to their first ``dim`` values and renormalised (multi unchanged).

        Equal to encoding with ``truncate_dim=dim``; lets a caller keep both the full and the short vectors.
        """
        single = np.ascontiguousarray(self.single[:, :dim])
        single /= np.linalg.norm(single, axis=1, keepdims=True).clip(min=1e-12)
        return Embeddings(single, self.multi)


def plan_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group item indices into forward batches by padded-token budget.

    Items are sorted longest first; a batch grows while ``count * longest <= max_tokens`` and the
    next item is at least 3/4 of the batch's longest (so no row is more than a quarter padding). An
    item longer than the budget gets a batch of its own.

    >>> plan_batches([5, 100, 90, 7, 60], max_tokens=200)
    [[1, 2], [4], [3], [0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        b = batches[-1] if batches else None
        if b and (len(b) + 1) * lengths[b[0]] <= max_tokens and 4 * lengths[i] >= 3 * lengths[b[0]]:
            b.append(i)
        else:
            batches.append([i])
    return batches


class JinaV4Encoder:
    """jina-embeddings-v4 from a local snapshot (or hub id), faithful to the reference in float32.

    Attributes for callers wiring an index (all from the snapshot's configs):

    - ``hidden_size``: D of ``single`` without truncation; ``multi_dim``: width of multi-vector rows.
    - ``matryoshka_dims``: allowed ``truncate_dim`` values; ``task_names``: allowed tasks.
    - ``min_pixels`` / ``max_pixels``: the image processor's pixel bounds (max overridable per call).
    - ``image_prompt_tokens``: prompt tokens added to an image's visual tokens (see :meth:`image_tokens`).
    - ``identity``: JSON-serialisable dict recording which model this is (see :attr:`identity`).
    - ``device``, ``dtype``, ``max_batch_tokens``.

    One encoder may be shared by threads: calls are serialised (the active adapter is shared state).
    """

    def __init__(self, module, processor: JinaV4Processor, config: dict, name: str, snapshot: Path,
                 device: torch.device, dtype: torch.dtype, max_batch_tokens: int, weights=None, query_cache=None):
        self.module = module
        self.weights = weights  # weights.LazyWeights: the vision tower loads on the first image
        self.query_cache = QUERY_CACHE if query_cache is None else query_cache
        #: "float32", "bfloat16" or "int8" (weight-only int8 language model): part of the query cache's key.
        self.dtype_name = "int8" if weights is not None and weights.int8 else str(dtype).removeprefix("torch.")
        self.processor = processor
        self.config = config
        self.device = device
        self.dtype = dtype
        self.max_batch_tokens = max_batch_tokens
        self.hidden_size = int(config["text_config"]["hidden_size"])
        self.multi_dim = int(config["multi_vector_projector_dim"])
        self.matryoshka_dims = tuple(int(d) for d in config["matryoshka_dims"])
        self.task_names = tuple(config["task_names"])
        self.min_pixels = processor.min_pixels
        self.max_pixels = processor.max_pixels
        self.image_prompt_tokens = processor.image_prompt_tokens
        self._vision_start = int(config["vision_start_token_id"])
        self._vision_end = int(config["vision_end_token_id"])
        self._identity = {
            "name": name,
            "fingerprint": checkpoint.fingerprint(snapshot),
            "hidden_size": self.hidden_size,
            "multi_dim": self.multi_dim,
            "matryoshka_dims": list(self.matryoshka_dims),
        }
        self._lock = threading.Lock()
        self._active_task: str | None = None

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, device=None, dtype=None,
                        max_batch_tokens: int | None = None) -> JinaV4Encoder:
        """Load a snapshot directory (or download a hub id) strictly.

        ``device``: default ``cuda`` when available, else ``cpu``. ``dtype``: default bfloat16 on
        cuda; on cpu bfloat16 where this CPU computes it natively and faster, else float32 (measured
        once per process: :func:`jevsearch.model.cpu.default_cpu_dtype`); a torch dtype or its name,
        or ``"int8"`` (cpu only, opt-in): the language model's linear layers as weight-only int8,
        the rest in the cpu default. ``max_batch_tokens``: padded tokens per forward, default 4096
        on cpu and 16384 on cuda. Weights are read once, straight into their parameters; the vision
        tower is loaded at the first image (text-only use never reads it). On cpu the language model's
        linear layers run on the matmul kernel measured fastest here (:mod:`jevsearch.model.kernels`).

        Raises :class:`~jevsearch.errors.CheckpointError` naming the missing file, or the missing,
        unexpected or mis-shaped tensors.
        """
        try:
            device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        except (RuntimeError, TypeError) as e:
            raise InvalidInputError(f"device: {device!r} is not a torch device (hint: 'cpu' or 'cuda')") from e
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InvalidInputError("device: cuda requested but torch sees no CUDA device (hint: device='cpu')")
        dtype, int8 = _parse_dtype(dtype, device)
        if max_batch_tokens is not None:
            _check_budget(max_batch_tokens)
        snapshot = checkpoint.resolve_snapshot(path_or_hub_id)
        config = checkpoint.read_model_config(snapshot)
        processor = JinaV4Processor.from_dir(snapshot, image_token_id=config["image_token_id"])
        module, config, weights = checkpoint.load_module(snapshot, device, dtype, int8=int8, vision=False)
        if device.type == "cpu":
            from jevsearch.model.kernels import use_fast_linears

            use_fast_linears(module.model.language_model, dtype)
        budget = max_batch_tokens or DEFAULT_BATCH_TOKENS.get(device.type, DEFAULT_BATCH_TOKENS["cuda"])
        return cls(module, processor, config, str(path_or_hub_id), snapshot, device, dtype, int(budget), weights)

    # ----- public attributes -----------------------------------------------------------------
    @property
    def identity(self) -> dict:
        """Which model this is, for an index to record and check: a JSON-serialisable dict.

        ``{"name": path or hub id as given, "fingerprint": sha256 hex of config.json,
        adapters/adapter_config.json and the weight files (sizes, safetensors headers and sampled
        data windows; see :func:`jevsearch.model.checkpoint.fingerprint`), "hidden_size",
        "multi_dim", "matryoshka_dims"}``. Compare fingerprints, not names: the name is only how
        the model was found.
        """
        return dict(self._identity, matryoshka_dims=list(self.matryoshka_dims))

    def image_tokens(self, width: int, height: int, max_pixels: int | None = None) -> int:
        """Visual tokens (``<|image_pad|>`` count) a ``width`` x ``height`` image becomes.

        The image is resized to multiples of 28 px within [min_pixels, max_pixels]; every 28x28
        block is one token. Its forward sequence and multi-vector count is this plus
        ``image_prompt_tokens``. Use it to size page renders and to batch by tokens.

        >>> enc.image_tokens(640, 480)
        391
        """
        return self.processor.image_tokens(int(width), int(height), max_pixels)

    # ----- encoding --------------------------------------------------------------------------
    def encode_texts(self, texts: Sequence[str], task: str = "retrieval", prompt_name: str = "query",
                     truncate_dim: int | None = None, max_batch_tokens: int | None = None,
                     cache: bool = False) -> Embeddings:
        """Embed texts with the ``Query: `` / ``Passage: `` prefix (``text-matching``: always ``Query: ``).

        Texts over 32768 tokens are truncated (with a warning in the log). ``max_batch_tokens``
        overrides the encoder's padded-token budget per forward. ``cache``: look each text up in
        (and add it to) ``self.query_cache`` first; cached arrays are read-only.
        """
        self._check_task(task)
        self._check_truncate(truncate_dim)
        if prompt_name not in PROMPT_NAMES:
            raise InvalidInputError(f"prompt_name: {prompt_name!r} is not one of {PROMPT_NAMES}")
        texts = self._check_list(texts, "texts", "a list of strings")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InvalidInputError(f"texts[{i}]: {type(t).__name__}, expected str")
        if not texts:
            return self._empty(truncate_dim)
        prefix = "Query: " if task == "text-matching" or prompt_name == "query" else "Passage: "
        fp = self._identity["fingerprint"]

        def encode(items: list[str]) -> Embeddings:
            token_ids = self.processor.tokenize_texts(items, prefix)
            batches = plan_batches([len(t) for t in token_ids], self._budget(max_batch_tokens))
            return self._run(batches, len(items), task,
                             lambda idx: self.processor.text_batch([token_ids[i] for i in idx]), pool="mask")

        if not cache:
            e = encode(texts)
        else:
            e = self._cached([text_key(fp, self.dtype_name, task, prefix, t) for t in texts], texts, encode)
        return e if truncate_dim is None else e.truncated(truncate_dim)

    def encode_images(self, images: Sequence, task: str = "retrieval", truncate_dim: int | None = None,
                      max_pixels: int | None = None, max_batch_tokens: int | None = None,
                      cache: bool = False) -> Embeddings:
        """Embed images (PIL images or file paths), each in the model's image prompt.

        Any number of images: sizes are read first (files are decoded only when their batch
        runs), then images are grouped by padded-token budget. ``max_pixels`` overrides the
        snapshot's pixel budget per image (it bounds the tokens per image). ``cache``: as in
        :meth:`encode_texts`, for PIL images (keyed by their pixels). Unreadable files,
        images with an aspect ratio over 200 and other bad input raise
        :class:`~jevsearch.errors.InvalidInputError` naming the image.
        """
        from PIL import Image

        self._check_task(task)
        self._check_truncate(truncate_dim)
        max_pixels = self.processor.check_max_pixels(max_pixels)
        images = self._check_list(images, "images", "a list of PIL images or paths")
        names, lengths = [], []
        for i, img in enumerate(images):
            if isinstance(img, Image.Image):
                name, size = f"images[{i}]", img.size
            elif isinstance(img, (str, os.PathLike)):
                name = str(img)
                with _open_image(img) as opened:
                    size = opened.size
            else:
                raise InvalidInputError(f"images[{i}]: {type(img).__name__}, expected a PIL image or a path")
            try:
                n = self.processor.image_tokens(*size, max_pixels=max_pixels)
            except InvalidInputError as e:
                raise InvalidInputError(f"{name}: {e}") from e
            names.append(name)
            lengths.append(n + self.image_prompt_tokens)
        if not images:
            return self._empty(truncate_dim)

        def make(idx: list[int]):
            opened = [images[i] if isinstance(images[i], Image.Image) else _open_image(images[i]) for i in idx]
            try:
                return self.processor.image_batch(opened, max_pixels, [names[i] for i in idx])
            finally:
                for i, im in zip(idx, opened):
                    if im is not images[i]:
                        im.close()

        if self.weights is not None:
            self.weights.load_vision()
        if cache and all(isinstance(im, Image.Image) for im in images):
            fp = self._identity["fingerprint"]
            keys = [image_key(fp, self.dtype_name, task, max_pixels, im) for im in images]
            e = self._cached(keys, images, lambda items: self.encode_images(
                items, task=task, max_pixels=max_pixels, max_batch_tokens=max_batch_tokens))
        else:
            batches = plan_batches(lengths, self._budget(max_batch_tokens))
            e = self._run(batches, len(images), task, make, pool="vision")
        return e if truncate_dim is None else e.truncated(truncate_dim)

    # ----- internals -------------------------------------------------------------------------
    def _cached(self, keys: list[tuple], items: list, encode) -> Embeddings:
        """Embeddings of ``items`` from the query cache, encoding (with ``encode``) only the misses."""
        found = [self.query_cache.get(k) for k in keys]
        todo = [i for i, f in enumerate(found) if f is None]
        if todo:
            fresh = encode([items[i] for i in todo])
            for j, i in enumerate(todo):
                self.query_cache.put(keys[i], fresh.single[j], fresh.multi[j])
                found[i] = (fresh.single[j], fresh.multi[j])
        return Embeddings(np.stack([f[0] for f in found]), [f[1] for f in found])

    def _run(self, batches, n, task, make_batch, pool) -> Embeddings:
        from tqdm.auto import tqdm

        single = np.empty((n, self.hidden_size), dtype=np.float32)
        multi: list[np.ndarray | None] = [None] * n
        with self._lock:
            self._activate(task)
            for idx in tqdm(batches, desc="encoding", unit="batch", disable=None if len(batches) > 1 else True,
                            leave=False):
                s, m = self._forward(make_batch(idx), pool)
                single[idx] = s
                for i, rows in zip(idx, m):
                    multi[i] = rows
        return Embeddings(single, multi)

    @torch.inference_mode()
    def _forward(self, batch, pool: str) -> tuple[np.ndarray, list[np.ndarray]]:
        dev = self.device
        ids, mask = batch.input_ids.to(dev), batch.attention_mask.to(dev)
        qwen = self.module.model
        kwargs = {}
        if batch.pixel_values is not None:
            kwargs = dict(pixel_values=batch.pixel_values.to(dev, self.dtype), image_grid_thw=batch.image_grid_thw.to(dev),
                          position_ids=self._rope_positions(batch))
        hidden = qwen(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs).last_hidden_state  # [B, L, H]
        multi = F.normalize(self.module.multi_vector_projector(hidden).float(), dim=-1)  # [B, L, multi_dim]
        hidden = hidden.float()
        if pool == "vision":
            # Mean over <|vision_start|> ... <|vision_end|> inclusive (the reference's image pooling).
            pos = torch.arange(ids.shape[1], device=dev)
            start = (ids == self._vision_start).int().argmax(1, keepdim=True)
            end = (ids == self._vision_end).int().argmax(1, keepdim=True)
            weights = ((pos >= start) & (pos <= end)).float()  # [B, L]
        else:
            weights = mask.float()
        single = (hidden * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)  # [B, H]
        single = F.normalize(single, dim=-1).cpu().numpy()
        lengths = mask.sum(1).tolist()
        multi = multi.cpu().numpy()
        return single, [np.ascontiguousarray(multi[b, :n]) for b, n in enumerate(lengths)]

    def _rope_positions(self, batch) -> torch.Tensor:
        """3-D rotary position ids [3, B, L] of an image batch (padding positions are 0).

        transformers computes these only when given ``mm_token_type_ids``; without them it silently
        falls back to 1-D positions (outputs off by ~1e-2), so they are computed here explicitly.
        """
        dev = self.device
        positions, _ = self.module.model.get_rope_index(
            batch.input_ids.to(dev), mm_token_type_ids=batch.mm_token_type_ids.to(dev),
            image_grid_thw=batch.image_grid_thw.to(dev), attention_mask=batch.attention_mask.to(dev))
        return positions

    def _activate(self, task: str) -> None:
        if task != self._active_task:
            from peft.tuners.tuners_utils import set_adapter

            set_adapter(self.module, task, inference_mode=True)
            self._active_task = task

    def _budget(self, max_batch_tokens: int | None) -> int:
        return self.max_batch_tokens if max_batch_tokens is None else _check_budget(max_batch_tokens)

    def _check_task(self, task) -> None:
        if task not in self.task_names:
            raise InvalidInputError(f"task: {task!r} is not one of {list(self.task_names)}")

    def _check_truncate(self, truncate_dim) -> None:
        if truncate_dim is not None and truncate_dim not in self.matryoshka_dims:
            raise InvalidInputError(f"truncate_dim: {truncate_dim!r} is not one of the model's matryoshka_dims "
                                    f"{list(self.matryoshka_dims)} (hint: or None for all {self.hidden_size})")

    @staticmethod
    def _check_list(items, what: str, expected: str) -> list:
        if isinstance(items, (str, bytes, os.PathLike)) or not isinstance(items, Iterable):
            raise InvalidInputError(f"{what}: got {type(items).__name__}, expected {expected} (hint: wrap one in a list)")
        return list(items)

    def _empty(self, truncate_dim) -> Embeddings:
        return Embeddings(np.zeros((0, truncate_dim or self.hidden_size), dtype=np.float32), [])


def _parse_dtype(dtype, device: torch.device) -> tuple[torch.dtype, bool]:
    """(compute dtype, weight-only int8?) for ``from_pretrained``'s ``dtype`` argument."""
    int8 = isinstance(dtype, str) and dtype.removeprefix("torch.") == "int8"
    if int8 and device.type != "cpu":
        raise InvalidInputError("dtype: int8 is a CPU mode (hint: bfloat16 on a GPU)")
    if dtype is None or int8:
        if device.type == "cuda":
            return torch.bfloat16, False
        from jevsearch.model.cpu import default_cpu_dtype

        return default_cpu_dtype(), int8
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InvalidInputError(f"dtype: {dtype!r} is not a floating torch dtype or 'int8' "
                                "(hint: float32, bfloat16 or int8)")
    return dtype, False


def _check_budget(max_batch_tokens) -> int:
    if isinstance(max_batch_tokens, bool) or not isinstance(max_batch_tokens, int) or max_batch_tokens < 1:
        raise InvalidInputError(f"max_batch_tokens: {max_batch_tokens!r} is not a positive int")
    return max_batch_tokens


def _open_image(path):
    """Open an image file lazily (header only), or raise InvalidInputError naming it."""
    from PIL import Image

    try:
        return Image.open(path)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise InvalidInputError(f"{path}: cannot read image: {e}") from e
