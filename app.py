"""Lambda entry points. Each area's routes live in a Blueprint under
chalicelib/entrypoints/routes, the SQS consumers' bodies in
chalicelib/entrypoints/sqs.py; handlers only parse, call the core, and map results."""
import os

from chalice import Chalice, Rate

from chalicelib import bootstrap, snapstart  # noqa: F401 - snapstart registers SnapStart's runtime hooks
from chalicelib.entrypoints import expiry_and_outbox, http, migrate_function, sqs
from chalicelib.entrypoints.deployment import serving
from chalicelib.entrypoints.routes import batches, catalog, customer, flash, ops, orders, search
from chalicelib.ops.logs import logger
from chalicelib.settings import QUEUES

app = Chalice(app_name="shop")
if os.environ.get("AWS_LAMBDA_FUNCTION_NAME") and bootstrap.deployment_problems():
    # Said once per cold start; every request then answers 503 (entrypoints/deployment.py).
    logger.error("refusing to serve: this deployment is misconfigured",
                 extra={"problems": bootstrap.deployment_problems()})
app.register_middleware(http.chalice_errors_in_contract_shape, "http")
app.register_blueprint(search.routes)
app.register_blueprint(catalog.routes)
app.register_blueprint(orders.routes)
app.register_blueprint(batches.routes)
app.register_blueprint(customer.routes)
app.register_blueprint(flash.routes)
app.register_blueprint(ops.routes)


# Every handler below runs behind `serving`: a misconfigured deployment refuses (entrypoints/deployment.py).
# SQS consumers. Chalice passes an SQSEvent; the raw Lambda event is
# event.to_dict(). Chalice returns what the function returns, which is the
# partial-batch response ({"batchItemFailures": [...]}) Lambda acts on once the
# event source mapping has FunctionResponseTypes [ReportBatchItemFailures].
def _queue_of(handler):
    return next(bootstrap.settings().get(q.setting) for q in QUEUES if q.handler == handler)


@app.on_sqs_message(queue=_queue_of("handle_order_ingest"), batch_size=10)
@serving
def handle_order_ingest(event):
    return sqs.handle_order_event(event.to_dict(), event.context)


@app.on_sqs_message(queue=_queue_of("handle_cache_invalidation"), batch_size=10)
@serving
def handle_cache_invalidation(event):
    return sqs.handle_invalidation_event(event.to_dict(), event.context)


@app.on_sqs_message(queue=_queue_of("handle_flash_orders"), batch_size=10)
@serving
def handle_flash_orders(event):
    return sqs.handle_flash_event(event.to_dict(), event.context)


@app.on_sqs_message(queue=_queue_of("handle_order_expiry"), batch_size=10)
@serving
def handle_order_expiry(event):
    return expiry_and_outbox.handle_expiry_event(event.to_dict(), event.context)


@app.on_sqs_message(queue=_queue_of("handle_related_products"), batch_size=10)
@serving
def handle_related_products(event):
    return sqs.handle_related_event(event.to_dict(), event.context)


@app.on_sqs_message(queue=_queue_of("handle_notifications"), batch_size=10)
@serving
def handle_notifications(event):
    return sqs.handle_notification_event(event.to_dict(), event.context)


@app.schedule(Rate(1, unit=Rate.MINUTES), name="lifecycle",
              description="Expire unpaid orders and publish order events (loops for most of the minute)")
@serving
def order_lifecycle(event):
    return expiry_and_outbox.handle_lifecycle(event.to_dict(), event.context)


@app.schedule(Rate(1, unit=Rate.MINUTES), name="flash_reconcile",
              description="Compare the flash-sale gates in Redis with MySQL and repair them")
@serving
def flash_reconcile(event):
    return {"sales": bootstrap.flash_admin().reconcile_all()}


@app.lambda_function(name="migrate")
@serving
def migrate_schema(event, context):
    return migrate_function.handle_migrate(event, context)

