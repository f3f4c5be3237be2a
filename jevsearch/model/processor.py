"""Turn texts and images into model inputs for jina-embeddings-v4, without loading any weights.

:class:`JinaV4Processor` composes the snapshot's Qwen2 tokenizer (``tokenizer.json``) with the
Qwen2-VL image preprocessing (sizes from ``preprocessor_config.json``) and applies the model's
input rules: the ``Query: `` / ``Passage: `` prefix for texts, the chat text around an image, right
padding, and the modality ids the 3-D rotary positions need.

>>> proc = JinaV4Processor.from_dir("tests/fixtures/jina-v4-tiny/ckpt", image_token_id=151655)
>>> proc.image_tokens(640, 480)          # <|image_pad|> tokens a 640x480 page becomes
391
>>> proc.tokenize_texts(["hi"], prefix="Query: ")[0]
[2859, 25, 15588]

Image pixels are preprocessed the way the reference's default (torchvision, "fast") Qwen2-VL image
processor does it: uint8 RGB resized with antialiased bicubic interpolation, then rescaled and
normalised. torchvision's resize of a uint8 tensor is ``torch.nn.functional.interpolate(...,
antialias=True)``, so plain torch reproduces it here without torchvision; PIL's bicubic rounds a few
pixels differently and moves per-token vectors by up to ~1.5e-4 in cosine.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jevsearch.errors import CheckpointError, InvalidInputError

log = logging.getLogger(__name__)

#: The chat text an image is wrapped in (the model's documented image prompt).
IMAGE_PROMPT = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n"
#: Qwen2's padding token; padded positions are masked, the id only keeps inputs identical to the reference's.
PAD_TOKEN = "<|endoftext|>"
#: Texts longer than this many tokens (prefix included) are truncated, as the reference does.
MAX_TEXT_TOKENS = 32768
#: Values of ``mm_token_type_ids``: Qwen2.5-VL's get_rope_index gives image tokens 3-D positions.
TEXT_TYPE, IMAGE_TYPE = 0, 1


@dataclass
class Batch:
    """One padded forward batch. Shapes: ``input_ids``, ``attention_mask``, ``mm_token_type_ids``
    [B, L] (right padded); for images also ``pixel_values`` [sum patches, C*T*P*P] and
    ``image_grid_thw`` [B, 3]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mm_token_type_ids: torch.Tensor
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None


