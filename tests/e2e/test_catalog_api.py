"""The catalog part of docs/api.md over real HTTP against chalice local."""
import json

import pytest

from tests.conftest import ADMIN_KEY, DEV_KEY


def new_product(**overrides):
    body = {"sku": "SKU-1", "name": "华为手机 Mate", "description": "A phone", "category": "phones",
            "price_cents": 129900, "stock": 5}
    body.update(overrides)
    return body


def create(api, **overrides):
    response = api.post("/products", key=ADMIN_KEY, json=new_product(**overrides))
    assert response.status_code == 201, response.text
    return response.json()["product"]


def assert_error(response, status, code):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body


def test_health_needs_no_key(api):
    response = api.get("/health", key=None)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"mysql": "up", "redis": "up"}}


def test_create_read_update_stock_round_trip(api):
    product = create(api)
    assert product["version"] == 1 and product["status"] == "active"
    assert set(product) == {"id", "sku", "name", "description", "category", "price_cents", "stock", "version",
                            "low_stock_threshold",
                            "status", "created_at", "updated_at"}
    first = api.get(f"/products/{product['id']}")
    assert first.status_code == 200 and first.headers["X-Cache"] == "MISS"
    second = api.get(f"/products/{product['id']}")
    assert second.headers["X-Cache"] == "HIT" and second.json()["product"]["name"] == "华为手机 Mate"

    patched = api.patch(f"/products/{product['id']}", key=ADMIN_KEY, json={"price_cents": 99900, "expected_version": 1})
    assert patched.status_code == 200 and patched.json()["product"]["version"] == 2
    assert api.get(f"/products/{product['id']}").json()["product"]["price_cents"] == 99900

    stocked = api.post(f"/products/{product['id']}/stock", key=ADMIN_KEY, json={"delta": 10})
    assert stocked.json()["product"]["stock"] == 15 and stocked.json()["product"]["version"] == 3
    assert api.get(f"/products/{product['id']}").json()["product"]["stock"] == 15


def test_duplicate_sku_conflicts(api):
    create(api)
    assert_error(api.post("/products", key=ADMIN_KEY, json=new_product()), 409, "DUPLICATE_SKU")


def test_stale_expected_version_conflicts(api):
    product = create(api)
    api.patch(f"/products/{product['id']}", key=ADMIN_KEY, json={"name": "x"})
    body = assert_error(api.patch(f"/products/{product['id']}", key=ADMIN_KEY,
                                  json={"name": "y", "expected_version": 1}), 409, "VERSION_CONFLICT")
    assert body["error"]["current_version"] == 2


def test_stock_below_zero_changes_nothing(api):
    product = create(api, stock=3)
    assert_error(api.post(f"/products/{product['id']}/stock", key=ADMIN_KEY, json={"delta": -4}), 409,
                 "INSUFFICIENT_STOCK")
    after = api.get(f"/products/{product['id']}").json()["product"]
    assert after["stock"] == 3 and after["version"] == 1


def test_bulk_is_all_or_nothing(api):
    products = [new_product(sku=f"B-{i}") for i in range(5)]
    created = api.post("/products/bulk", key=ADMIN_KEY, json={"products": products})
    assert created.status_code == 201 and len(created.json()["ids"]) == 5
    ids = created.json()["ids"]
    assert [api.get(f"/products/{i}").json()["product"]["sku"] for i in ids] == [p["sku"] for p in products]

    clash = [new_product(sku="B-new"), new_product(sku="B-0")]
    assert_error(api.post("/products/bulk", key=ADMIN_KEY, json={"products": clash}), 409, "DUPLICATE_SKU")
    bad = [new_product(sku="B-ok"), new_product(sku="B-bad", price_cents="free")]
    assert_error(api.post("/products/bulk", key=ADMIN_KEY, json={"products": bad}), 400, "VALIDATION_ERROR")
    too_many = {"products": [new_product(sku=f"T-{i}") for i in range(1001)]}
    assert_error(api.post("/products/bulk", key=ADMIN_KEY, json=too_many), 413, "PAYLOAD_TOO_LARGE")
    for sku in ("B-new", "B-ok"):
        assert not _sku_exists(api, ids, sku)


def _sku_exists(api, known_ids, sku):
    # Ids are allocated in order: anything created after the first batch would be above its ids.
    nxt = max(known_ids) + 1
    return any(api.get(f"/products/{i}").status_code == 200 for i in range(nxt, nxt + 5))


def test_missing_product_is_404(api):
    assert_error(api.get("/products/987654"), 404, "PRODUCT_NOT_FOUND")
    assert_error(api.patch("/products/987654", key=ADMIN_KEY, json={"name": "x"}), 404, "PRODUCT_NOT_FOUND")
    assert_error(api.post("/products/987654/stock", key=ADMIN_KEY, json={"delta": 1}), 404, "PRODUCT_NOT_FOUND")


