"""Pure tests of the search tokenizer, query parsing and cursors (no I/O)."""
import base64
import json

import pytest

from chalicelib.domain import search_query, search_text
from chalicelib.domain.errors import ValidationError
from chalicelib.domain.search_text import Term, document_terms, query_terms, tokens
from chalicelib.domain.search_query import parse_query


def test_latin_words_are_lowercased_and_punctuation_separates():
    assert tokens("Hello,  WORLD!! foo-bar") == [("word", "hello"), ("word", "world"), ("word", "foo"), ("word", "bar")]


def test_full_width_and_case_fold_normalise():
    assert tokens("ＩＰＨＯＮＥ Straße") == [("word", "iphone"), ("word", "strasse")]


def test_cjk_runs_split_from_latin_in_mixed_text():
    assert tokens("华为手机Mate60 Pro") == [("cjk", "华为手机"), ("word", "mate60"), ("word", "pro")]


def test_document_terms_cjk_unigrams_and_bigrams_and_alnum_parts():
    terms = document_terms("华为手机 Mate60", "红色")
    for t in ("华", "为", "手", "机", "华为", "为手", "手机", "mate60", "mate", "60"):
        assert terms[t] == 1, t
    assert terms["红"] == 0 and terms["红色"] == 0 and terms["色"] == 0
    assert "华为手" not in terms  # longer runs are answered from bigrams + exact check


def test_name_wins_over_description_for_in_name():
    assert document_terms("Phone", "phone case")["phone"] == 1
    assert document_terms("Case", "phone case")["phone"] == 0


def test_query_terms_kinds_and_dedup():
    assert query_terms("手 手机 华为手机 Phone phone ...") == [
        Term("exact", "手"), Term("exact", "手机"), Term("prefix", "phone"), Term("substr", "华为手机")]


def test_short_latin_words_are_whole_word_terms_not_prefixes():
    assert query_terms("tv 60 pho x") == [
        Term("exact", "60"), Term("exact", "tv"), Term("exact", "x"), Term("prefix", "pho")]


@pytest.mark.parametrize("q", ["!!!", "\U0001F600", "\"';--", "%_\\", "\u2014 \u2026"])
def test_a_q_without_searchable_terms_is_a_validation_error(q):
    with pytest.raises(ValidationError) as raised:
        parse_query({"q": q})
    assert raised.value.extra["details"] == {"field": "q"}


@pytest.mark.parametrize("q", ["", "   ", "\u200b", " \u200b\u00a0"])
def test_an_empty_or_blank_q_browses(q):
    assert parse_query({"q": q}).terms == ()


def test_long_cjk_run_uses_bounded_bigram_sample():
    atoms = Term("substr", "一二三四五六七八九十百千万").atoms()
    assert 2 <= len(atoms) <= search_text.MAX_BIGRAMS_PER_RUN
    assert atoms[0] == ("exact", "一二") and atoms[-1] == ("exact", "千万")


def test_parse_defaults():
    q = parse_query({})
    assert (q.terms, q.sort, q.limit, q.in_stock, q.after) == ((), "relevance", 20, False, None)


def test_equivalent_queries_share_a_cache_key():
    a = parse_query({"q": "Red  PHONE!", "category": "Phones"})
    b = parse_query({"q": "phone red", "category": "phones "})
    assert a.cache_hash == b.cache_hash
    assert a.cache_hash != parse_query({"q": "phone red", "category": "phones", "limit": "21"}).cache_hash


@pytest.mark.parametrize("params", [
    {"limit": "0"}, {"limit": "101"}, {"limit": "abc"}, {"limit": "1.5"}, {"min_price": "abc"},
    {"max_price": "-1"}, {"min_price": "10", "max_price": "5"}, {"sort": "cheapest"}, {"in_stock": "maybe"},
    {"cursor": "!!!"}, {"cursor": "eyJmIjoxfQ"}, {"q": "x" * 201}, {"q": " ".join(f"w{i}" for i in range(11))},
    {"category": "c" * 65}, {"colour": "red"}, {"q": "a\x00b"}, {"min_price": "９"},
])
def test_bad_parameters_are_validation_errors(params):
    with pytest.raises(ValidationError):
        parse_query(params)


def test_cursor_round_trip_and_binding_to_query():
    q = parse_query({"q": "phone", "sort": "price_asc"})
    cursor = search_query.encode_cursor(q, (1500, 42))
    assert parse_query({"q": "phone", "sort": "price_asc", "cursor": cursor}).after == (1500, 42)
    with pytest.raises(ValidationError):
        parse_query({"q": "phone", "sort": "price_desc", "cursor": cursor})
    with pytest.raises(ValidationError):
        parse_query({"q": "case", "sort": "price_asc", "cursor": cursor})


def test_newest_cursor_must_carry_a_timestamp():
    q = parse_query({"sort": "newest"})
    good = search_query.encode_cursor(q, ("2026-01-02 03:04:05.000006", 7))
    assert parse_query({"sort": "newest", "cursor": good}).after == ("2026-01-02 03:04:05.000006", 7)
    raw = json.dumps({"f": q.fingerprint, "k": ["2026-13-45 00:00:00.000000", 7]}).encode()
    with pytest.raises(ValidationError):
        parse_query({"sort": "newest", "cursor": base64.urlsafe_b64encode(raw).decode()})
