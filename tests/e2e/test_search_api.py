"""GET /products/search over real HTTP (chalice local) on MariaDB and Redis."""
import pytest

from tests.conftest import ADMIN_KEY


def create(api, **fields):
    body = {"sku": fields.pop("sku", None) or f"E2E-{fields['name']}-{fields.get('price_cents', 0)}",
            "category": "e2e", "price_cents": 1000, "stock": 5, "description": "", **fields}
    r = api.post("/products", json=body, key=ADMIN_KEY)
    assert r.status_code == 201, r.text
    return r.json()["product"]


def test_search_route_is_not_taken_as_a_product_id(api):
    r = api.get("/products/search")
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"items", "total", "total_exact", "next_cursor"}
    assert r.json()["total_exact"] is True


def test_search_over_http_with_x_cache_and_read_your_writes(api):
    mate = create(api, name="华为手机 Mate 60", price_cents=599900)
    create(api, name="手机壳 for iPhone", price_cents=1999)
    r = api.get("/products/search", params={"q": "手机 mate"})
    assert r.status_code == 200 and r.headers["X-Cache"] == "MISS"
    assert [p["id"] for p in r.json()["items"]] == [mate["id"]]
    r = api.get("/products/search", params={"q": "手机 mate"})
    assert r.headers["X-Cache"] == "HIT" and r.json()["total"] == 1
    patched = api.patch(f"/products/{mate['id']}", json={"name": "荣耀手机 Mate 70"}, key=ADMIN_KEY)
    assert patched.status_code == 200
    r = api.get("/products/search", params={"q": "手机 mate"})
    assert r.headers["X-Cache"] == "MISS" and r.json()["items"][0]["name"] == "荣耀手机 Mate 70"
    assert api.get("/products/search", params={"q": "华为"}).json()["total"] == 0


def test_paging_over_http(api):
    made = {create(api, name=f"Pager {i}", price_cents=i % 4)["id"] for i in range(9)}
    seen, cursor = [], None
    while True:
        params = {"q": "pager", "sort": "price_desc", "limit": "4", **({"cursor": cursor} if cursor else {})}
        body = api.get("/products/search", params=params).json()
        assert body["total"] == 9
        seen += [p["id"] for p in body["items"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(made) and len(seen) == 9


def test_requires_api_key(api):
    r = api.get("/products/search", key=None)
    assert r.status_code == 403 and r.json()["error"]["code"] == "FORBIDDEN"


GARBAGE = [
    "limit=0", "limit=101", "limit=-5", "limit=abc", "limit=1e3", "limit=%EF%BC%95", "limit=99999999999999999999999",
    "min_price=abc", "min_price=-1", "max_price=1.5", "min_price=10&max_price=5", "max_price=NaN",
    "sort=cheapest", "sort=RELEVANCE", "in_stock=yes", "in_stock=2",
    "cursor=abc", "cursor=%00%01", "cursor=eyJmIjoxLCJrIjpbMSwyXX0", "cursor=" + "A" * 600,
    "cursor=W10", "cursor=bnVsbA", "q=" + "x" * 300, "q=%00", "category=" + "c" * 100,
    "foo=bar", "q=a&q=b&unknown=1", "limit=%20",
    "typo=yes", "typo=2", "typo=%00", "typo=" + "f" * 300, "q=phone&typo=off",
]


@pytest.mark.parametrize("query", ["q=%F0%9F%98%80", "q=%22%27%3B--", "q=%25%5F%5C"])
def test_a_q_with_no_searchable_term_is_400_not_a_browse(api, query):
    r = api.get("/products/search?" + query)
    assert r.status_code == 400, (query, r.text)
    assert r.json()["error"]["code"] == "VALIDATION_ERROR" and r.json()["error"]["details"] == {"field": "q"}


@pytest.mark.parametrize("query", GARBAGE)
def test_garbage_parameters_are_400_never_500(api, query):
    r = api.get("/products/search?" + query)
    assert r.status_code == 400, (query, r.status_code, r.text)
    assert r.json()["error"]["code"] == "VALIDATION_ERROR"


@pytest.mark.parametrize("query", ["q=a%20%20%20b", "q=", "q=%20%20", "q=%E2%80%8B", "category=%27%20OR%201%3D1",
                                   "sort=newest&in_stock=true", "q=phnoe&typo=FALSE", "q=shouji&typo=1",
                                   "q=" + "a" * 64 + "&typo=true", "q=" + "an" * 32, "q=" + "zh" * 30])
def test_odd_but_valid_queries_are_200(api, query):
    r = api.get("/products/search?" + query)
    assert r.status_code == 200, (query, r.text)
