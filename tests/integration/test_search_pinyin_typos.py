"""Pinyin and typo matching on the real MariaDB:
what matches, the order (as typed > pinyin/one typo > initials/two typos),
the typo switch, and that product writes keep both indexes current."""
import pytest

from chalicelib import bootstrap
from chalicelib.adapters.search_mysql import MySQLSearchBackend
from chalicelib.domain.errors import ValidationError
from chalicelib.domain.search_query import parse_query
from tests.conftest import make_product


@pytest.fixture(params=["probe", "topk"], autouse=True)
def plan(request, monkeypatch):
    """Both query plans (see test_search_matching.py)."""
    if request.param == "topk":
        monkeypatch.setattr(MySQLSearchBackend, "DRIVER_SAMPLE", 1)
    return request.param


def find(**params):
    page = MySQLSearchBackend(bootstrap.database()).search(parse_query({k: str(v) for k, v in params.items()}))
    return [p["id"] for p in page.items]


def ids(*products):
    return [p["id"] for p in products]


def test_full_pinyin_initials_and_mixed_find_chinese_names(catalog):
    phone = make_product(catalog, name="华为手机 Mate", description="旗舰")
    watch = make_product(catalog, name="智能手表", description="运动")
    make_product(catalog, name="Garden hose", description="green")
    assert find(q="shouji") == ids(phone)
    assert find(q="sj") == ids(phone)
    assert find(q="huawei shouji") == ids(phone)
    assert find(q="huaweishouji") == ids(phone)           # several characters typed without spaces
    assert find(q="huawei mate") == ids(phone)            # pinyin AND a Latin word
    assert find(q="shouj") == ids(phone)                  # still typing the last syllable
    assert find(q="zhineng") == ids(watch)
    assert find(q="yundong") == ids(watch)                # descriptions too
    assert find(q="shoubiao sj") == []                    # every term must match
    assert find(q="shou") == ids(phone, watch)            # a syllable: the start of 手机 and 手表


def test_exact_matches_rank_above_pinyin(catalog):
    pinyin = make_product(catalog, name="华为 手机", description="")             # huawei as pinyin, in the name
    exact = make_product(catalog, name="手机壳", description="fits Huawei P60")  # huawei as typed, description only
    assert find(q="huawei 手机") == ids(exact, pinyin)     # as typed beats pinyin whatever the name hits
    assert find(q="华为 手机") == ids(pinyin)
    homophone = make_product(catalog, name="首级 Helmet", description="")      # 首级 also reads shouji
    literal = make_product(catalog, name="Cover", description="shouji")
    assert find(q="shouji") == ids(literal, pinyin, exact, homophone)        # as typed first, then pinyin by name hits, id


def test_pinyin_postings_carry_the_filter_and_sort_copies(catalog):
    # The top-k plan walks a pinyin-only term's own postings (py:/pi: rows),
    # so their copies of price, category and status must follow the product.
    cheap = make_product(catalog, name="蓝牙耳机", price_cents=500, category="audio")
    dear = make_product(catalog, name="蓝牙音箱", price_cents=900, category="audio")
    assert find(q="lanya", sort="price_asc") == ids(cheap, dear)
    assert find(q="ly", sort="price_desc") == ids(dear, cheap)
    catalog.update(cheap["id"], {"price_cents": 2000, "category": "gifts"})
    assert find(q="lanya", sort="price_asc") == ids(dear, cheap)
    assert find(q="lanya", category="audio") == ids(dear)
    assert find(q="lanya", max_price=1000) == ids(dear)
    catalog.update(dear["id"], {"status": "inactive"})
    assert find(q="ly", sort="newest") == ids(cheap)


def test_heteronyms_follow_the_phrase_and_cover_unknown_pairs(catalog):
    bank = make_product(catalog, name="银行卡套", description="")
    walk = make_product(catalog, name="行走 机器人", description="")
    assert find(q="yinhang") == ids(bank)
    assert find(q="yinxing") == []                       # 银行 is a known phrase: only its reading
    assert find(q="xingzou") == ids(walk)
    assert find(q="hangzou") == []


