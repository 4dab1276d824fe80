"""Composition root: builds each client lazily, once per process, so warm
Lambda invocations reuse connections and a cold start pays only for what it uses."""
import os
import threading

from chalicelib.ops import metrics
from chalicelib.settings import DEFAULTS, Settings, get_settings, reset_settings

_lock = threading.RLock()
_instances = {}
_overrides = {}  # setting name -> value, on top of the environment (see reset)


def _once(name, factory):
    instance = _instances.get(name)
    if instance is None:
        with _lock:
            instance = _instances.get(name)
            if instance is None:
                instance = _instances[name] = factory()
    return instance


def settings():
    if _overrides:
        return _once("settings", lambda: Settings({**os.environ, **_overrides}))
    return get_settings()


def database():
    from chalicelib.adapters.db import Database

    s = settings()
    return _once("db", lambda: Database(
        s.database,
        connect_timeout=s.number("DB_CONNECT_TIMEOUT"),
        read_timeout=s.number("DB_READ_TIMEOUT"),
        max_in_flight=int(s.number("DB_MAX_IN_FLIGHT")),
    ))


def readers():
    """Where reads that may lag go: DATABASE_READER_URL's reader while it is up and close behind, else the writer."""
    from dataclasses import replace

    from chalicelib.adapters.db import Database
    from chalicelib.adapters.readers import Readers
    from chalicelib.settings import parse_database_url

    def build():
        s = settings()
        url = s.get("DATABASE_READER_URL")
        if not url:
            return Readers(database())
        given = parse_database_url(url)
        writer = s.database   # the reader takes the writer's credentials unless its URL names a user
        target = replace(writer, host=given.host, port=given.port, database=given.database,
                         **({"user": given.user, "password": given.password} if "@" in url else {}))
        reader = Database(target, connect_timeout=s.number("DB_CONNECT_TIMEOUT"),
                          read_timeout=s.number("DB_READ_TIMEOUT"), max_in_flight=int(s.number("DB_MAX_IN_FLIGHT")),
                          name="mysql-reader")
        return Readers(database(), reader, max_lag_ms=s.number("READER_MAX_LAG_MS"),
                       clock_skew_ms=s.number("READER_CLOCK_SKEW_MS"), metrics=metrics.emit)

    return _once("readers", build)


def redis_gateway():
    """The cache Redis: copies it may evict, and the fences and search generation that guard them."""
    from chalicelib.adapters.cache import RedisGateway

    s = settings()
    return _once("redis", lambda: RedisGateway(s.redis_url, timeout=s.number("REDIS_TIMEOUT"),
                                               prefix=s.get("REDIS_KEY_PREFIX"), ca_file=s.tls_ca_file))


def state_gateway():
    """The state Redis (noeviction): what a rule depends on, so what a cache flood must not evict."""
    from chalicelib.adapters.cache import RedisGateway

    s = settings()
    return _once("redis_state", lambda: RedisGateway(s.redis_state_url, timeout=s.number("REDIS_TIMEOUT"),
                                                     prefix=s.get("REDIS_KEY_PREFIX"), ca_file=s.tls_ca_file))


def product_cache():
    from chalicelib.adapters.cache import ProductCache

    s = settings()
    return _once("product_cache", lambda: ProductCache(
        redis_gateway(), ttl_seconds=s.number("CACHE_TTL_SECONDS"), stale_seconds=int(s.number("CACHE_STALE_SECONDS"))
    ))


def search_generation():
    from chalicelib.adapters.cache import SearchGeneration

    return _once("search_generation", lambda: SearchGeneration(redis_gateway()))


def publisher():
    from chalicelib.adapters.queues import QueuePublisher

    s = settings()
    return _once("publisher", lambda: QueuePublisher(s.aws_endpoint_url, s.region))


def invalidator():
    from chalicelib.service.invalidation import Invalidator

    s = settings()
    return _once("invalidator", lambda: Invalidator(
        product_cache(), publisher(), s.get("INVALIDATION_QUEUE_NAME")
    ))


def product_writes():
    from chalicelib.adapters.order_repository import StockLowEvents
    from chalicelib.adapters.search_mysql import MySQLSearchBackend
    from chalicelib.adapters.product_writes import ProductWrites

    return _once("product_writes", lambda: ProductWrites(database(), invalidator(), MySQLSearchBackend(database()),
                                                         StockLowEvents()))


def catalog():
    from chalicelib.adapters.product_reads import MySQLProductReads
    from chalicelib.service.catalog import Catalog

    return _once("catalog", lambda: Catalog(product_reads(), product_cache(), product_writes(),
                                            lagging_reads(MySQLProductReads)))


