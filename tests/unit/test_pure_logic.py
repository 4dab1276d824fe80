"""Unit tests of pure logic: no services."""
import os

import pytest

from chalicelib.adapters.breaker import CircuitBreaker, CircuitOpen
from chalicelib.domain.errors import PayloadTooLarge, ValidationError
from chalicelib.domain.orders import InvalidOrder, OrderRequest, parse_batch
from chalicelib.settings import LOCAL_CURSOR_SECRET, Settings, parse_database_url
from chalicelib.domain import validation as v


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_breaker_opens_after_threshold_and_lets_one_probe_through():
    clock = FakeClock()
    breaker = CircuitBreaker("x", failure_threshold=2, reset_after=1.0, clock=clock)
    breaker.before_call()
    breaker.record_failure()
    breaker.before_call()
    breaker.record_failure()
    assert breaker.state == "open"
    with pytest.raises(CircuitOpen):
        breaker.before_call()
    clock.now = 1.5
    breaker.before_call()  # the probe
    with pytest.raises(CircuitOpen):
        breaker.before_call()  # only one probe at a time
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now = 3.0
    breaker.before_call()
    breaker.record_success()
    assert breaker.state == "closed"
    breaker.before_call()


def test_parse_batch_merges_duplicate_lines_in_id_order():
    [order] = parse_batch({"orders": [{"client_order_id": "a", "user_id": 1, "items": [
        {"product_id": 9, "quantity": 1}, {"product_id": 3, "quantity": 2}, {"product_id": 9, "quantity": 4}]}]})
    assert isinstance(order, OrderRequest)
    assert list(order.quantities.items()) == [(3, 2), (9, 5)]


def test_request_hash_ignores_line_order_but_not_quantities():
    def parsed(items):
        return parse_batch({"orders": [{"client_order_id": "a", "user_id": 1, "items": items}]})[0]

    one = parsed([{"product_id": 1, "quantity": 1}, {"product_id": 2, "quantity": 1}])
    same = parsed([{"product_id": 2, "quantity": 1}, {"product_id": 1, "quantity": 1}])
    other = parsed([{"product_id": 1, "quantity": 2}, {"product_id": 2, "quantity": 1}])
    assert one.request_hash == same.request_hash != other.request_hash


def test_invalid_order_keeps_its_client_order_id():
    [bad] = parse_batch({"orders": [{"client_order_id": "keep", "user_id": "x", "items": []}]})
    assert isinstance(bad, InvalidOrder) and bad.client_order_id == "keep"
    assert "user_id" in bad.error.message


@pytest.mark.parametrize("body,error", [
    ([], ValidationError), ({}, ValidationError), ({"orders": []}, ValidationError),
    ({"orders": [{}] * 101}, PayloadTooLarge), ({"orders": [], "x": 1}, ValidationError),
])
def test_whole_request_errors(body, error):
    with pytest.raises(error):
        parse_batch(body)


@pytest.mark.parametrize("value", [True, False, 1.0, "1", None, 2**60])
def test_integer_rejects_non_integers_and_huge_numbers(value):
    with pytest.raises(ValidationError):
        v.integer(value, "n", 0)


@pytest.mark.parametrize("raw", ["", "0", "-3", "1.0", "x", "١٢", "9" * 19])
def test_path_id_rejects(raw):
    with pytest.raises(ValidationError):
        v.path_id(raw)


def test_settings_environment_overrides_stage_config():
    settings = Settings({"STAGE": "local", "INVENTORY_STRATEGY": "pessimistic"})
    assert settings.inventory_strategy == "pessimistic"
    assert settings.get("DATABASE_URL") == "mysql://root:@127.0.0.1:3306/shop"  # from .chalice/config.json
    assert Settings({"STAGE": "prod"}).rate_limit_enabled is False


def test_database_url_parsing():
    target = parse_database_url("mysql://app:p%40ss@db.example:3307/shop")
    assert (target.user, target.password, target.host, target.port, target.database) == (
        "app", "p@ss", "db.example", 3307, "shop")
    with pytest.raises(ValueError):
        parse_database_url("postgres://x/y")


def test_the_composition_root_takes_overrides_without_touching_the_environment(monkeypatch):
    from chalicelib import bootstrap

    monkeypatch.delenv("CACHE_TTL_SECONDS", raising=False)
    try:
        bootstrap.reset(CACHE_TTL_SECONDS=7, INVENTORY_STRATEGY="optimistic")
        assert bootstrap.settings().get("CACHE_TTL_SECONDS") == "7"
        assert bootstrap.settings().inventory_strategy == "optimistic"
        assert "CACHE_TTL_SECONDS" not in os.environ
        bootstrap.reset()
        assert bootstrap.settings().get("CACHE_TTL_SECONDS") != "7"
        with pytest.raises(ValueError, match="CACHE_TTL_SECOND"):
            bootstrap.reset(CACHE_TTL_SECOND=1)  # a typo is refused, not ignored
    finally:
        bootstrap.reset()


