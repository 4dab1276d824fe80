"""One place for configuration.

Precedence: process environment > `.chalice/config.json` stage values >
its top-level values > built-in defaults. In Lambda the config file is not
deployed; Chalice has already turned it into environment variables.
"""
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

PROJECT_DIR = Path(__file__).resolve().parent.parent
CONFIG_FILE = PROJECT_DIR / ".chalice" / "config.json"
PLANS_FILE = Path(__file__).resolve().parent / "usage_plans.json"
AWS_CA_BUNDLE = Path(__file__).resolve().parent / "certs" / "aws-trust.pem"


@dataclass(frozen=True)
class QueueDef:
    """One SQS queue of the shop. This table feeds app.py's consumers, the
    local pollers, the local endpoint's queue setup and the package step."""
    setting: str             # the setting (environment variable) naming the queue
    default_name: str        # its name when the setting is not given
    handler: str             # the SQS consumer in app.py
    logical_id: str          # its resource in infra/template.yml
    max_receive_count: int = 5  # deliveries before the DLQ
    # The setting naming the SNS topic this queue is subscribed to (raw message
    # delivery); empty: nothing publishes to it through a topic.
    topic_setting: str = ""
    # Only these `event_type` message attributes reach the queue (an SNS filter policy); empty: every event.
    event_types: tuple = ()


QUEUES = (
    QueueDef("ORDER_QUEUE_NAME", "shop-order-ingest", "handle_order_ingest", "OrderIngestQueue"),
    QueueDef("INVALIDATION_QUEUE_NAME", "shop-cache-invalidation", "handle_cache_invalidation",
             "CacheInvalidationQueue"),
    QueueDef("FLASH_QUEUE_NAME", "shop-flash-orders", "handle_flash_orders", "FlashOrderQueue"),
    QueueDef("EXPIRY_QUEUE_NAME", "shop-order-expiry", "handle_order_expiry", "OrderExpiryQueue"),
    # Co-purchase counts ("bought together") from the order events the outbox relay publishes.
    QueueDef("RELATED_QUEUE_NAME", "shop-related-products", "handle_related_products", "RelatedProductsQueue",
             topic_setting="ORDER_EVENTS_TOPIC_ARN",
             event_types=("order.created", "order.cancelled", "order.expired")),
    QueueDef("NOTIFY_QUEUE_NAME", "shop-notifications", "handle_notifications", "NotificationQueue",
             topic_setting="ORDER_EVENTS_TOPIC_ARN",
             event_types=("order.created", "order.paid", "order.cancelled", "order.expired", "stock.low")),
)



# Only for the local stage: misconfiguration() refuses it anywhere else.
LOCAL_CURSOR_SECRET = "shop-local-cursor-secret"


def queue_names(prefix):
    """Every queue's setting -> `<prefix>-<name>`: a private set of queues (tests, benches)."""
    return {q.setting: f"{prefix}-{q.default_name.removeprefix('shop-')}" for q in QUEUES}


