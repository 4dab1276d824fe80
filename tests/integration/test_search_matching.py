"""Search matching rules, filters, sorts and paging on the real MariaDB."""
import threading

import pytest

from chalicelib import bootstrap
from chalicelib.domain import search_text
from chalicelib.adapters.search_mysql import MySQLSearchBackend
from chalicelib.domain.search_query import parse_query
from tests.conftest import make_product


@pytest.fixture(params=["probe", "topk"], autouse=True)
def plan(request, monkeypatch):
    """Run every rule under both query plans: probing from the rarest term
    (selective queries) and walking postings in sort order (broad queries)."""
    if request.param == "topk":
        monkeypatch.setattr(MySQLSearchBackend, "DRIVER_SAMPLE", 1)
    return request.param


@pytest.fixture
def shop(catalog):
    """An empty catalog, search index included."""
    conn = bootstrap.database().connect()
    try:
        with conn.cursor() as cur:
            cur.execute("DELETE FROM search_docs")
            cur.execute("DELETE FROM search_meta")
    finally:
        conn.close()
    return catalog


def find(**params):
    """Ids of one page straight from MySQL (no cache)."""
    page = MySQLSearchBackend(bootstrap.database()).search(parse_query({k: str(v) for k, v in params.items()}))
    return [p["id"] for p in page.items], page


def ids(*products):
    return [p["id"] for p in products]


def walk(**params):
    """Every id reached by following next_cursor."""
    seen, cursor, pages = [], None, 0
    while True:
        got, page = find(**params, **({"cursor": cursor} if cursor else {}))
        seen += got
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            return seen, pages


def test_chinese_substring(shop):
    mate = make_product(shop, name="华为手机 Mate", description="旗舰")
    case = make_product(shop, name="手机壳", description="硅胶")
    make_product(shop, name="笔记本电脑", description="轻薄")
    assert sorted(find(q="手机")[0]) == sorted(ids(mate, case))
    assert find(q="为手")[0] == ids(mate)            # a substring spanning the bigram boundary
    assert find(q="华为手机")[0] == ids(mate)         # longer than a bigram: verified exactly
    assert find(q="机")[0] == ids(mate, case)         # single character
    assert find(q="手机电脑")[0] == []                # bigrams all exist somewhere, substring nowhere


def test_long_cjk_query_is_verified_not_just_bigram_intersection(shop):
    # Contains the bigrams 手机 and 机壳 but not the substring 手机壳.
    decoy = make_product(shop, name="手机 机壳")
    real = make_product(shop, name="透明手机壳")
    assert find(q="手机壳")[0] == ids(real)
    assert sorted(find(q="手机")[0]) == sorted(ids(decoy, real))


def test_mixed_chinese_and_latin(shop):
    mate = make_product(shop, name="华为手机 Mate 60 Pro")
    iphone = make_product(shop, name="iPhone15手机壳")
    make_product(shop, name="Mate Pad 平板")
    assert find(q="手机 mate")[0] == ids(mate)
    assert find(q="华为mate")[0] == ids(mate)
    assert find(q="iphone手机壳")[0] == ids(iphone)
    assert find(q="IPHONE15")[0] == ids(iphone)


def test_case_insensitive_punctuation_and_spaces_ignored(shop):
    p = make_product(shop, name="USB-C Charger", description="Fast charging, 65W!")
    for q in ("usb c", "USB-C", "  charger   USB ", "65w", "charger!!!", "fast,charging"):
        assert find(q=q)[0] == ids(p), q


def test_latin_words_match_by_prefix_not_infix(shop):
    p = make_product(shop, name="Bluetooth Headphones")
    assert find(q="blue")[0] == ids(p)
    assert find(q="head")[0] == ids(p)
    assert find(q="phones")[0] == []      # not the start of a word
    assert find(q="tooth")[0] == []


def test_short_latin_words_match_whole_words_only(shop):
    tv = make_product(shop, name="TV stand")
    make_product(shop, name="Tvorog cheese")
    mate = make_product(shop, name="Mate60 phone")
    assert find(q="tv")[0] == ids(tv)           # not a prefix of "tvorog"
    assert find(q="tvo")[0] != []               # three letters and up: prefixes again
    assert find(q="60")[0] == ids(mate)         # a whole part of "mate60"
    assert find(q="6")[0] == []


def test_many_terms_rank_the_same_under_both_plans(shop):
    """Five words and a CJK run: matches and relevance tiers are the same
    whether the plan probes from the rarest term or walks score tiers."""
    desc = make_product(shop, name="Alpha 华为手机", description="bravo charlie delta echo")   # lower id
    best = make_product(shop, name="Alpha Bravo Charlie Delta Echo", description="华为手机")
    make_product(shop, name="Alpha Bravo Charlie Delta", description="华为手机")   # no echo
    make_product(shop, name="Alpha Bravo Charlie Delta Echo", description="华为")  # no 手机
    q = "alpha bravo charlie delta echo 华为手机"
    assert find(q=q)[0] == ids(best, desc)      # five name hits above two
    assert walk(q=q, limit=1)[0] == ids(best, desc)