# What a cloud function needs besides the database and the cache Redis: a state store and a cursor secret of its own.
STATE = {"REDIS_STATE_URL": "rediss://state.internal:6379/0", "CURSOR_SECRET_ARN": "arn:cursor-secret"}


@pytest.mark.parametrize("environ, expected", [
    ({"STAGE": "local"}, []),
    ({"STAGE": "prod", "DATABASE_URL": "mysql://u:p@db.internal:3306/shop", "REDIS_URL": "rediss://cache.internal:6379/0",
      "AWS_ENDPOINT_URL": "", "APP_API_KEYS": "false", **STATE}, []),
    ({"STAGE": "prod", "DATABASE_SECRET_ARN": "arn:secret", "DATABASE_HOST": "proxy.internal",
      "REDIS_URL": "rediss://cache.internal:6379/0", "AWS_ENDPOINT_URL": "", "APP_API_KEYS": "false", **STATE}, []),
    ({"STAGE": "prod"}, ["database", "Redis", "AWS_ENDPOINT_URL", "REDIS_STATE_URL", "cursors"]),
    ({"STAGE": "prod", "DATABASE_URL": "mysql://u:p@db.internal/shop", "REDIS_URL": "redis://cache.internal:6379/0",
      "AWS_ENDPOINT_URL": "", "APP_API_KEYS": "true", **STATE}, ["APP_API_KEYS"]),
    ({"STAGE": "prod", "DATABASE_SECRET_ARN": "arn:secret", "DATABASE_HOST": "",
      "REDIS_URL": "rediss://cache.internal:6379/0", "AWS_ENDPOINT_URL": "", "APP_API_KEYS": "false", **STATE},
     ["database"]),
    ({"STAGE": "dev", "DATABASE_URL": "mysql://u:p@db.internal/shop", "REDIS_URL": "redis://localhost:6379/0",
      "AWS_ENDPOINT_URL": "http://localhost:4566", "APP_API_KEYS": "false", **STATE}, ["Redis", "AWS_ENDPOINT_URL"]),
    # The state store: its own, not the evicting cache's, and not a loopback default.
    ({"STAGE": "prod", "DATABASE_URL": "mysql://u:p@db.internal/shop", "REDIS_URL": "rediss://cache.internal:6379/0",
      "AWS_ENDPOINT_URL": "", "APP_API_KEYS": "false", **STATE, "REDIS_STATE_URL": "rediss://cache.internal:6379/0"},
     ["REDIS_STATE_URL"]),
    ({"STAGE": "prod", "DATABASE_URL": "mysql://u:p@db.internal/shop", "REDIS_URL": "rediss://cache.internal:6379/0",
      "AWS_ENDPOINT_URL": "", "APP_API_KEYS": "false", **STATE, "REDIS_STATE_URL": "redis://127.0.0.1:6379/1"},
     ["state Redis"]),
    # Cursors: the local dev secret (named or defaulted) is refused; a secret of the deployment's own is not.
    ({"STAGE": "prod", "DATABASE_URL": "mysql://u:p@db.internal/shop", "REDIS_URL": "rediss://cache.internal:6379/0",
      "AWS_ENDPOINT_URL": "", "APP_API_KEYS": "false", **STATE, "CURSOR_SECRET_ARN": "",
      "CURSOR_SECRET": LOCAL_CURSOR_SECRET}, ["cursors"]),
    ({"STAGE": "prod", "DATABASE_URL": "mysql://u:p@db.internal/shop", "REDIS_URL": "rediss://cache.internal:6379/0",
      "AWS_ENDPOINT_URL": "", "APP_API_KEYS": "false", **STATE, "CURSOR_SECRET_ARN": "",
      "CURSOR_SECRET": "a-secret-of-this-deployment"}, []),
    # A reader on this machine is a local default too; one of the deployment's own is not.
    ({"STAGE": "prod", "DATABASE_URL": "mysql://u:p@db.internal/shop", "REDIS_URL": "rediss://cache.internal:6379/0",
      "AWS_ENDPOINT_URL": "", "APP_API_KEYS": "false", **STATE,
      "DATABASE_READER_URL": "mysql://127.0.0.1:3307/shop"}, ["database reader"]),
    ({"STAGE": "prod", "DATABASE_URL": "mysql://u:p@db.internal/shop", "REDIS_URL": "rediss://cache.internal:6379/0",
      "AWS_ENDPOINT_URL": "", "APP_API_KEYS": "false", **STATE,
      "DATABASE_READER_URL": "mysql://reader.proxy.internal/shop"}, []),
    # Loopback hosts allowed (the artifact test), nothing else: the local keys are still refused.
    ({"STAGE": "prod", "ALLOW_LOOPBACK_ENDPOINTS": "true", "APP_API_KEYS": "false", **STATE}, []),
    ({"STAGE": "prod", "ALLOW_LOOPBACK_ENDPOINTS": "true", "APP_API_KEYS": "true", **STATE}, ["APP_API_KEYS"]),
    ({"STAGE": "prod", "ALLOW_LOOPBACK_ENDPOINTS": "true", "APP_API_KEYS": "false", **STATE,
      "CUSTOMER_PAYMENT_WINDOW_SECONDS": "0"}, ["CUSTOMER_PAYMENT_WINDOW_SECONDS"]),
])
def test_a_cloud_stage_names_every_local_default_it_would_use(monkeypatch, environ, expected):
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    problems = Settings(environ).misconfiguration()
    assert len(problems) == len(expected), problems
    for problem, word in zip(problems, expected):
        assert word in problem