DEFAULTS = {
    "STAGE": "local",
    "DATABASE_URL": "mysql://root:@127.0.0.1:3306/shop",
    # The cache Redis (evicts under memory pressure): product copies, search pages, fences, the search generation.
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    # The state Redis (never evicts): rate buckets, search budgets, flash sales, redis_lock locks.
    # Empty: the cache Redis holds the state too (the local default; the roles' key names never overlap).
    "REDIS_STATE_URL": "",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:4566",
    "AWS_DEFAULT_REGION": "us-east-1",
    "INVENTORY_STRATEGY": "guarded",
    "APP_RATE_LIMIT": "true",
    "APP_API_KEYS": "true",
    # In AWS: "<API Gateway key id>=<client>,..." (the package fills it); see chalicelib/domain/clients.py.
    "API_KEY_CLIENTS": "",
    # Customer tokens (Cognito user pool). APP_VERIFY_TOKENS: the app checks the
    # token itself (locally); in AWS API Gateway's Cognito authorizer has.
    "COGNITO_USER_POOL_ID": "",
    "COGNITO_APP_CLIENT_IDS": "",
    "APP_VERIFY_TOKENS": "true",
    "PORT": "8000",
    "DATABASE_SECRET_ARN": "",
    # Only the migrate function's: the app user it creates (secret's username and password).
    "APP_DATABASE_SECRET_ARN": "",
    "DATABASE_HOST": "",
    "DATABASE_PORT": "3306",
    "DATABASE_NAME": "shop",
    "DATABASE_TLS": "false",
    # CAs that TLS peers (RDS Proxy, ElastiCache) must chain to; empty: the
    # Amazon roots shipped in the package (scripts/aws_ca_bundle.py).
    "TLS_CA_FILE": "",
    "DB_CONNECT_TIMEOUT": "2",
    "DB_READ_TIMEOUT": "10",
    "DB_MAX_IN_FLIGHT": "16",
    # A MySQL reader for search, product and related reads (adapters/readers.py); empty: the writer serves them.
    # In AWS the user and password are DATABASE_SECRET_ARN's. Past READER_MAX_LAG_MS behind, reads use the writer.
    "DATABASE_READER_URL": "",
    "READER_MAX_LAG_MS": "2500",
    "READER_CLOCK_SKEW_MS": "100",
    "ORDERS_MAX_IN_FLIGHT": "8",
    # Seconds a trusted server's new order waits for payment (pending_payment, then expired); 0: final (paid) at
    # creation.
    "ORDER_PAYMENT_WINDOW_SECONDS": "0",
    # Seconds an order placed with a customer token waits for payment; never 0 (see AT_LEAST_ONE).
    "CUSTOMER_PAYMENT_WINDOW_SECONDS": "900",
    # A customer's caps (domain/customer_limits.py): units of one product in one order (its lines merged),
    # and units held in their orders waiting for payment, across every client's app.
    "CUSTOMER_MAX_UNITS_PER_PRODUCT": "50",
    "CUSTOMER_MAX_UNPAID_UNITS": "100",
    # The SNS topic order events are published to (the package sets it; make run creates a local one).
    "ORDER_EVENTS_TOPIC_ARN": "",
    # Notifications (service/notifications.py): the verified SES sender, and who gets stock.low (empty: nobody).
    "NOTIFY_FROM_EMAIL": "shop@example.com",
    "OPERATOR_EMAIL": "",
    "REDIS_TIMEOUT": "0.25",
    "REDIS_KEY_PREFIX": "",
    # Only for running a cloud stage's package against this machine's services (the artifact test):
    # loopback hosts for the database, Redis and the AWS endpoint; every other check still applies.
    "ALLOW_LOOPBACK_ENDPOINTS": "false",
    "CACHE_TTL_SECONDS": "300",
    "CACHE_STALE_SECONDS": "86400",
    "SEARCH_TTL_SECONDS": "60",
    # How long a product's "bought together" ranking is cached: new co-purchases show within it.
    "RELATED_TTL_SECONDS": "30",
    # Server-side limit on all statements of one search together; below DB_READ_TIMEOUT.
    "SEARCH_TIME_LIMIT_MS": "1500",
    # Database milliseconds of uncached searches per API key per minute (0: no budget).
    "SEARCH_BUDGET_MS": "30000",
    # How long a flash-sale reservation may stay between the gate and SQS before its units come back.
    "FLASH_LEASE_MS": "30000",
    # The key search cursors are signed with; in AWS a generated secret (CURSOR_SECRET_ARN) instead.
    "CURSOR_SECRET": LOCAL_CURSOR_SECRET,
    "CURSOR_SECRET_ARN": "",
}
DEFAULTS.update({q.setting: q.default_name for q in QUEUES})
# Whole numbers of at least 1 in every stage, or the deployment refuses to serve: a customer's
# payment window of 0 would make their orders final at creation, holding stock nobody pays for,
# and a cap of 0 would refuse every customer's order.
AT_LEAST_ONE = ("CUSTOMER_PAYMENT_WINDOW_SECONDS", "CUSTOMER_MAX_UNITS_PER_PRODUCT", "CUSTOMER_MAX_UNPAID_UNITS")


def _config_file_values(stage):
    if not CONFIG_FILE.exists():
        return {}
    config = json.loads(CONFIG_FILE.read_text())
    values = dict(config.get("environment_variables", {}))
    values.update(config.get("stages", {}).get(stage, {}).get("environment_variables", {}))
    return values


def _is_local_host(host):
    return not host or host == "localhost" or host.startswith("127.") or host in ("::1", "0.0.0.0")


def _truthy(value):
    return str(value).strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class MySQLTarget:
    host: str
    port: int
    user: str
    password: str
    database: str
    tls: bool = False
    ca_file: str = ""


def _read_secret_string(arn, region):
    import boto3  # lazy: only the cloud stages read secrets

    return boto3.client("secretsmanager", region_name=region).get_secret_value(SecretId=arn)["SecretString"]