def test_every_term_must_match_name_or_description(shop):
    both = make_product(shop, name="Red phone", description="")
    split = make_product(shop, name="Phone", description="in red")
    make_product(shop, name="Red car", description="")
    assert sorted(find(q="red phone")[0]) == sorted(ids(both, split))
    assert find(q="red phone car")[0] == []
    assert find(q="zebra")[0] == []


def test_name_matches_rank_above_description_matches_then_id(shop):
    d1 = make_product(shop, name="Case", description="fits any phone")
    n1 = make_product(shop, name="Phone stand", description="")
    d2 = make_product(shop, name="Cable", description="phone charging cable")
    n2 = make_product(shop, name="Phone", description="phone")
    assert find(q="phone")[0] == ids(n1, n2, d1, d2)
    # More terms in the name rank higher.
    both = make_product(shop, name="Red phone", description="")
    one = make_product(shop, name="Phone", description="red")
    assert find(q="red phone")[0] == ids(both, one)


def test_chinese_name_match_ranks_first_for_long_runs(shop):
    desc = make_product(shop, name="配件", description="华为手机专用")
    name = make_product(shop, name="华为手机", description="")
    assert find(q="华为手机")[0] == ids(name, desc)


def test_only_active_products(shop):
    p = make_product(shop, name="Lamp")
    hidden = make_product(shop, name="Lamp shade")
    shop.update(hidden["id"], {"status": "inactive"})
    assert find(q="lamp")[0] == ids(p)
    shop.update(hidden["id"], {"status": "active"})
    assert find(q="lamp")[0] == ids(p, hidden)


def test_filters(shop):
    cheap = make_product(shop, name="Mug", category="kitchen", price_cents=500, stock=0)
    mid = make_product(shop, name="Mug large", category="kitchen", price_cents=1500, stock=3)
    pricey = make_product(shop, name="Mug gold", category="gifts", price_cents=9000, stock=1)
    assert find(q="mug", category="kitchen")[0] == ids(cheap, mid)
    assert find(q="mug", category="KITCHEN")[0] == ids(cheap, mid)
    assert find(q="mug", min_price=1000)[0] == ids(mid, pricey)
    assert find(q="mug", max_price=1500)[0] == ids(cheap, mid)
    assert find(q="mug", min_price=1500, max_price=1500)[0] == ids(mid)
    assert find(q="mug", in_stock="true")[0] == ids(mid, pricey)
    assert find(q="mug", in_stock="false")[0] == ids(cheap, mid, pricey)
    # Empty q browses by the filters.
    assert find(category="gifts")[0] == ids(pricey)
    assert find()[1].total == 3


def test_sorts(shop):
    a = make_product(shop, name="Pen a", price_cents=300)
    b = make_product(shop, name="Pen b", price_cents=100)
    c = make_product(shop, name="Pen c", price_cents=200)
    d = make_product(shop, name="Pen d", price_cents=100)
    assert find(q="pen", sort="price_asc")[0] == ids(b, d, c, a)
    assert find(q="pen", sort="price_desc")[0] == ids(a, c, b, d)
    assert find(q="pen", sort="newest")[0] == ids(d, c, b, a)
    assert find(q="pen")[0] == ids(a, b, c, d)


def test_renames_reindex_in_the_same_transaction(shop):
    p = make_product(shop, name="Old name", description="茶杯")
    shop.update(p["id"], {"name": "Brand new", "description": "咖啡杯"})
    assert find(q="old")[0] == []
    assert find(q="茶杯")[0] == []
    assert find(q="brand")[0] == ids(p)
    assert find(q="咖啡")[0] == ids(p)
    conn = bootstrap.database().connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT term FROM search_terms WHERE product_id = %s", (p["id"],))
            assert {r["term"] for r in cur.fetchall()} == set(search_text.document_terms("Brand new", "咖啡杯"))
    finally:
        conn.close()


@pytest.mark.parametrize("sort", ["relevance", "price_asc", "price_desc", "newest"])
def test_paging_walks_every_match_exactly_once(shop, sort):
    made = shop.create_many([
        {"sku": f"PG-{i}", "name": "Widget" if i % 3 else "Gadget", "description": "widget" if i % 3 == 0 else "",
         "category": "t", "price_cents": (i * 37) % 10, "stock": 1} for i in range(47)])
    seen, pages = walk(q="widget", sort=sort, limit=5)
    assert len(seen) == len(set(seen)) == 47
    assert sorted(seen) == sorted(p["id"] for p in made)
    assert pages == 10
    assert find(q="widget", limit=5)[1].total == 47


