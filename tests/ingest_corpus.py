"""Real test documents generated with pymupdf and PIL (no fixtures on disk): good and bad PDFs, images.

Used by the ingest tests and by ``benchmarks/ingest.py``. Everything is seeded and deterministic.
"""

from __future__ import annotations

import io
import os
import random
import struct

import pymupdf
from PIL import Image, ImageDraw

WORDS = (
    "revenue region quarterly growth margin forecast invoice contract turbine pressure valve "
    "diagram schematic protein enzyme dosage patient clinical orbit satellite antenna voltage "
    "circuit ledger audit shipment warehouse harbor glacier basalt sediment neuron synapse"
).split()


def picture(width: int = 160, height: int = 120, seed: int = 0) -> Image.Image:
    """A small RGB chart-like picture (bars on a gradient)."""
    rng = random.Random(seed)
    img = Image.new("RGB", (width, height), (rng.randrange(256), 200, 255 - rng.randrange(128)))
    draw = ImageDraw.Draw(img)
    bar = width / 8
    for k in range(6):
        x0 = bar * (k + 1)
        draw.rectangle([x0, rng.uniform(0, height * 0.9), x0 + bar * 0.7, height],
                       fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def page_text(name: str, page: int, seed: int = 0, words: int = 40) -> str:
    rng = random.Random(f"{name}/{page}/{seed}")
    return f"{name} page {page}: " + " ".join(rng.choice(WORDS) for _ in range(words))


def make_pdf(path, pages: int = 3, *, seed: int = 0, rotate: dict[int, int] | None = None,
             images: bool = True, size=(595, 842), texts: list[str] | None = None) -> list[str]:
    """Write a PDF of ``pages`` pages with text (and a picture per page); return each page's main text.

    ``rotate`` maps a 0-based page index to /Rotate degrees; ``texts`` overrides the generated text.
    """
    name = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    doc = pymupdf.open()
    written = []
    for i in range(pages):
        page = doc.new_page(width=size[0], height=size[1])
        text = texts[i] if texts else page_text(name, i + 1, seed)
        box = pymupdf.Rect(size[0] * 0.07, size[1] * 0.05, size[0] * 0.93, size[1] * 0.55)
        page.insert_textbox(box, text, fontsize=12)
        if images:
            page.insert_image(pymupdf.Rect(size[0] * 0.1, size[1] * 0.6, size[0] * 0.9, size[1] * 0.93),
                              stream=png_bytes(picture(seed=seed * 1000 + i)))
        if rotate and i in rotate:
            page.set_rotation(rotate[i])
        written.append(text)
    doc.save(os.fspath(path))
    doc.close()
    return written


def make_encrypted_pdf(path, pages: int = 2) -> None:
    make_pdf(path, pages)
    doc = pymupdf.open(os.fspath(path))
    tmp = os.fspath(path) + ".tmp"
    doc.save(tmp, encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="user-secret", owner_pw="owner-secret")
    doc.close()
    os.replace(tmp, path)


def make_zero_page_pdf(path) -> None:
    """A syntactically valid PDF whose page tree is empty (pymupdf cannot save one itself)."""
    with open(path, "wb") as f:
        f.write(b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
                b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")


def make_truncated_pdf(path, keep: float = 0.3) -> None:
    """A PDF cut short (an interrupted download): MuPDF 'repairs' it into pages with missing content."""
    make_pdf(path, 3, images=False)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])


def make_bad_page_count_pdf(path) -> None:
    """A PDF whose page tree says /Count -1: pymupdf opens it, then ``page_count`` raises (MuPDF
    "Invalid number of pages")."""
    with open(path, "wb") as f:
        f.write(b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
                b"2 0 obj << /Type /Pages /Kids [3 0 R] /Count -1 >> endobj\n"
                b"3 0 obj << /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >> endobj\n"
                b"trailer << /Root 1 0 R >>\n%%EOF\n")


def make_broken_png(path) -> None:
    """A PNG whose IDAT chunk claims half its length: PIL opens it, then decoding reads a chunk header
    from the middle of the data and raises SyntaxError ("broken PNG file"), not an OSError."""
    data = bytearray(png_bytes(picture(60, 40)))
    at = data.index(b"IDAT") - 4
    (n,) = struct.unpack(">I", data[at:at + 4])
    data[at:at + 4] = struct.pack(">I", n // 2)
    with open(path, "wb") as f:
        f.write(data)


def make_fake_pdf(path) -> None:
    with open(path, "w") as f:
        f.write("This is a text file that only pretends to be a PDF.\n" * 5)


def make_corpus(root, docs: int = 10, pages_per_doc: int = 20, seed: int = 0) -> list[str]:
    """``docs`` PDFs of ``pages_per_doc`` pages in nested folders (for benchmarks); return their paths."""
    paths = []
    for d in range(docs):
        folder = os.path.join(os.fspath(root), f"part{d % 3}", f"sub{d % 2}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"doc{d:03d}.pdf")
        make_pdf(path, pages_per_doc, seed=seed + d, rotate={1: 90} if pages_per_doc > 1 else None)
        paths.append(path)
    return paths


# ----- the tiny model, loaded once per test process ------------------------------------------------
_TINY: dict = {}


def tiny_model_dir() -> str:
    """A tiny random checkpoint (jevsearch.model.tiny), written once per test process."""
    if "dir" not in _TINY:
        import tempfile

        from jevsearch.model.tiny import write_tiny_checkpoint

        path = os.path.join(tempfile.mkdtemp(prefix="jevsearch-tiny-"), "tiny")
        write_tiny_checkpoint(path, seed=0)
        _TINY["dir"] = path
    return _TINY["dir"]


def tiny_encoder():
    """The real encoder on the tiny checkpoint (random weights: only agreement matters)."""
    if "encoder" not in _TINY:
        from jevsearch.model import JinaV4Encoder

        _TINY["encoder"] = JinaV4Encoder.from_pretrained(tiny_model_dir())
    return _TINY["encoder"]


def kill_after_documents(cmd: list[str], index, env: dict, cwd: str, total: int, at_least: int = 2) -> int:
    """Run ``cmd`` (an indexing command), SIGKILL it once a reader sees ``at_least`` documents in
    ``index``; returns how many the reader saw (asserted to be short of ``total``: killed mid-run)."""
    import signal
    import subprocess
    import time

    from jevsearch import Engine

    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen, deadline = 0, time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        with Engine.open(index, readonly=True) as reader:
            seen = reader.stats()["documents"]
        if seen >= at_least:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert at_least <= seen < total, f"killed after {seen} of {total} documents: {proc.stderr.read().decode()[-800:]}"
    return seen


EXAMPLES_QUERY = "quarterly revenue by region"
EXAMPLES_MAX_PIXELS = 128 * 28 * 28


def build_examples(root):
    """``root``/docs: the example PDFs and a chart image; ``root``/idx: their index (tiny model) with
    report.pdf team=finance year=2024, manual.pdf and chart.png team=ops year=2023. Returns ``root``."""
    import shutil

    from jevsearch import Engine

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    docs = root / "docs"
    docs.mkdir(parents=True)
    for name in ("report.pdf", "manual.pdf"):
        shutil.copy(os.path.join(repo, "examples", name), docs / name)
    picture(320, 240, seed=4).save(docs / "chart.png")
    with Engine.create(root / "idx", model=tiny_encoder(), max_pixels=EXAMPLES_MAX_PIXELS) as eng:
        eng.add([docs / "report.pdf"], metadata={"team": "finance", "year": 2024})
        eng.add([docs / "manual.pdf", docs / "chart.png"], metadata={"team": "ops", "year": 2023})
    return root
