"""Pure tests of the search tokenizer, query parsing and cursors (no I/O)."""
import base64
import json
import subprocess
import sys
from pathlib import Path

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


def test_a_signed_cursor_round_trips_and_any_other_is_refused():
    signer = search_query.CursorSigner("this deployment's secret")
    q = parse_query({"q": "phone", "sort": "price_asc"})
    cursor = search_query.encode_cursor(q, (1500, 42))
    signed = signer.sign(cursor)
    assert signed != cursor and signer.verify(signed) == cursor
    other_deployment = search_query.CursorSigner("another deployment's secret").sign(cursor)
    tampered = signer.sign(cursor)[:-1] + ("A" if signed[-1] != "A" else "B")
    crafted = search_query.encode_cursor(q, (0, 1)) + signed[signed.rindex("."):]   # another position, this mac
    for bad in (cursor, other_deployment, tampered, crafted, signed[:-3], signed[:10], signed + "x", ".", "",
                signed.replace(".", "\u00e9."), "\ud800" + signed, "x" * 600):
        with pytest.raises(ValidationError) as refused:
            signer.verify(bad)
        assert refused.value.extra["details"] == {"field": "cursor"}


def test_a_cursor_signer_needs_a_secret():
    with pytest.raises(ValueError):
        search_query.CursorSigner("")


# --- pinyin and typos ------------------------------------------------------

def test_pinyin_terms_of_han_pairs_full_and_initials():
    terms = document_terms("华为手机", "蓝牙")
    for t in ("py:huawei", "py:weishou", "py:shouji", "pi:hw", "pi:ws", "pi:sj", "py:lanya", "pi:ly"):
        assert t in terms, t
    assert terms["py:shouji"] == 1 and terms["py:lanya"] == 0
    assert document_terms("笔", "")["py:bi"] == 1            # a lone character: its syllable
    assert not any(":" in t for t in document_terms("Phone ケース 한국", ""))   # kana, Hangul: no pinyin


def test_heteronyms_phrase_reading_only_else_two_readings():
    terms = document_terms("银行", "")
    assert "py:yinhang" in terms and "py:yinxing" not in terms
    alone = document_terms("行卡", "")                         # no phrase: both readings of 行
    assert {"py:xingka", "py:hangka"} <= set(alone)


def test_syllable_table_is_pypinyins():
    from pypinyin.pinyin_dict import pinyin_dict
    from pypinyin import Style
    from pypinyin.style import convert
    readings = {convert(r, Style.NORMAL, strict=True) for rs in pinyin_dict.values() for r in rs.split(",")}
    readings = {r for r in readings if r.isascii() and r.isalpha() and set(r) & set("aeiouv")}
    assert readings == search_text.SYLLABLES


@pytest.mark.parametrize("word, parts", [
    ("shouji", ["shou", "ji"]), ("xian", ["xian"]), ("huaweishouji", ["hua", "wei", "shou", "ji"]),
    ("shouj", ["shou", "j"]), ("phone", None), ("sj", None), ("mate60", None), ("ｓｈｏｕ", None),
])
def test_split_syllables(word, parts):
    assert search_text.split_syllables(word) == parts


def test_query_term_alternatives_and_tiers():
    alts = Term("prefix", "huaweishouji").alternatives()
    assert [(a.tier, a.atoms) for a in alts] == [
        (0, (("prefix", "huaweishouji"),)),
        (1, (("exact", "py:huawei"), ("exact", "py:weishou"), ("prefix", "py:shouji")))]
    assert [(a.tier, a.atoms) for a in Term("exact", "sj").alternatives()] == [
        (0, (("exact", "sj"),)), (2, (("exact", "pi:sj"),))]
    assert len(Term("prefix", "phone").alternatives()) == 1      # not pinyin, has vowels
    assert len(Term("substr", "华为手机").alternatives()) == 1


def test_long_adversarial_words_split_fast():
    assert search_text.split_syllables("an" * 30 + "iii") is None   # memoised: no exponential backtracking
    assert len(search_text.pinyin_atoms("zhongguorenminjiefangjunhao")) == search_text.MAX_BIGRAMS_PER_RUN


def test_typo_budget_by_length_letters_only():
    assert [search_text.typo_budget(w) for w in ("lamp", "phone", "phones1", "headphon", "手机手机手机", "x" * 25)] \
        == [0, 1, 0, 2, 0, 0]


def test_deletions_and_dictionary_variants():
    assert search_text.deletions("abc", 1) == {"abc", "bc", "ac", "ab"}
    assert search_text.deletions("abc", 2) == {"abc", "bc", "ac", "ab", "a", "b", "c"}
    assert search_text.dictionary_variants("lamp") == search_text.deletions("lamp", 1)   # a 5-letter query may reach it
    assert search_text.dictionary_variants("phones") == search_text.deletions("phones", 2)
    assert search_text.dictionary_variants("abc") == set()
    assert search_text.dictionary_variants("mate60") == set()
    assert search_text.dictionary_variants("py:shouji") == set()


@pytest.mark.parametrize("a, b, limit, want", [
    ("phone", "phone", 1, 0), ("hpone", "phone", 1, 1), ("phne", "phone", 1, 1), ("phonee", "phone", 1, 1),
    ("phine", "phone", 1, 1), ("haedphnes", "headphones", 2, 2), ("hedphns", "headphones", 1, 2),
    ("abcdef", "uvwxyz", 2, 3),
])
def test_edit_distance_counts_transpositions_as_one(a, b, limit, want):
    assert search_text.edit_distance(a, b, limit) == want


def test_every_word_within_budget_shares_a_deletion_with_the_dictionary():
    """The SymSpell property the typo lookup relies on, checked exhaustively
    for one edit of a word and two of a longer one."""
    import string
    for word, budget in (("phone", 1), ("wireless", 2)):
        stored = search_text.dictionary_variants(word)
        typed = {word[:i] + c + word[i + 1:] for i in range(len(word)) for c in string.ascii_lowercase}
        typed |= {word[:i] + c + word[i:] for i in range(len(word) + 1) for c in string.ascii_lowercase}
        typed |= {word[:i] + word[i + 1:] for i in range(len(word))}
        typed |= {word[:i] + word[i + 1] + word[i] + word[i + 2:] for i in range(len(word) - 1)}
        if budget == 2:
            typed = {t[:i] + t[i + 1:] for t in typed for i in range(len(t))} | typed
        for t in typed:
            if search_text.typo_budget(t) >= search_text.edit_distance(t, word, 2):
                assert search_text.deletions(t, search_text.typo_budget(t)) & stored, t


def test_pypinyins_dictionaries_are_kept_out_of_the_garbage_collectors_walks():
    """Left tracked, they make every full collection in a process that indexed
    Chinese cost ~35-40 ms with every thread stopped (seen in bench/search's mix)."""
    code = ("import gc; from chalicelib.domain.search_text import document_terms; "
            "assert document_terms('手机', '')['py:shouji'] == 1; print(len(gc.get_objects()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                         capture_output=True, text=True, check=True)
    assert int(out.stdout) < 50_000  # ~200,000 with the dictionaries tracked