def test_one_typo_at_five_letters_two_at_eight_ranked_below_exact(catalog):
    exact = make_product(catalog, name="Wireless phoner", description="")
    typo = make_product(catalog, name="Wireless phone", description="")
    head = make_product(catalog, name="Headphones", description="over ear")
    assert find(q="phoner") == ids(exact, typo)           # "phone" is one edit from it
    assert find(q="hpone") == ids(typo)                   # a transposition is one edit
    assert find(q="headphnes") == ids(head)               # one edit
    assert find(q="haedphnes") == ids(head)               # two edits, nine letters
    assert find(q="haedphnes", typo="false") == []
    assert find(q="hedphns") == []                        # seven letters: one edit only
    assert find(q="wireles") == ids(exact, typo)          # a prefix is no typo


def test_short_words_and_numbers_get_no_typo_tolerance(catalog):
    make_product(catalog, name="Lamp", description="desk")
    make_product(catalog, name="Mate60", description="")
    assert find(q="lamb") == []                           # four letters
    assert find(q="damp") == []
    assert find(q="mate70") == []                         # digits: a model number, not a typo


def test_typo_switch_is_validated_and_part_of_the_query(catalog):
    for bad in ("yes", "2", "off"):
        with pytest.raises(ValidationError) as err:
            parse_query({"q": "phone", "typo": bad})
        assert err.value.extra["details"] == {"field": "typo"}
    on, off = parse_query({"q": "phones"}), parse_query({"q": "phones", "typo": "FALSE"})
    assert on.cache_hash != off.cache_hash and on.fingerprint != off.fingerprint
    # No word long enough for a typo: the switch changes nothing, one cache key.
    assert parse_query({"q": "tv 手机"}).cache_hash == parse_query({"q": "tv 手机", "typo": "0"}).cache_hash
    assert '"typo":"false"' in off.popularity_member()


def test_updates_and_deactivation_reindex_pinyin_and_typos(catalog):
    product = make_product(catalog, name="蓝牙耳机", description="Bluetooth headset")
    assert find(q="lanya") == ids(product)
    assert find(q="headsett") == ids(product)
    catalog.update(product["id"], {"name": "无线鼠标", "description": "Wireless mouse"})
    assert find(q="lanya") == [] and find(q="headsett") == [] and find(q="erji") == []
    assert find(q="shubiao") == ids(product)
    assert find(q="wirelss") == ids(product)
    catalog.update(product["id"], {"status": "inactive"})
    assert find(q="shubiao") == [] and find(q="wirelss") == []


def test_typo_dictionary_is_per_distinct_word(catalog):
    for i in range(3):
        make_product(catalog, name=f"Keyboard {i}", description="mechanical keyboard")
    rows = bootstrap.database().query("SELECT COUNT(*) AS n, COUNT(DISTINCT term) AS words FROM search_typos")[0]
    assert rows["words"] == 2                               # keyboard, mechanical: not per product
    per_word = bootstrap.database().query(
        "SELECT COUNT(*) AS n FROM search_typos WHERE term = 'keyboard'")[0]["n"]
    assert per_word == 1 + 8 + 28                           # itself, 1 and 2 deletions (all distinct)


def test_reindex_script_backfills_products_indexed_before_0010(catalog):
    from scripts.reindex_search import reindex

    old = make_product(catalog, name="蓝牙音箱", description="portable speaker")
    db = bootstrap.database()
    conn = db.connect()
    try:
        with conn.cursor() as cur:   # what an index from before migration 0010 held
            cur.execute("DELETE FROM search_terms WHERE term LIKE 'py:%' OR term LIKE 'pi:%'")
            cur.execute("DELETE FROM search_typos")
        conn.commit()
    finally:
        conn.close()
    assert find(q="lanya") == [] and find(q="speeker") == []
    assert reindex(db, MySQLSearchBackend(db), batch=1) == 1
    assert find(q="lanya") == ids(old) and find(q="speeker") == ids(old)


def test_a_term_common_as_typed_keeps_no_alternatives(catalog, monkeypatch):
    typed = make_product(catalog, name="Phones", description="")
    typo = make_product(catalog, name="Phonez", description="")
    assert find(q="phones") == ids(typed, typo)
    monkeypatch.setattr(MySQLSearchBackend, "ALTERNATIVES_BELOW", 1)   # "phones" now counts as common
    assert find(q="phones") == ids(typed)
