"""Broad-query plans on the real MariaDB: the page is a
top-k walk in sort order that stops early, `total` is exact up to the cap and
a lower bound beyond it, and keyset cursors walk every match once in every
sort, under both plans (probe from the rarest term; walk postings in order)."""
import pytest

from chalicelib import bootstrap
from chalicelib.adapters.search_broad import BroadPlan
from chalicelib.adapters.search_mysql import MySQLSearchBackend
from chalicelib.domain.search_query import parse_query

SORTS = ("relevance", "price_asc", "price_desc", "newest")


def create(catalog, products):
    made = []
    for start in range(0, len(products), 500):
        made += catalog.create_many(products[start:start + 500])
    return made


def product(i, name, description="", **extra):
    return {"sku": f"TK-{i:05d}", "name": name, "description": description, "category": f"c{i % 3}",
            "price_cents": 100 + (i * 37) % 23, "stock": 5, **extra}


def search(**params):
    return MySQLSearchBackend(bootstrap.database()).search(parse_query({k: str(v) for k, v in params.items()}))


def walk(**params):
    seen, cursor = [], None
    while True:
        page = search(**params, **({"cursor": cursor} if cursor else {}))
        seen += [p["id"] for p in page.items]
        cursor = page.next_cursor
        if cursor is None:
            return seen


INDEX_READS = ("Handler_read_first", "Handler_read_key", "Handler_read_last", "Handler_read_next",
               "Handler_read_prev")


def index_reads(query):
    """(page, index entries the search read): the Handler_read_* counters of
    the connection it ran on (table scans of SHOW STATUS itself left out)."""
    conn = bootstrap.database().connect()
    try:
        with conn.cursor() as cur:
            def reads():
                cur.execute("SHOW SESSION STATUS LIKE 'Handler_read%'")
                return sum(int(r["Value"]) for r in cur.fetchall() if r["Variable_name"] in INDEX_READS)

            before = reads()
            page = MySQLSearchBackend(bootstrap.database())._search(cur, query)
            return page, reads() - before
    finally:
        conn.close()


def test_broad_plans_read_a_bounded_part_of_the_matches(catalog, monkeypatch):
    """3,000 matches: every sort and filter reads far fewer index entries than
    there are matches (the probe plan, which materialises them, reads more
    than all of them: the counters do count)."""
    matches = 3000
    create(catalog, [product(i, f"Widget {'Blue' if i % 2 else 'Red'}", "widget stand" if i % 4 else "plain")
                     for i in range(matches)])
    monkeypatch.setattr(MySQLSearchBackend, "TOTAL_CAP", 100)
    probe_page, probe_reads = index_reads(parse_query({"q": "widget", "sort": "price_asc"}))
    assert probe_reads > matches and probe_page.total == 100 and not probe_page.total_exact
    # 3,000 matches are now "broad"; the samples scaled down alike.
    monkeypatch.setattr(MySQLSearchBackend, "DRIVER_SAMPLE", 50)
    monkeypatch.setattr(MySQLSearchBackend, "DENSITY_SAMPLE", 50)
    for params in ({}, {"category": "c1"}, {"min_price": "105", "max_price": "110"}, {"in_stock": "true"},
                   {"q": "widget blue"}, {"limit": "100"}):
        for sort in SORTS:
            query = parse_query({"q": "widget", "sort": sort, **params})
            page, reads = index_reads(query)
            assert reads < matches / 3, (params, sort, reads)
            assert len(page.items) == query.limit and page.next_cursor
            assert (page.total, page.total_exact) == (100, False)
            assert page.items == probe_plan_items(query, monkeypatch)