def _read_secret(arn, region):
    return json.loads(_read_secret_string(arn, region))


def parse_database_url(url, tls=False, ca_file=""):
    parsed = urlparse(url)
    if parsed.scheme not in ("mysql", "mysql+pymysql", "mariadb"):
        raise ValueError(f"DATABASE_URL must start with mysql://, got {url!r}")
    return MySQLTarget(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or 3306,
        user=unquote(parsed.username or "root"),
        password=unquote(parsed.password or ""),
        database=(parsed.path or "/shop").lstrip("/") or "shop",
        tls=tls,
        ca_file=ca_file,
    )


class Settings:
    def __init__(self, environ=None):
        environ = os.environ if environ is None else environ
        stage = environ.get("STAGE") or DEFAULTS["STAGE"]
        merged = dict(DEFAULTS)
        merged.update(_config_file_values(stage))
        self._explicit = {k: v for k, v in environ.items() if k in DEFAULTS}
        merged.update(self._explicit)
        self.values = merged
        self.stage = stage

    def get(self, name):
        return self.values.get(name)

    @property
    def database(self):
        """Where MySQL is. In AWS the credentials come from Secrets Manager
        (DATABASE_SECRET_ARN) and the host is the RDS Proxy endpoint."""
        if self.values.get("DATABASE_SECRET_ARN") and "DATABASE_URL" not in self._explicit:
            secret = _read_secret(self.values["DATABASE_SECRET_ARN"], self.region)
            return MySQLTarget(
                host=self.values["DATABASE_HOST"],
                port=int(self.values["DATABASE_PORT"]),
                user=secret["username"],
                password=secret["password"],
                database=self.values["DATABASE_NAME"],
                tls=_truthy(self.values["DATABASE_TLS"]),
                ca_file=self.tls_ca_file,
            )
        return parse_database_url(self.values["DATABASE_URL"], tls=_truthy(self.values["DATABASE_TLS"]),
                                  ca_file=self.tls_ca_file)

    @property
    def app_database_user(self):
        """(user, password) the migrate function gives the application, or None."""
        if not self.values.get("APP_DATABASE_SECRET_ARN"):
            return None
        secret = _read_secret(self.values["APP_DATABASE_SECRET_ARN"], self.region)
        return secret["username"], secret["password"]

    @property
    def tls_ca_file(self):
        return self.values["TLS_CA_FILE"] or str(AWS_CA_BUNDLE)

    @property
    def redis_url(self):
        return self.values["REDIS_URL"]

    @property
    def redis_state_url(self):
        return self.values["REDIS_STATE_URL"] or self.values["REDIS_URL"]

    @property
    def cursor_secret(self):
        """The key search cursors are signed with: the generated secret in AWS, else CURSOR_SECRET."""
        if self.values["CURSOR_SECRET_ARN"] and "CURSOR_SECRET" not in self._explicit:
            return _read_secret_string(self.values["CURSOR_SECRET_ARN"], self.region)
        return self.values["CURSOR_SECRET"]

    @property
    def aws_endpoint_url(self):
        return self.values["AWS_ENDPOINT_URL"] or None

    @property
    def region(self):
        return self.values["AWS_DEFAULT_REGION"]

    @property
    def inventory_strategy(self):
        return self.values["INVENTORY_STRATEGY"]

    @property
    def rate_limit_enabled(self):
        return _truthy(self.values["APP_RATE_LIMIT"])

    @property
    def api_keys_enabled(self):
        return _truthy(self.values["APP_API_KEYS"])

    def misconfiguration(self):
        """Why this configuration must not serve (empty when it may): in every stage, a
        setting of AT_LEAST_ONE below 1; outside the local stage, or in Lambda, anything
        pointing at a local default. ALLOW_LOOPBACK_ENDPOINTS (a cloud stage's package run
        against this machine's services) lets the database, Redis and the AWS endpoint be
        loopback hosts, and nothing else: the local API keys stay refused."""
        problems = [f"{name} is {self.values[name]!r}, not a whole number of at least 1" for name in AT_LEAST_ONE
                    if not re.fullmatch(r"\s*[0-9]+\s*", str(self.values[name])) or int(self.values[name]) < 1]
        in_lambda = bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME")) and not os.environ.get("AWS_CHALICE_CLI_MODE")
        if self.stage == "local" and not in_lambda:
            return problems
        if self.stage == "local":
            problems.append("STAGE is 'local' (unset?) in a Lambda function")
        if not _truthy(self.values["ALLOW_LOOPBACK_ENDPOINTS"]):
            problems += self._loopback_endpoints()
        state_url = self.values["REDIS_STATE_URL"]
        if not state_url or state_url == self.values["REDIS_URL"]:
            problems.append("REDIS_STATE_URL is unset or the cache's: flash sales and rate limits would live in "
                            "a Redis that evicts")
        if not self.values["CURSOR_SECRET_ARN"] and self.values["CURSOR_SECRET"] in ("", LOCAL_CURSOR_SECRET):
            problems.append("search cursors would be signed with the local dev secret (set CURSOR_SECRET_ARN)")
        if self.api_keys_enabled:
            problems.append("APP_API_KEYS is on: the app would accept the local keys of usage_plans.json")
        return problems

    def _loopback_endpoints(self):
        """The database, Redis and the AWS endpoint that are this machine (local defaults)."""
        problems = []
        if self.values.get("DATABASE_SECRET_ARN") and "DATABASE_URL" not in self._explicit:
            db_host = self.values.get("DATABASE_HOST") or ""
        else:
            db_host = urlparse(self.values["DATABASE_URL"]).hostname or ""
        if _is_local_host(db_host):
            problems.append(f"the database is {db_host or 'unset'} (a local default)")
        reader_host = urlparse(self.values["DATABASE_READER_URL"]).hostname or ""
        if self.values["DATABASE_READER_URL"] and _is_local_host(reader_host):
            problems.append(f"the database reader is {reader_host} (a local default)")
        redis_host = urlparse(self.values["REDIS_URL"]).hostname or ""
        if _is_local_host(redis_host):
            problems.append(f"Redis is {redis_host or 'unset'} (a local default)")
        state_host = urlparse(self.values["REDIS_STATE_URL"]).hostname or ""
        if self.values["REDIS_STATE_URL"] and _is_local_host(state_host):
            problems.append(f"the state Redis is {state_host} (a local default)")
        endpoint = self.values.get("AWS_ENDPOINT_URL") or ""
        if endpoint and _is_local_host(urlparse(endpoint).hostname or ""):
            problems.append(f"AWS_ENDPOINT_URL is {endpoint} (the local AWS endpoint)")
        return problems

    def number(self, name):
        return float(self.values[name])

    @property
    def plans(self):
        return load_plans()["plans"]

    @property
    def clients(self):
        return client_registry()

    @property
    def verify_tokens(self):
        return _truthy(self.values["APP_VERIFY_TOKENS"])

    @property
    def token_issuer(self):
        """The `iss` of the pool's tokens (the local endpoint's Cognito uses the AWS form too)."""
        pool = self.values["COGNITO_USER_POOL_ID"]
        return f"https://cognito-idp.{self.region}.amazonaws.com/{pool}" if pool else ""

    @property
    def token_keys_url(self):
        """Where the pool publishes its signing keys (JWKS)."""
        pool = self.values["COGNITO_USER_POOL_ID"]
        base = self.aws_endpoint_url.rstrip("/") if self.aws_endpoint_url else self.token_issuer.rsplit("/", 1)[0]
        return f"{base}/{pool}/.well-known/jwks.json" if pool else ""

    @property
    def token_audiences(self):
        return [c.strip() for c in self.values["COGNITO_APP_CLIENT_IDS"].split(",") if c.strip()]

    @property
    def api_key_clients(self):
        from chalicelib.domain.clients import parse_key_clients

        return parse_key_clients(self.values["API_KEY_CLIENTS"])


_plans_cache = (None, None)


def load_plans():
    """chalicelib/usage_plans.json, read again when it changes (a local key
    revoked with scripts/clients.py stops working without a restart)."""
    global _plans_cache
    mtime = PLANS_FILE.stat().st_mtime_ns
    if _plans_cache[0] != mtime:
        _plans_cache = (mtime, json.loads(PLANS_FILE.read_text()))
    return _plans_cache[1]


_registry_cache = (None, None)


def client_registry():
    global _registry_cache
    from chalicelib.domain.clients import ClientRegistry

    definitions = load_plans()
    if _registry_cache[0] is not definitions:
        _registry_cache = (definitions, ClientRegistry(definitions))
    return _registry_cache[1]


_settings = None


def get_settings():
    global _settings
    if _settings is None:
        _settings = Settings()
    return _settings


def reset_settings():
    global _settings
    _settings = None
