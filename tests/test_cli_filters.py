"""The command line's filters: ``index --meta``, ``search --where`` and ``--documents``; bad JSON."""

from __future__ import annotations

import json

import pytest

from tests.ingest_corpus import make_pdf, tiny_model_dir
from tests.test_cli import jevsearch, run_main


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli-filters")
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    make_pdf(tmp / "a" / "one.pdf", 3, seed=1)
    (tmp / "b" / "note.md").write_text("# Harbor\n\nThe harbor warehouse audit is late.\n")
    from jevsearch.cli import main

    assert main(["index", str(tmp / "a"), "--index", str(tmp / "idx"), "--model", tiny_model_dir(), "-q",
                 "--meta", "team=fin", "--meta", "year=2024", "--meta", "final=true"]) == 0
    assert main(["index", str(tmp / "b"), "--index", str(tmp / "idx"), "-q", "--meta", "team=ops"]) == 0
    return tmp / "idx"


def test_meta_and_where(index, capsys):
    code, out, err = run_main(capsys, "search", "harbor", "--index", index, "-k", "10", "--json",
                              "--where", '{"year": {"$gte": 2023}, "final": true}')
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 3 and {r["path"].rsplit("/", 1)[1] for r in rows} == {"one.pdf"}
    assert rows[0]["metadata"]["team"] == "fin" and rows[0]["metadata"]["year"] == 2024  # --meta values as JSON
    code, out, _ = run_main(capsys, "search", "harbor", "--index", index, "--json", "--where", '{"kind": "text"}')
    rows = json.loads(out)
    assert len(rows) == 1 and rows[0]["snippet"] == "# Harbor\n\nThe harbor warehouse audit is late."
    code, out, _ = run_main(capsys, "search", "harbor", "--index", index, "--where", '{"team": "nobody"}')
    assert code == 0 and out.strip() == "no results (no page matches --where)"


def test_documents(index, capsys):
    code, out, err = run_main(capsys, "search", "harbor", "--index", index, "--json", "--documents", "-k", "5")
    assert code == 0, err
    rows = json.loads(out)
    assert sorted(r["path"].rsplit("/", 1)[1] for r in rows) == ["note.md", "one.pdf"]
    one = next(r for r in rows if r["path"].endswith("one.pdf"))
    assert 1 <= len(one["pages"]) <= 3 and one["score"] == one["pages"][0]["score"]
    code, out, _ = run_main(capsys, "search", "harbor", "--index", index, "--documents")
    assert code == 0 and len(out.strip().splitlines()) == 3  # a header and one row per document


def test_bad_where_and_meta_are_one_line_errors(index, capsys):
    bad = jevsearch("search", "q", "--index", index, "--where", '{"year": {"$gte": 2023}')  # a real process
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("jevsearch: error: --where: not valid JSON")
    code, _, err = run_main(capsys, "search", "q", "--index", index, "--where", '{"year": {"$after": 1}}')
    assert code == 1 and err.count("\n") == 1 and "unknown operator '$after'" in err
    code, _, err = run_main(capsys, "search", "q", "--index", index, "--where", "[1]")
    assert code == 1 and "expected a JSON object" in err
    with pytest.raises(SystemExit) as usage:
        run_main(capsys, "index", "x.pdf", "--index", index, "--meta", "team")
    assert usage.value.code == 2 and "is not key=value" in capsys.readouterr().err
    code, _, err = run_main(capsys, "index", index.parent / "a", "--index", index, "--meta", "kind=x")
    assert code == 1 and "kind set by jevsearch" in err