def product_reads():
    from chalicelib.adapters.product_reads import MySQLProductReads

    return _once("product_reads", lambda: MySQLProductReads(database()))


def lagging_reads(make):
    """The read port `make(db)` on the MySQL reader while it is usable, or None without one."""
    from chalicelib.adapters.readers import RoutedReads

    reads = readers()
    return RoutedReads(reads, make) if reads.reader is not None else None


def search_service():
    from chalicelib.adapters.search_mysql import MySQLSearchBackend
    from chalicelib.domain.search_query import CursorSigner
    from chalicelib.service.search import SearchService

    s = settings()
    def build():
        limit = int(s.number("SEARCH_TIME_LIMIT_MS"))
        reads = readers()
        return SearchService(
            MySQLSearchBackend(database(), time_limit_ms=limit),
            redis_gateway(), search_generation(), state_gateway(), CursorSigner(s.cursor_secret),
            ttl_seconds=s.number("SEARCH_TTL_SECONDS"), stale_seconds=s.number("CACHE_STALE_SECONDS"),
            budget_ms=int(s.number("SEARCH_BUDGET_MS")), readers=reads,
            reader_backend=MySQLSearchBackend(reads.stamped, time_limit_ms=limit) if reads.reader else None)

    return _once("search_service", build)


def warm_caches(**options):
    from chalicelib.service.search import warm_caches as warm

    return warm(catalog(), product_reads(), search_service(), **options)


def batch_store():
    from chalicelib.adapters.batch_store import BatchStore

    return _once("batch_store", lambda: BatchStore(database()))


def event_publisher():
    """The outbox relay's SNS publisher, or None when no topic is configured (events wait)."""
    from chalicelib.adapters.queues import EventPublisher

    s = settings()
    arn = s.get("ORDER_EVENTS_TOPIC_ARN")
    return _once("event_publisher", lambda: EventPublisher(s.aws_endpoint_url, s.region, arn)) if arn else None


def notifier():
    """The notification consumer (chalicelib/service/notifications.py)."""
    from chalicelib.adapters.mailer import SesMailer
    from chalicelib.adapters.notification_log import MySQLNotificationLog
    from chalicelib.service.notifications import Notifier

    s = settings()
    return _once("notifier", lambda: Notifier(
        MySQLNotificationLog(database()), SesMailer(s.aws_endpoint_url, s.region, s.get("NOTIFY_FROM_EMAIL")),
        s.get("OPERATOR_EMAIL")))


def expiry_timers():
    """Per-order expiry timers on the expiry queue (chalicelib/service/expiry_and_outbox.py)."""
    from chalicelib.service.expiry_and_outbox import ExpiryTimers

    return _once("expiry_timers", lambda: ExpiryTimers(publisher(), settings().get("EXPIRY_QUEUE_NAME")))


def outbox():
    """The relay's outbox, the consumers' dedupe records and the payment clock (service/expiry_and_outbox.py)."""
    from chalicelib.adapters.outbox import MySQLOutbox

    return _once("outbox", lambda: MySQLOutbox(database()))


def customer_directory():
    from chalicelib.adapters.customer_directory import CustomerDirectory

    return _once("customer_directory", lambda: CustomerDirectory(database()))


def async_batches():
    from chalicelib.service.async_orders import AsyncBatches

    return _once("async_batches", lambda: AsyncBatches(publisher(), batch_store(), settings().get("ORDER_QUEUE_NAME")))


def order_ingest():
    from chalicelib.service.async_orders import OrderIngest

    return _once("order_ingest", lambda: OrderIngest(orders(), batch_store()))


def metrics_gateway():
    """A Redis gateway of its own for the metrics window (same Redis and key
    prefix as the cache): a failing metrics write never trips the cache's breaker."""
    from chalicelib.adapters.cache import RedisGateway

    s = settings()
    return _once("metrics_redis", lambda: RedisGateway(s.redis_url, timeout=s.number("REDIS_TIMEOUT"),
                                                       prefix=s.get("REDIS_KEY_PREFIX"), max_connections=8,
                                                       ca_file=s.tls_ca_file))


metrics.METRICS.gateway_factory = metrics_gateway
# The shared window in Redis is the local stack's view; in AWS the numbers are in CloudWatch.
metrics.METRICS.shared = lambda: settings().stage == "local"


def deployment_problems():
    """Settings.misconfiguration(), worked out once per process (and per reset)."""
    return _once("deployment_problems", lambda: settings().misconfiguration())


