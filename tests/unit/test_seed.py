"""The demo catalog is deterministic, valid, and bilingual (no database needed)."""
from chalicelib.domain.products import validate_new_product
from scripts.seed import CATEGORIES, demo_products


def has_cjk(text):
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def test_demo_catalog_is_deterministic_valid_and_varied():
    products = demo_products(10_000)
    assert products == demo_products(10_000)
    assert products[:100] == demo_products(100)  # a smaller seed is a prefix: top-ups line up
    assert demo_products(50, seed=1) != demo_products(50, seed=2)
    assert len({p["sku"] for p in products}) == 10_000
    for p in products:
        assert validate_new_product(p) == p
    assert {p["category"] for p in products} == set(CATEGORIES)
    chinese = sum(has_cjk(p["name"]) for p in products)
    latin = sum(not has_cjk(p["name"]) for p in products)
    assert chinese > 2000 and latin > 2000
    assert sum(has_cjk(p["description"]) for p in products) > 2000
    assert any(p["stock"] == 0 for p in products) and any(p["stock"] > 1000 for p in products)
    prices = sorted(p["price_cents"] for p in products)
    assert prices[0] >= 99 and prices[-1] < 500_000 and prices[len(prices) // 2] > 1000
    assert any("手机" in p["name"] for p in products)
