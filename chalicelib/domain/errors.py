"""Business errors with stable codes; `app.py` maps them to the docs/api.md error body."""


class ShopError(Exception):
    status = 500
    code = "INTERNAL"

    def __init__(self, message, **extra):
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self):
        error = {"code": self.code, "message": self.message}
        error.update(self.extra)
        return {"error": error}


class ValidationError(ShopError):
    status, code = 400, "VALIDATION_ERROR"


class Forbidden(ShopError):
    status, code = 403, "FORBIDDEN"


class Unauthorized(ShopError):
    """A customer route without a valid customer token (expired, forged, another pool or app)."""
    status, code = 401, "UNAUTHORIZED"


class NotFound(ShopError):
    status, code = 404, "NOT_FOUND"


class ProductNotFound(NotFound):
    code = "PRODUCT_NOT_FOUND"


class OrderNotFound(NotFound):
    code = "ORDER_NOT_FOUND"


class BatchNotFound(NotFound):
    code = "BATCH_NOT_FOUND"


class ReservationNotFound(NotFound):
    code = "RESERVATION_NOT_FOUND"


class SaleNotFound(NotFound):
    code = "SALE_NOT_FOUND"


class MethodNotAllowed(ShopError):
    status, code = 405, "METHOD_NOT_ALLOWED"


class UnsupportedMediaType(ShopError):
    status, code = 415, "UNSUPPORTED_MEDIA_TYPE"


class DuplicateSku(ShopError):
    status, code = 409, "DUPLICATE_SKU"


class VersionConflict(ShopError):
    status, code = 409, "VERSION_CONFLICT"


class InsufficientStock(ShopError):
    status, code = 409, "INSUFFICIENT_STOCK"


class SaleConflict(ShopError):
    """The product is already on sale (stop the sale first)."""
    status, code = 409, "SALE_CONFLICT"


class SaleLimitExceeded(ShopError):
    """A flash-sale order would take the customer past the sale's per-customer limit."""
    status, code = 409, "SALE_LIMIT_EXCEEDED"


class QuantityLimitExceeded(ShopError):
    """A customer's order past a per-customer cap (units of one product in an order, units held
    unpaid); `details` carries the limit."""
    status, code = 409, "QUANTITY_LIMIT_EXCEEDED"


class IdempotencyConflict(ShopError):
    status, code = 409, "IDEMPOTENCY_CONFLICT"


# Lifecycle transitions an order's state forbids (chalicelib/domain/order_lifecycle.py).
class OrderExpired(ShopError):
    status, code = 409, "ORDER_EXPIRED"


class OrderCancelled(ShopError):
    status, code = 409, "ORDER_CANCELLED"


class AlreadyPaid(ShopError):
    status, code = 409, "ALREADY_PAID"


class OrderNotPaid(ShopError):
    status, code = 409, "ORDER_NOT_PAID"


class OrderFulfilled(ShopError):
    status, code = 409, "ORDER_FULFILLED"


class PaymentReferenceUsed(ShopError):
    """The payment reference already paid another order."""
    status, code = 409, "PAYMENT_REFERENCE_USED"


class PayloadTooLarge(ShopError):
    status, code = 413, "PAYLOAD_TOO_LARGE"


class RateLimited(ShopError):
    status, code = 429, "RATE_LIMITED"

    def __init__(self, message, retry_after=1, **extra):
        super().__init__(message, **extra)
        self.retry_after = retry_after


class ServiceUnavailable(ShopError):
    """A dependency is down; the client should retry after `retry_after` seconds."""

    status, code = 503, "SERVICE_UNAVAILABLE"

    def __init__(self, message, retry_after=2, **extra):
        super().__init__(message, **extra)
        self.retry_after = retry_after


class StatementTimeout(ServiceUnavailable):
    """The server stopped a statement at its time limit (a search too costly
    for now): the server is fine, so this is no outage and trips no breaker."""

    def __init__(self, time_limit_ms):
        super().__init__(f"The search took longer than its time limit of {time_limit_ms} ms and was stopped; "
                         "narrow it (more specific words, a category or a price range) or retry later.",
                         details={"reason": "time_limit", "time_limit_ms": time_limit_ms})


class ConcurrencyExhausted(ServiceUnavailable):
    """Optimistic retries or deadlock retries ran out: transient, safe to retry."""


# Raised by the adapters in place of their drivers' errors, so a service speaks neither pymysql nor redis.
class DuplicateKey(Exception):
    """A row with the same unique key exists (MySQL's error 1062). The transaction
    is still usable: only the statement failed."""


class DuplicateOrderKey(DuplicateKey):
    """OrderRepository.add_many met an idempotency key another transaction committed after the caller looked."""


class CacheUnavailable(Exception):
    """Redis (the cache or the state store) did not answer, or its breaker is open."""


class NothingSent(Exception):
    """An SQS send failed before any of its attempts could reach SQS (each one failed to connect, or
    SQS answered with a refusal): none of its messages is on the queue. Any other failure of a send
    may have left some on it."""


class StoreFull(CacheUnavailable):
    """Redis answered OOM: a `noeviction` store at maxmemory refuses writes. It is up (the
    breaker is not told otherwise); a caller that guards a rule must refuse rather than skip it."""
