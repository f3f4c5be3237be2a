"""Snippets from page text layers (pure functions)."""

from jevsearch.search.snippets import query_terms, snippet

PAGE = ("Annual report. " + "Background material on the company history. " * 6
        + "Revenues by region: the north grew fastest in the third quarter. "
        + "Appendix tables follow. " * 8)


def test_window_centres_on_the_densest_cluster_of_query_words():
    s = snippet(PAGE, "quarterly revenue by region", width=80)
    assert "Revenues by region" in s  # prefix match: revenue -> Revenues
    assert s.startswith("… ") and s.endswith(" …") and len(s) <= 80 + 4
    assert not s[2].isspace() and s.split()[1] in PAGE.split()  # cut on word boundaries


def test_no_match_or_no_query_gives_the_page_start_and_short_pages_whole():
    assert snippet(PAGE, "zebra", width=40).startswith("Annual report. Background")
    assert snippet(PAGE, None, width=40).endswith(" …")
    assert snippet("  Short\n page  text ", "page") == "Short page text"
    assert snippet("", "anything") == ""


def test_query_terms_drop_stop_words_and_repeats():
    assert query_terms("What is the Revenue of the region, revenue?") == ["revenue", "region"]