def probe_plan_items(query, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(MySQLSearchBackend, "DRIVER_SAMPLE", 10**6)
        return MySQLSearchBackend(bootstrap.database()).search(query).items


@pytest.mark.parametrize("driver_sample", [5000, 20, 1], ids=["probe", "gather-or-walk", "topk"])
def test_total_is_exact_below_the_cap_and_a_lower_bound_above(catalog, monkeypatch, driver_sample):
    made = create(catalog, [product(i, f"Lamp {i}", "lamp shade" if i % 2 else "") for i in range(60)])
    monkeypatch.setattr(MySQLSearchBackend, "DRIVER_SAMPLE", driver_sample)
    monkeypatch.setattr(MySQLSearchBackend, "TOTAL_CAP", 25)
    by_category = [p for p in made if p["category"] == "c1"]
    cheap = [p for p in made if p["price_cents"] <= 104]
    assert len(by_category) == 20 and 0 < len(cheap) < 25
    for params, expected in (({"category": "c1"}, (20, True)), ({"max_price": "104"}, (len(cheap), True)),
                             ({}, (25, False)), ({"q": "lamp shade"}, (25, False)),
                             ({"q": "lamp shade", "category": "c1"}, (10, True))):
        page = search(**{"q": "lamp", **params})
        assert (page.total, page.total_exact) == expected, params
    assert len(walk(q="lamp", limit=7)) == 60      # paging reaches every match past the cap


@pytest.mark.parametrize("driver_sample", [5000, 50, 1], ids=["probe", "gather-or-walk", "topk"])
def test_cursors_walk_every_match_once_in_every_sort(catalog, monkeypatch, driver_sample):
    """Ties in price and created_at, relevance tiers, a prefix that is several
    words (widget, widgets, widgetry), two terms, filters: following
    next_cursor gives exactly the expected order. With driver_sample=50 every
    word is broad; queries with fewer than 50 matches are gathered and
    sorted after the count, the others walked."""
    def name(i):
        return f"{('Widget', 'Widgets', 'Gizmo')[i % 3]} {'Blue' if i % 4 == 0 else 'Red'}"

    made = create(catalog, [product(i, name(i), "widgetry blue" if i % 5 == 0 else "plain") for i in range(400)])
    for i in range(16, 400, 17):   # rewrites the copies on their postings too
        made[i] = catalog.update(made[i]["id"], {"status": "inactive"})
    for i in range(7, 400, 50):
        made[i] = catalog.update(made[i]["id"], {"price_cents": 99, "category": "c2"})
    monkeypatch.setattr(MySQLSearchBackend, "DRIVER_SAMPLE", driver_sample)
    conn = bootstrap.database().connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM products ORDER BY created_at DESC, id DESC")
            newest_rank = {r["id"]: n for n, r in enumerate(cur.fetchall())}
    finally:
        conn.close()

    def words(p):
        return (p["name"] + " " + p["description"]).lower().split()

    def name_hit(p, prefix):
        return any(w.startswith(prefix) for w in p["name"].lower().split())

    for q in ("widget", "widget blue"):
        prefixes = q.split()
        for params in ({}, {"category": "c2"}, {"min_price": "103", "max_price": "115"}):
            lo, hi = int(params.get("min_price", 0)), int(params.get("max_price", 10**9))
            matches = [p for p in made if p["status"] == "active" and lo <= p["price_cents"] <= hi
                       and params.get("category", p["category"]) == p["category"]
                       and all(any(w.startswith(x) for w in words(p)) for x in prefixes)]
            assert len(matches) > 20
            expected = {
                "relevance": sorted(matches, key=lambda p: (-sum(name_hit(p, x) for x in prefixes), p["id"])),
                "price_asc": sorted(matches, key=lambda p: (p["price_cents"], p["id"])),
                "price_desc": sorted(matches, key=lambda p: (-p["price_cents"], p["id"])),
                "newest": sorted(matches, key=lambda p: newest_rank[p["id"]]),
            }
            for sort in SORTS:
                got = walk(q=q, sort=sort, limit=13, **params)
                assert got == [p["id"] for p in expected[sort]], (q, params, sort)


def test_common_words_rarely_together_are_gathered_with_their_count_in_one_read(catalog, monkeypatch):
    """Two words each in a tenth of the products: taken as independent, they
    are together in about 6 of 600, so the matches are gathered and counted
    at once, without a count first. When that guess is wrong (words that
    always go together), the count and the walk take over. Either way the
    page, the total and the cursors are those of the probe plan."""
    products = []
    for i in range(600):
        words = ["stock"]
        if i % 10 == 0:
            words += ["alpha"]
        if i % 10 == 1 or i in (20, 40, 60):
            words += ["beta"]   # with alpha in 3 products only
        if i % 10 == 2:
            words += ["gamma", "delta"]   # always together
        products.append(product(i, " ".join(words)))
    create(catalog, products)
    monkeypatch.setattr(MySQLSearchBackend, "DRIVER_SAMPLE", 25)
    monkeypatch.setattr(MySQLSearchBackend, "DENSITY_SAMPLE", 25)
    counts = []
    count = BroadPlan.count
    monkeypatch.setattr(BroadPlan, "count", lambda self, *a: counts.append(a) or count(self, *a))
    for q, total, counted in (("alpha beta", 3, False), ("gamma delta", 60, True)):
        for sort in SORTS:
            counts.clear()
            query = parse_query({"q": q, "sort": sort, "limit": "2"})
            page = MySQLSearchBackend(bootstrap.database()).search(query)
            assert (page.total, page.total_exact) == (total, True), (q, sort)
            assert bool(counts) == counted, (q, sort)
            assert page.items == probe_plan_items(query, monkeypatch)
            walked = walk(q=q, sort=sort, limit=2 if total < 10 else 13)
            with monkeypatch.context() as m:
                m.setattr(MySQLSearchBackend, "DRIVER_SAMPLE", 10**6)
                assert walked == walk(q=q, sort=sort, limit=7) and len(walked) == total, (q, sort)
