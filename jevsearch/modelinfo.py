"""What an index records about the model that fills it, and the checks when it is reopened.

The manifest's ``model`` entry::

    {"source": "/models/jina-embeddings-v4" (absolute path) or "jinaai/jina-embeddings-v4" (hub id),
     "identity": encoder.identity (name, fingerprint of configs + weights, hidden_size, multi_dim, ...),
     "max_pixels": the page pixel budget pages were rendered to, "task": "retrieval"}

Embeddings of two models (or of one model at two truncations) are not comparable, so reopening an index
with another model or ``single_dim`` is refused with a message that says why and what to do.

>>> choose_single_dim((128, 256, 512, 1024, 2048), None), choose_single_dim((4, 8, 16, 32, 64), None)
(128, 64)
"""

from __future__ import annotations

import logging
import os

from jevsearch.errors import CheckpointError, InvalidInputError, ModelMismatchError
from jevsearch.ingest.pages import PageGeometry

log = logging.getLogger(__name__)

TASK = "retrieval"
DEFAULT_SINGLE_DIM = 128


def load_encoder(source, device=None, dtype=None, *, recorded: bool = False):
    """``JinaV4Encoder.from_pretrained(source)``, or ``source`` itself if it is a loaded encoder.

    For a recorded source, a loading error says how to point at the snapshot's new place.
    """
    from jevsearch.model import JinaV4Encoder

    if isinstance(source, JinaV4Encoder):
        return source
    try:
        return JinaV4Encoder.from_pretrained(source, device=device, dtype=dtype)
    except CheckpointError as e:
        if not recorded:
            raise
        what, own = e.message, f"{e.hint}; " if e.hint else ""
        moved = "if the model moved, pass its new path"
        raise CheckpointError(f"{what} (this index records model {source!r}) "
                              f"(hint: {own}{moved}: Engine.open(path, model=...))",
                              cli_hint=f"{own}{moved} with --model") from e


def choose_single_dim(matryoshka_dims, single_dim: int | None) -> int:
    """``single_dim`` checked against the model's Matryoshka dims; default 128, else the largest below it."""
    dims = sorted(int(d) for d in matryoshka_dims)
    if single_dim is None:
        below = [d for d in dims if d <= DEFAULT_SINGLE_DIM]
        return DEFAULT_SINGLE_DIM if DEFAULT_SINGLE_DIM in dims else (below[-1] if below else dims[0])
    if single_dim not in dims:
        raise InvalidInputError(f"single_dim {single_dim} is not one of the model's Matryoshka dims {dims} "
                                "(hint: pick one of them, or omit single_dim)")
    return single_dim


def record(encoder, source, max_pixels: int | None) -> dict:
    """The manifest's ``model`` entry for an index filled by ``encoder`` loaded from ``source``."""
    source = encoder.identity["name"] if source is encoder else os.fspath(source)
    if os.path.isdir(source):
        source = os.path.abspath(source)  # so the index opens from any working directory
    if max_pixels is None:
        max_pixels = encoder.max_pixels
    elif not isinstance(max_pixels, int) or not encoder.min_pixels <= max_pixels <= encoder.max_pixels:
        raise InvalidInputError(f"max_pixels {max_pixels!r}: must be an int in [{encoder.min_pixels}, "
                                f"{encoder.max_pixels}] (hint: omit it to use the model's own budget)")
    return {"source": source, "identity": encoder.identity, "max_pixels": max_pixels, "task": TASK}


def recorded_model(manifest) -> dict:
    """The manifest's ``model`` entry; an index made without a model has none to search or add with."""
    recorded = manifest.get("model")
    if not recorded or "identity" not in recorded:
        raise InvalidInputError("this index holds embeddings added by the caller, not by a model "
                                "(hint: use add_embeddings/search_embeddings, or create an index with model=...)",
                                cli_hint="it was made from Python without a model: index into a new --index "
                                "(with --model) instead")
    return recorded


