"""Clear one-line errors with a hint for what a user meets: an emptied or damaged LMDB file, a store
already open in this process, a non-image upload, control characters in file names, ``explain --out``
without an image extension. Real files, real LMDB, the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import lmdb
import numpy as np
import pytest

from jevsearch import Index
from jevsearch.errors import StorageError
from jevsearch.serve.state import AppState, UploadError
from jevsearch.store.lmdbenv import current_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _index(path) -> str:
    """A one-document bring-your-own-embeddings index; -> its data.mdb."""
    with Index.create(path, single_dim=8, multi_dim=8) as ix:
        ix.add_embeddings("doc\nwith a newline", np.eye(1, 16, dtype=np.float32), [np.eye(2, 8, dtype=np.float32)])
    return os.path.join(current_env(str(path))[0], "data.mdb")


def _cli(*args, cwd=REPO):
    r = subprocess.run([sys.executable, "-m", "jevsearch", *args], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=REPO), cwd=cwd)
    return r.returncode, r.stdout, r.stderr


def _one_line_error(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("jevsearch: error: ") and "(hint: " in err, err
    assert "Traceback" not in err
    return err


def test_zero_length_data_file_is_named_and_left_alone(tmp_path):
    data = _index(tmp_path / "idx")
    open(data, "wb").close()
    code, _, err = _cli("info", "--index", str(tmp_path / "idx"))
    assert code == 1 and "empty (0 bytes)" in _one_line_error(err) and "not a jevsearch index" not in err
    assert os.path.getsize(data) == 0  # opening did not write a fresh store over the evidence


def test_damaged_meta_page_is_not_reported_as_a_lack_of_memory(tmp_path):
    data = _index(tmp_path / "idx")
    with open(data, "r+b") as f:  # the main database's root page number in both meta pages
        for base in (0, 4096):
            f.seek(base + 136)
            f.write(b"\x7f" * 8)
    code, _, err = _cli("info", "--index", str(tmp_path / "idx"))
    assert code == 1 and "header is damaged" in _one_line_error(err) and "MemoryError" not in err


def test_store_already_open_in_this_process_is_not_called_damaged(tmp_path):
    _index(tmp_path / "idx")
    env = lmdb.open(current_env(str(tmp_path / "idx"))[0], max_dbs=32)  # other code holds it
    try:
        with pytest.raises(StorageError, match="already open in this process") as e:
            Index.open(tmp_path / "idx")
        assert "damaged" not in str(e.value) and "hint:" in str(e.value)
    finally:
        env.close()


def test_non_image_upload_says_what_was_sent(tmp_path):
    with pytest.raises(UploadError) as e:
        AppState(tmp_path / "none").limits.read_image(b"%PDF-1.7 a pdf, not an image")
    assert "BytesIO" not in str(e.value) and "%PDF-1.7" in str(e.value) and "hint: PNG" in str(e.value)


def test_newline_in_a_file_name_does_not_split_table_rows(tmp_path):
    _index(tmp_path / "idx")
    code, out, err = _cli("list", "--index", str(tmp_path / "idx"))
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and lines[1].endswith("doc\\nwith a newline"), out


def test_explain_out_without_an_image_extension(tmp_path):
    from PIL import Image

    from jevsearch.cli.common import save_image

    save_image(Image.new("RGB", (4, 4)), os.devnull)  # /dev/null: PNG, no "unknown file extension"
    save_image(Image.new("RGB", (4, 4)), str(tmp_path / "map.jpg"))
    assert Image.open(tmp_path / "map.jpg").format == "JPEG"
    from jevsearch.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match=r"unknown image extension '\.xyz' \(hint: \.png"):
        save_image(Image.new("RGB", (4, 4)), str(tmp_path / "map.xyz"))
