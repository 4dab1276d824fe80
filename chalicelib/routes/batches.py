"""Async batch status (docs/api.md: Orders, `GET /batches/{batch_id}`)."""
from chalice import Blueprint

from .. import ingest
from ..http import endpoint

routes = Blueprint(__name__)


@endpoint(routes, "/batches/{batch_id}", methods=("GET",))
def get_batch(request, batch_id):
    return 200, ingest.get_batch(batch_id)
