"""The product cache's freshness and fence tests and the search cache's generation
tests (tests/integration) on a Redis Cluster: a product's copy, fence and loader lease
share its id as hash tag, an invalidation runs once per slot, the generation stands apart."""
import pytest

from chalicelib import bootstrap
from tests.conftest import make_product
from tests.integration.test_catalog_cache import (  # noqa: F401 - test bodies run here again
    test_a_fence_carries_no_ttl_so_the_cache_redis_never_evicts_it,
    test_miss_then_hit_then_fresh_after_write,
    test_newer_copy_is_never_replaced_by_older,
    test_one_loader_per_hot_key,
    test_racing_readers_never_see_a_value_older_than_the_last_completed_write,
    test_slow_reader_cannot_put_back_an_old_copy,
    test_stock_changes_invalidate,
)
from tests.integration.test_search_cache import (  # noqa: F401
    shop,
    test_a_key_over_its_search_budget_gets_429_but_cached_answers,
    test_a_lost_generation_never_brings_back_a_page_cached_before_it,
    test_miss_then_hit_then_invalidated_by_a_write,
    test_one_key_cannot_steer_the_popular_searches,
    test_popular_searches_recorded_and_warmed,
    test_read_your_writes_while_readers_race,
)

pytestmark = pytest.mark.redis_cluster


def test_one_write_of_products_on_every_master_invalidates_each(catalog, redis_cluster):
    """A batch write's products spread over the three masters: each copy is dropped and fenced."""
    gateway, cache = bootstrap.redis_gateway(), bootstrap.product_cache()
    products, masters = [], set()
    while len(masters) < len(redis_cluster.nodes):
        product = make_product(catalog, stock=10)
        products.append(product)
        masters.add(redis_cluster.node_of(gateway.slot(cache.key(product["id"]))).port)
    for product in products:
        catalog.get(product["id"])
    assert set(cache.get_many([p["id"] for p in products])) == {p["id"] for p in products}
    order = {"client_order_id": "spread", "user_id": 1,
             "items": [{"product_id": p["id"], "quantity": 1} for p in products]}
    from chalicelib.domain.orders import parse_batch

    assert bootstrap.orders().place_batch(parse_batch({"orders": [order]}, "dev"))["results"][0]["status"] == "created"
    assert cache.get_many([p["id"] for p in products]) == {}
    for product in products:
        seen, state = catalog.get(product["id"])
        assert state == "MISS" and seen["stock"] == 9
        assert gateway.call(lambda r: r.get(cache.fence_key(product["id"]))) == str(seen["version"])
