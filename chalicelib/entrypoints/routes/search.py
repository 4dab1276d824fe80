"""Search routes (docs/api.md: Search) and the scheduled cache warmer."""
import logging

from chalice import Blueprint, Rate

from chalicelib import bootstrap
from chalicelib.entrypoints.deployment import serving
from chalicelib.entrypoints.http import current_caller, current_person, endpoint, query_params
from chalicelib.ops.metrics import emit

routes = Blueprint(__name__)
log = logging.getLogger(__name__)


@endpoint(routes, "/products/search")
def search_products(request):
    caller = current_caller()
    # The budget is per person on a key that ships in an app (one person spending it would
    # otherwise 429 every install), per key for a trusted server.
    # A catalog writer (admin plan) searches the writer: what it just changed is there.
    service = bootstrap.search_service().on_writer() if caller and caller.admin else bootstrap.search_service()
    page, cache_state = service.search_params(
        query_params(request), caller.key_id if caller else None, budget_holder=current_person())
    emit("SearchCache", 1, result=cache_state)
    return 200, page, {"X-Cache": cache_state}


@routes.schedule(Rate(10, unit=Rate.MINUTES), name="warm_cache",
                 description="Preload the product cache and the most frequent searches")
@serving
def warm_cache(event):
    summary = bootstrap.warm_caches()
    log.info("cache warmed: %s", summary)
    emit("CacheWarmed", sum(summary["searches"].values()) + sum(summary["products"].values()))
    return summary