def test_stage_local_inside_lambda_is_refused(monkeypatch):
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "shop-prod-APIHandler")
    monkeypatch.delenv("AWS_CHALICE_CLI_MODE", raising=False)
    assert any("STAGE is 'local'" in problem for problem in Settings({}).misconfiguration())


def test_loopback_endpoints_allowed_in_lambda_still_refuse_stage_local_and_local_keys(monkeypatch):
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "shop-prod-APIHandler")
    monkeypatch.delenv("AWS_CHALICE_CLI_MODE", raising=False)
    problems = Settings({"ALLOW_LOOPBACK_ENDPOINTS": "true", **STATE}).misconfiguration()
    assert len(problems) == 2 and "STAGE is 'local'" in problems[0] and "APP_API_KEYS" in problems[1]


@pytest.mark.parametrize("raw", ["--5", "-+5", "+5", " 5", "5 ", "1e3", "٥", "0x10", "-", "1" * 19])
def test_query_int_takes_one_optional_minus_and_ascii_digits_only(raw):
    with pytest.raises(ValidationError):
        v.query_int({"limit": raw}, "limit", 20, 1, 100)


def test_query_int_accepts_plain_integers():
    assert v.query_int({"limit": "7"}, "limit", 20, 1, 100) == 7
    assert v.query_int({"limit": ""}, "limit", 20, 1, 100) == 20
    with pytest.raises(ValidationError):
        v.query_int({"limit": "-7"}, "limit", 20, 1, 100)


@pytest.mark.parametrize("raw, why", [
    ("[" * 5000 + "]" * 5000, "nested deeper"),
    ('{"a": ' * 40 + "1" + "}" * 40, "nested deeper"),
    ('{"a": "x\\ud800"}', "surrogate"),
    ('{"\\udc00": 1}', "surrogate"),
    ("{not json", "not valid JSON"),
])
def test_parse_json_rejects_what_cannot_be_handled(raw, why):
    with pytest.raises(ValidationError, match=why):
        v.parse_json(raw)


def test_parse_json_keeps_ordinary_values_and_surrogates_when_allowed():
    assert v.parse_json('{"orders": [{"items": [{"q": 1}]}]}') == {"orders": [{"items": [{"q": 1}]}]}
    assert v.parse_json('["\\ud800"]', allow_surrogates=True) == ["\ud800"]


def test_echo_is_valid_unicode_and_bounded():
    assert v.echo("abc") == "abc"
    cut = v.echo("\ud800" + "y" * 100, 64)
    assert len(cut) == 64 and cut.startswith("\ufffdy") and cut.endswith("\u2026")
    cut.encode()  # would raise on a surrogate


def test_failed_results_echo_bounded_valid_text():
    from chalicelib.domain.orders import MAX_RESULT_MESSAGE, failed
    result = failed("z\udfff" * 50_000, ValidationError("m" * 100_000)).to_api()
    assert len(result["client_order_id"]) == 64 and len(result["error"]["message"]) == MAX_RESULT_MESSAGE
    assert "\ufffd" in result["client_order_id"]


def test_a_replay_of_a_cancelled_order_is_reported_cancelled_and_counted_apart():
    from chalicelib.domain.orders import OrderResult, failed, summarize
    replay = OrderResult("c-1", 7, 500, duplicate=True, status="cancelled").to_api()
    assert replay == {"client_order_id": "c-1", "status": "cancelled", "order_id": 7, "total_cents": 500,
                      "duplicate": True}
    results = [replay, OrderResult("c-2", 8, 100).to_api(), failed("c-3", ValidationError("bad")).to_api()]
    assert summarize(results) == {"created": 1, "failed": 1, "cancelled": 1}
    assert summarize(results[1:]) == {"created": 1, "failed": 1}
