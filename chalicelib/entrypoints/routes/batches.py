"""Async batch status (docs/api.md: Orders, `GET /batches/{batch_id}`)."""
from chalice import Blueprint

from chalicelib import bootstrap
from chalicelib.entrypoints.http import endpoint
from chalicelib.entrypoints.routes.orders import owner

routes = Blueprint(__name__)


@endpoint(routes, "/batches/{batch_id}", methods=("GET",))
def get_batch(request, batch_id):
    return 200, bootstrap.batch_store().get(batch_id, owner(), resolve=bootstrap.flash_sales().resolve)