def check_same_model(recorded: dict, encoder, *, given: bool = True) -> None:
    """Refuse ``encoder`` (or an identity dict) unless it is the model ``recorded`` in the index (by fingerprint).

    ``given``: the caller passed this model; else it was loaded from the recorded source, whose files
    have then changed since the index was built (the hint differs: there is no other model to omit).
    """
    want, got = recorded["identity"], getattr(encoder, "identity", encoder)
    if want["fingerprint"] == got["fingerprint"]:
        return
    if given:
        raise ModelMismatchError(
            f"model {got['name']!r} (fingerprint {got['fingerprint'][:12]}) is not the model this index "
            f"was built with, {recorded['source']!r} (fingerprint {want['fingerprint'][:12]}): their embeddings "
            "are not comparable (hint: open without a model to use the recorded one, or build a new index)",
            cli_hint="omit --model to use the recorded model, or build a new index (another --index) with this one")
    raise ModelMismatchError(
        f"the model at {recorded['source']!r}, recorded by this index, has changed since the index was built "
        f"(fingerprint {got['fingerprint'][:12]}, the index's {want['fingerprint'][:12]}): its embeddings are not "
        "comparable (hint: put the original model back there or pass where it is now: Engine.open(path, "
        "model=...); or build a new index with the new model)",
        cli_hint="put the original model back there or pass where it is now with --model; or build a new "
                 "index (another --index) with the new model")


def prepare(model, single_dim: int | None, max_pixels: int | None, device=None, dtype=None):
    """Load ``model`` for a new index -> (encoder, single_dim checked or chosen, the manifest's model entry)."""
    encoder = load_encoder(model, device, dtype)
    return encoder, choose_single_dim(encoder.matryoshka_dims, single_dim), record(encoder, model, max_pixels)


def check_open(manifest, model, single_dim: int | None):
    """Checks of ``Engine.open(path, model=..., single_dim=...)`` without loading any weights.

    -> (``model`` if it is a loaded encoder else None, the snapshot path to load from on first use or
    None for the recorded one). A path or hub id is checked by its fingerprint (files only).
    """
    from jevsearch.model import JinaV4Encoder, checkpoint

    check_single_dim(manifest["single_dim"], single_dim)
    if model is None:
        return None, None
    if isinstance(model, JinaV4Encoder):
        check_same_model(recorded_model(manifest), model)
        return model, None
    snapshot = checkpoint.resolve_snapshot(model)
    checkpoint.read_model_config(snapshot)
    check_same_model(recorded_model(manifest), {"name": str(model), "fingerprint": checkpoint.fingerprint(snapshot)})
    return None, model


def encode_query(encoder, query, geometry: PageGeometry):
    """Embed a text (task retrieval, prompt "query") or a PIL image (prepared exactly as indexed images)."""
    from PIL import Image

    from jevsearch.ingest.pages import prepare_image

    if isinstance(query, str):
        if not query.strip():
            raise InvalidInputError("query: empty text (hint: pass words to search for)")
        return encoder.encode_texts([query], task=TASK, prompt_name="query", cache=True)
    if isinstance(query, Image.Image):
        try:  # the same preparation as an indexed image: the same picture gives the same embedding
            image = prepare_image(query, geometry)
        except (ValueError, OSError) as e:
            raise InvalidInputError(f"query image: {e}") from e
        return encoder.encode_images([image], task=TASK, max_pixels=geometry.max_pixels, cache=True)
    raise InvalidInputError(f"query: {type(query).__name__} (hint: a str or a PIL image)")


def check_single_dim(recorded_dim: int, single_dim: int | None) -> None:
    if single_dim is not None and single_dim != recorded_dim:
        raise ModelMismatchError(
            f"single_dim {single_dim}: this index truncates single vectors to {recorded_dim}; another "
            "truncation would need every page re-indexed (hint: omit single_dim, or build a new index)"
        )


def ingest_threads(encoder) -> int:
    """Torch threads for the encoder while ingesting: on a CPU, one core is left to the render process
    and the store thread: torch's OpenMP team stalls whenever a core is taken (benchmarks/RESULTS.md)."""
    import torch

    if encoder.device.type != "cpu":
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, cores - 1)


def page_geometry(encoder, recorded: dict) -> PageGeometry:
    """The raster rules pages of this index are rendered with."""
    p = encoder.processor
    return PageGeometry(recorded["max_pixels"], encoder.min_pixels, p.patch_size * p.merge_size)