def reset(**overrides):
    """Forget every client. The next ones are built from the environment plus
    `overrides` (setting name -> value), so a test builds the setup it needs
    (a dead MySQL, a throwaway Redis) without touching os.environ."""
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
    with _lock:
        for name in ("db", "redis", "redis_state", "metrics_redis"):
            client = _instances.get(name)
            if client is not None:
                client.close()
        if _instances.get("readers") is not None and _instances["readers"].reader is not None:
            _instances["readers"].reader.close()
        _instances.clear()
        reset_settings()
        _overrides.clear()
        _overrides.update({name: str(value) for name, value in overrides.items()})


def rate_limiter():
    from chalicelib.adapters.ratelimit import RateLimiter

    return _once("rate_limiter", lambda: RateLimiter(state_gateway(), settings().plans))


def inventory_strategy(name=None):
    from chalicelib.adapters.inventory import make_strategy

    name = name or settings().inventory_strategy
    return _once(f"strategy:{name}", lambda: make_strategy(name, state_gateway()))


def orders(strategy_name=None):
    strategy = inventory_strategy(strategy_name)
    return _once(f"orders:{strategy.name}", lambda: _order_service(strategy))


def _order_service(strategy):
    from chalicelib.adapters.order_repository import MySQLOrderRepository
    from chalicelib.domain.order_lifecycle import PaymentWindows
    from chalicelib.service.batch_writer import BatchWriter
    from chalicelib.service.orders import OrderService

    s = settings()
    windows = PaymentWindows(int(s.number("ORDER_PAYMENT_WINDOW_SECONDS")),
                             int(s.number("CUSTOMER_PAYMENT_WINDOW_SECONDS")))
    return OrderService(database(), strategy, product_writes(), MySQLOrderRepository,
                        max_in_flight=int(s.number("ORDERS_MAX_IN_FLIGHT")),
                        payment_window=windows.trusted, customer_payment_window=windows.customer,
                        flash=flash_sales(), customer_limits=customer_limits(),
                        batch_writer=BatchWriter(MySQLOrderRepository, customer_limits=customer_limits(),
                                                 payment_windows=windows))


def customer_limits():
    """A customer's caps (domain/customer_limits.py) as configured."""
    from chalicelib.domain.customer_limits import CustomerLimits

    s = settings()
    return _once("customer_limits", lambda: CustomerLimits(
        units_per_product=int(s.number("CUSTOMER_MAX_UNITS_PER_PRODUCT")),
        unpaid_units=int(s.number("CUSTOMER_MAX_UNPAID_UNITS"))))


def flash_gate():
    from chalicelib.adapters.flash_gate import FlashGate

    return _once("flash_gate", lambda: FlashGate(state_gateway(), lease_ms=int(settings().number("FLASH_LEASE_MS"))))


def flash_sales_on_record():
    """MySQL's list of sales as this process sees it: one, shared by the admission and sale mode."""
    from chalicelib.service.flash_sales import SalesOnRecord

    return _once("flash_sales_on_record", lambda: SalesOnRecord(sale_records()))


def sale_records():
    from chalicelib.adapters.sale_records import MySQLSaleRecords

    return _once("sale_records", lambda: MySQLSaleRecords(database()))


def flash_sales():
    from chalicelib.service.flash_sales import FlashSales

    return _once("flash_sales", lambda: FlashSales(sale_records(), flash_gate(), flash_sales_on_record(), publisher(),
                                                   settings().get("FLASH_QUEUE_NAME")))


def flash_admin():
    from chalicelib.service.flash_admin import FlashSaleAdmin

    return _once("flash_admin", lambda: FlashSaleAdmin(sale_records(), flash_gate(), flash_sales_on_record(),
                                                       publisher(), settings().get("FLASH_QUEUE_NAME")))


def flash_writer():
    from chalicelib.service.flash_writer import FlashWriter

    from chalicelib.adapters.order_repository import MySQLOrderRepository

    return _once("flash_writer", lambda: FlashWriter(
        flash_gate(), product_writes(), MySQLOrderRepository, payment_window=int(settings().number("ORDER_PAYMENT_WINDOW_SECONDS")),
        customer_payment_window=int(settings().number("CUSTOMER_PAYMENT_WINDOW_SECONDS"))))


def related_products():
    from chalicelib.adapters.pair_counts import MySQLPairCounts
    from chalicelib.service.related import RelatedProducts

    s = settings()
    return _once("related_products", lambda: RelatedProducts(MySQLPairCounts(database()), redis_gateway(), catalog(),
                                                             ttl_seconds=s.number("RELATED_TTL_SECONDS"),
                                                             lagging=lagging_reads(MySQLPairCounts)))