class JinaV4Processor:
    """Tokenizer + image preprocessing of a jina-embeddings-v4 snapshot (no weights).

    Build it with :meth:`from_dir`; the encoder owns one as ``encoder.processor``. Public
    attributes (from preprocessor_config.json): ``patch_size`` (14), ``merge_size`` (2; a token is
    a ``patch_size * merge_size`` square of pixels), ``temporal_patch_size``, ``min_pixels``,
    ``max_pixels``; and ``image_token_id``, ``pad_token_id``, ``tokenizer`` (a ``tokenizers.Tokenizer``).
    """

    def __init__(self, tokenizer, image_config: dict, image_token_id: int):
        self.tokenizer = tokenizer
        self.patch_size = int(image_config["patch_size"])
        self.merge_size = int(image_config["merge_size"])
        self.temporal_patch_size = int(image_config["temporal_patch_size"])
        self.min_pixels = int(image_config["min_pixels"])
        self.max_pixels = int(image_config["max_pixels"])
        # Pixel values are (x / 255 - mean) / std; folding the 1/255 into mean and std is what the
        # reference's fast processor does, so the float rounding matches it too.
        scale = float(image_config["rescale_factor"])
        self._mean = torch.tensor(image_config["image_mean"], dtype=torch.float32).view(3, 1, 1) / scale
        self._std = torch.tensor(image_config["image_std"], dtype=torch.float32).view(3, 1, 1) / scale
        self.image_token_id = int(image_token_id)
        self.pad_token_id = self._token_id(PAD_TOKEN)
        prompt = self.tokenizer.encode(IMAGE_PROMPT, add_special_tokens=False).ids
        if prompt.count(self.image_token_id) != 1:
            raise CheckpointError(
                f"tokenizer.json: the image prompt does not tokenize to one image token {self.image_token_id} "
                "(hint: the tokenizer does not belong to this config)"
            )
        cut = prompt.index(self.image_token_id)
        self._prompt_head, self._prompt_tail = prompt[:cut], prompt[cut + 1 :]

    @classmethod
    def from_dir(cls, path: str | os.PathLike, image_token_id: int) -> JinaV4Processor:
        """Read ``tokenizer.json`` and ``preprocessor_config.json`` from a snapshot directory."""
        from tokenizers import Tokenizer

        path = Path(path)
        tok_file, pre_file = path / "tokenizer.json", path / "preprocessor_config.json"
        for f in (tok_file, pre_file):
            if not f.is_file():
                raise CheckpointError(f"{f}: missing (hint: copy the complete model snapshot, tokenizer included)")
        try:
            tokenizer = Tokenizer.from_file(str(tok_file))
            image_config = json.loads(pre_file.read_text())
            image_config.setdefault("min_pixels", image_config.get("size", {}).get("shortest_edge"))
            image_config.setdefault("max_pixels", image_config.get("size", {}).get("longest_edge"))
            proc = cls(tokenizer, image_config, image_token_id)
        except CheckpointError:
            raise
        except Exception as e:  # tokenizers raises plain Exception on a malformed file
            raise CheckpointError(f"{path}: unreadable tokenizer or preprocessor config: {e}") from e
        return proc

    def _token_id(self, token: str) -> int:
        tid = self.tokenizer.token_to_id(token)
        if tid is None:
            raise CheckpointError(f"tokenizer.json: no token {token!r} (hint: not a Qwen2 tokenizer)")
        return tid

    # ----- sizes -----------------------------------------------------------------------------
    @property
    def image_prompt_tokens(self) -> int:
        """Tokens of the image prompt besides the image's own tokens (11 for the real template)."""
        return len(self._prompt_head) + len(self._prompt_tail)

    @property
    def image_prefix_tokens(self) -> int:
        """Prompt tokens before an image's visual tokens (4 for the real template): the image's
        multi-vector rows are these, then its visual tokens row-major over the merged grid, then the
        rest of the prompt."""
        return len(self._prompt_head)

    def image_grid(self, width: int, height: int, max_pixels: int | None = None) -> tuple[int, int]:
        """(rows, cols) of visual tokens of an image: one per ``patch_size * merge_size`` square of
        the resized image; token ``r * cols + c`` after the prefix is the square at row r, column c
        (the vision tower merges each 2x2 window of patches, windows in row-major order)."""
        w, h = self.resized_size(width, height, max_pixels)
        f = self.patch_size * self.merge_size
        return h // f, w // f

    def text_token_labels(self, text: str, prefix: str) -> tuple[list[str], list[bool]]:
        """(label, meaningful) of each token of ``prefix + text``, aligned with its multi-vector rows.

        A label is the token's span of the original text (so characters split over several byte
        tokens stay readable); a token is meaningful when it covers part of ``text`` (not only the
        prefix) and holds a letter or digit (punctuation and spaces are not).

        >>> proc.text_token_labels("revenue, 2024", "Query: ")
        (['Query', ':', ' revenue', ',', ' ', '2', '0', '2', '4'], [False, False, True, False, False, True, True, True, True])
        """
        full = prefix + text
        enc = self.tokenizer.encode(full, add_special_tokens=False)
        labels = [full[a:b] for a, b in enc.offsets][:MAX_TEXT_TOKENS]
        meaningful = [b > len(prefix) and any(ch.isalnum() for ch in label)
                      for (_, b), label in zip(enc.offsets, labels)]
        return labels, meaningful

    def image_token_labels(self, rows: int, cols: int) -> tuple[list[str], list[bool]]:
        """(label, meaningful) of each token of an image prompt with a ``rows`` x ``cols`` grid: the
        prompt's own tokens (not meaningful) and ``patch r,c`` for each visual token."""
        decode = lambda ids: [self.tokenizer.decode([t], skip_special_tokens=False) for t in ids]  # noqa: E731
        patches = [f"patch {r},{c}" for r in range(rows) for c in range(cols)]
        labels = decode(self._prompt_head) + patches + decode(self._prompt_tail)
        head, n = len(self._prompt_head), len(patches)
        return labels, [head <= i < head + n for i in range(len(labels))]

    def check_max_pixels(self, max_pixels: int | None) -> int:
        """The pixel budget to use: ``max_pixels`` if given (validated), else the snapshot's."""
        if max_pixels is None:
            return self.max_pixels
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < self.min_pixels:
            raise InvalidInputError(
                f"max_pixels: {max_pixels!r} is not an int >= min_pixels {self.min_pixels} "
                "(hint: pass None for the model's default)"
            )
        return max_pixels

    def resized_size(self, width: int, height: int, max_pixels: int | None = None) -> tuple[int, int]:
        """(width, height) the image is resized to: multiples of patch*merge within the pixel bounds."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        if width < 1 or height < 1:
            raise InvalidInputError(f"image size {width}x{height}: empty image")
        max_pixels = self.check_max_pixels(max_pixels)
        factor = self.patch_size * self.merge_size
        try:
            h, w = smart_resize(height, width, factor=factor, min_pixels=self.min_pixels, max_pixels=max_pixels)
        except ValueError as e:  # aspect ratio above 200
            raise InvalidInputError(f"image size {width}x{height}: {e} (hint: crop or pad the image)") from e
        return w, h

    def image_tokens(self, width: int, height: int, max_pixels: int | None = None) -> int:
        """Number of ``<|image_pad|>`` tokens (visual tokens) an image of this size becomes.

        The image's forward sequence, and its multi-vector count, is this plus
        :attr:`image_prompt_tokens`.
        """
        w, h = self.resized_size(width, height, max_pixels)
        return (h // self.patch_size) * (w // self.patch_size) // (self.merge_size**2)

    # ----- text ------------------------------------------------------------------------------
    def tokenize_texts(self, texts: Sequence[str], prefix: str) -> list[list[int]]:
        """Token ids of ``prefix + text`` for each text, truncated to :data:`MAX_TEXT_TOKENS`."""
        encodings = self.tokenizer.encode_batch([prefix + t for t in texts], add_special_tokens=False)
        out = []
        for i, enc in enumerate(encodings):
            ids = enc.ids
            if len(ids) > MAX_TEXT_TOKENS:
                log.warning("text %d: %d tokens, truncated to %d", i, len(ids), MAX_TEXT_TOKENS)
                ids = ids[:MAX_TEXT_TOKENS]
            out.append(ids)
        return out

    def text_batch(self, token_ids: Sequence[Sequence[int]]) -> Batch:
        """Right-pad token id lists into one batch."""
        ids, mask = self._pad(token_ids)
        return Batch(ids, mask, torch.full_like(ids, TEXT_TYPE, dtype=torch.int32))

    # ----- images ----------------------------------------------------------------------------
    def image_batch(self, images: Sequence, max_pixels: int | None = None, names: Sequence[str] | None = None) -> Batch:
        """Preprocess already opened PIL images into one batch (pixels, grids and prompt tokens)."""
        from transformers.image_transforms import convert_to_rgb

        max_pixels = self.check_max_pixels(max_pixels)
        patches, grids, rows = [], [], []
        for k, img in enumerate(images):
            name = names[k] if names is not None else f"image {k}"
            try:
                # Alpha is composited onto white, CMYK/palette/grayscale converted, as the reference does.
                rgb = convert_to_rgb(img, return_numpy=True)
            except OSError as e:  # truncated or corrupt pixel data surfaces at decode time
                raise InvalidInputError(f"{name}: cannot decode image: {e}") from e
            p, gh, gw = self._patchify(rgb, max_pixels, name)
            patches.append(p)
            grids.append((1, gh, gw))
            n = gh * gw // self.merge_size**2
            rows.append(self._prompt_head + [self.image_token_id] * n + self._prompt_tail)
        ids, mask = self._pad(rows)
        mm_types = torch.where(ids == self.image_token_id, IMAGE_TYPE, TEXT_TYPE).to(torch.int32)
        return Batch(ids, mask, mm_types, torch.cat(patches), torch.tensor(grids, dtype=torch.long))

    def _patchify(self, rgb: np.ndarray, max_pixels: int, name: str) -> tuple[torch.Tensor, int, int]:
        height, width = rgb.shape[:2]
        try:
            w, h = self.resized_size(width, height, max_pixels)
        except InvalidInputError as e:
            raise InvalidInputError(f"{name}: {e}") from e
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]  # [1, 3, H, W] uint8
        if (h, w) != (height, width):
            # uint8 in, uint8 out (rounded), exactly torchvision's tensor resize.
            x = torch.nn.functional.interpolate(x, size=(h, w), mode="bicubic", antialias=True)
        x = (x[0].float() - self._mean) / self._std  # [3, h, w]
        P, M, T = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = h // P, w // P
        # [3, gh/M, M, P, gw/M, M, P] -> [gh/M, gw/M, M, M, 3, P, P]: patches in merge-window order.
        x = x.reshape(3, gh // M, M, P, gw // M, M, P).permute(1, 4, 2, 5, 0, 3, 6)
        # A still image is its own temporal pair: repeat each patch T times.
        x = x.unsqueeze(5).expand(-1, -1, -1, -1, -1, T, -1, -1)
        return x.reshape(gh * gw, 3 * T * P * P), gh, gw

    def _pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        longest = max(len(r) for r in rows)
        ids = torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return ids, mask