@pytest.mark.parametrize("sort", ["relevance", "price_asc", "newest"])
def test_paging_exactly_once_while_products_are_added(shop, sort):
    original = shop.create_many([{"sku": f"PA-{i}", "name": f"Bolt {i}", "description": "", "category": "t",
                                  "price_cents": (i * 7) % 13, "stock": 1} for i in range(40)])
    seen, cursor, n = [], None, 0
    while True:
        got, page = find(q="bolt", sort=sort, limit=4, **({"cursor": cursor} if cursor else {}))
        seen += got
        make_product(shop, sku=f"PA-new-{n}", name="Bolt new", price_cents=n % 13)
        n += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen)), "a product was returned twice"
    assert {p["id"] for p in original} <= set(seen), "a product that existed throughout was skipped"


def test_total_counts_all_matches_not_the_page(shop):
    shop.create_many([{"sku": f"T-{i}", "name": "Sock", "description": "", "category": "t",
                       "price_cents": 1, "stock": 1} for i in range(30)])
    got, page = find(q="sock", limit=7)
    assert len(got) == 7 and page.total == 30 and page.next_cursor


def test_concurrent_creates_index_without_deadlocks(shop):
    errors = []

    def create(t):
        try:
            for i in range(10):
                shop.create_many([{"sku": f"CC-{t}-{i}-{j}", "name": f"Thing {t} 东西", "description": "same words",
                                   "category": "t", "price_cents": 1, "stock": 1} for j in range(5)])
        except Exception as exc:  # pragma: no cover - the assertion reports it
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert find(q="东西 same", limit=1)[1].total == 300


def test_patched_price_category_and_status_reach_filters_sorts_and_totals(shop):
    """Filters and sorts read search_meta (a copy of status, category, price,
    created_at); every PATCH must rewrite it in the same transaction."""
    a = make_product(shop, name="Lamp a", category="desk", price_cents=100, stock=0)
    b = make_product(shop, name="Lamp b", category="desk", price_cents=200, stock=4)
    c = make_product(shop, name="Lamp c", category="desk", price_cents=150, stock=2)
    shop.update(a["id"], {"price_cents": 300, "category": "Floor"})
    assert find(q="lamp", sort="price_asc")[0] == ids(c, b, a)
    assert find(q="lamp", sort="price_desc")[0] == ids(a, b, c)
    assert find(q="lamp", category="floor")[0] == ids(a)
    assert find(q="lamp", category="desk")[0] == ids(b, c)
    assert find(q="lamp", min_price=250)[0] == ids(a)
    assert find(q="lamp", max_price=150)[0] == ids(c)
    shop.update(c["id"], {"status": "inactive"})
    assert find(q="lamp")[1].total == 2
    assert find(q="lamp", category="desk", in_stock="true")[0] == ids(b)
    shop.adjust_stock(a["id"], {"delta": 5})      # from sold out to in stock: the listing moves
    assert find(q="lamp", in_stock="true", sort="price_desc")[0] == ids(a, b)
    got = find(q="lamp", sort="price_desc")[1].items[0]
    assert (got["id"], got["price_cents"], got["category"], got["stock"]) == (a["id"], 300, "Floor", 5)
    conn = bootstrap.database().connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) AS n FROM products p JOIN search_meta m ON m.product_id = p.id "
                        "WHERE m.active = IF(p.status = 'active', IF(p.stock > 0, 1, 2), 0) "
                        "AND BINARY m.category = BINARY p.category "
                        "AND m.price_cents = p.price_cents AND m.created_at = p.created_at")
            assert cur.fetchone()["n"] == 3
    finally:
        conn.close()


@pytest.mark.parametrize("q", ["lamp", ""])
def test_total_is_exact_up_to_the_cap_then_a_lower_bound(shop, monkeypatch, q):
    made = [make_product(shop, name=f"Lamp {i}")["id"] for i in range(5)]
    monkeypatch.setattr(MySQLSearchBackend, "TOTAL_CAP", 5)
    page = find(q=q)[1]
    assert (page.total, page.total_exact) == (5, True)
    made.append(make_product(shop, name="Lamp 5")["id"])
    page = find(q=q)[1]
    assert (page.total, page.total_exact) == (5, False)
    assert page.to_api()["total_exact"] is False
    assert walk(q=q, limit=2)[0] == made        # paging still reaches every match


def test_a_cursor_past_the_last_match_still_reports_the_total(shop):
    made = [make_product(shop, name=f"Nail {i}", price_cents=10 + i) for i in range(3)]
    got, page = find(q="nail", sort="price_asc", limit=2)
    assert got == ids(*made[:2]) and page.total == 3 and page.next_cursor
    shop.update(made[2]["id"], {"status": "inactive"})   # the only match after the cursor
    got, page = find(q="nail", sort="price_asc", limit=2, cursor=page.next_cursor)
    assert got == [] and page.total == 2 and page.next_cursor is None