@pytest.mark.parametrize("method,path", [
    ("GET", "/products/1"), ("POST", "/products"), ("POST", "/products/bulk"),
    ("PATCH", "/products/1"), ("POST", "/products/1/stock"),
])
@pytest.mark.parametrize("key", [None, "not-a-key", ""])
def test_missing_or_unknown_key_is_forbidden(api, method, path, key):
    assert_error(api.request(method, path, key=key, json={}), 403, "FORBIDDEN")


@pytest.mark.parametrize("method,path", [
    ("POST", "/products"), ("POST", "/products/bulk"), ("PATCH", "/products/1"), ("POST", "/products/1/stock"),
])
def test_admin_routes_refuse_standard_key(api, method, path):
    assert_error(api.request(method, path, key=DEV_KEY, json={}), 403, "FORBIDDEN")


GARBAGE_BODIES = [
    b"", b"not json", b"{", b"[]", b"null", b"42", b'"text"', b"\xff\xfe\x00", b'{"sku": }',
    json.dumps({"sku": None}).encode(), json.dumps([1, 2, 3]).encode(),
]

GARBAGE_PRODUCTS = [
    {},
    {"sku": "x"},
    new_product(price_cents="12"),
    new_product(price_cents=-1),
    new_product(price_cents=10**40),
    new_product(price_cents=1.5),
    new_product(stock=True),
    new_product(stock=-5),
    new_product(stock=10**12),
    new_product(name=""),
    new_product(name="x" * 300),
    new_product(sku=["a"]),
    new_product(category={"a": 1}),
    new_product(unexpected="field"),
    new_product(description=None),
]


@pytest.mark.parametrize("raw", GARBAGE_BODIES)
@pytest.mark.parametrize("method,path", [
    ("POST", "/products"), ("POST", "/products/bulk"), ("PATCH", "/products/{id}"), ("POST", "/products/{id}/stock"),
])
def test_garbage_bodies_get_400(api, raw, method, path):
    product = create(api, sku="G-1")
    response = api.request(method, path.format(id=product["id"]), key=ADMIN_KEY, data=raw,
                           headers={"Content-Type": "application/json"})
    assert_error(response, 400, "VALIDATION_ERROR")
    assert api.get(f"/products/{product['id']}").json()["product"]["version"] == 1


@pytest.mark.parametrize("body", GARBAGE_PRODUCTS)
def test_garbage_products_get_400(api, body):
    assert_error(api.post("/products", key=ADMIN_KEY, json=body), 400, "VALIDATION_ERROR")
    assert_error(api.post("/products/bulk", key=ADMIN_KEY, json={"products": [body]}), 400, "VALIDATION_ERROR")


@pytest.mark.parametrize("body", [
    {}, {"expected_version": 1}, {"status": "deleted"}, {"price_cents": "1"}, {"name": 5},
    {"expected_version": "1", "name": "x"}, {"expected_version": 0, "name": "x"}, {"stock": 5}, {"version": 9},
])
def test_garbage_patches_get_400(api, body):
    product = create(api, sku="P-1")
    assert_error(api.patch(f"/products/{product['id']}", key=ADMIN_KEY, json=body), 400, "VALIDATION_ERROR")


@pytest.mark.parametrize("body", [{}, {"delta": 0}, {"delta": "5"}, {"delta": 1.5}, {"delta": 10**20},
                                  {"delta": None}, {"delta": 1, "extra": 2}, {"delta": True}])
def test_garbage_stock_changes_get_400(api, body):
    product = create(api, sku="S-1")
    assert_error(api.post(f"/products/{product['id']}/stock", key=ADMIN_KEY, json=body), 400, "VALIDATION_ERROR")


@pytest.mark.parametrize("bad_id", ["abc", "0", "-1", "1.5", "99999999999999999999999", "%20", "1e3", "０"])
def test_bad_ids_get_400(api, bad_id):
    assert_error(api.get(f"/products/{bad_id}"), 400, "VALIDATION_ERROR")


def test_payload_too_large(api):
    huge = {"products": [new_product(sku=f"H-{i}", description="x" * 2000) for i in range(600)]}
    assert_error(api.post("/products/bulk", key=ADMIN_KEY, json=huge), 413, "PAYLOAD_TOO_LARGE")


def test_errors_carry_a_request_id(api):
    response = api.get("/products/abc")
    assert response.json()["error"]["request_id"] == response.headers["X-Request-Id"]


@pytest.mark.parametrize("method, path, headers, status, code", [
    ("DELETE", "/products/1", {}, 405, "METHOD_NOT_ALLOWED"),             # Chalice: the route has no DELETE
    ("POST", "/products", {"Content-Type": "application/xml"}, 415, "UNSUPPORTED_MEDIA_TYPE"),  # Chalice
    ("GET", "/no-such-route", {}, 403, "FORBIDDEN"),                       # the gateway: no such route
])
def test_answers_made_before_any_view_have_the_contract_shape(api, method, path, headers, status, code):
    response = api.request(method, path, key=ADMIN_KEY, headers=headers, data="<x/>" if headers else None)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["request_id"] == response.headers["X-Request-Id"]
    if status == 405:
        assert set(response.headers["Allow"].replace(" ", "").split(",")) == {"GET", "PATCH"}
