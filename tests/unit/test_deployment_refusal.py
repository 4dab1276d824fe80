"""A misconfigured deployment refuses in one place (entrypoints/deployment.py):
every handler app.py registers runs behind it, before it reaches MySQL, Redis or AWS."""
import json
from pathlib import Path

import pytest

import app as shop_app
from chalicelib import bootstrap
from chalicelib.domain.errors import ServiceUnavailable
from chalicelib.entrypoints.deployment import serving

EVENTS = Path(__file__).resolve().parents[2] / "events"
SCHEDULED = json.loads((EVENTS / "scheduled_lifecycle.json").read_text())
NOT_ROUTES = sorted(set(shop_app.app.handler_map) - {route.view_name for path in shop_app.app.routes.values()
                                                     for route in path.values()})


class _Context:
    @staticmethod
    def get_remaining_time_in_millis():
        return 60_000


@pytest.fixture
def misconfigured(monkeypatch):
    monkeypatch.setattr(bootstrap, "deployment_problems", lambda: ["AWS_ENDPOINT_URL is 127.0.0.1"])

    def unreachable(*args, **kwargs):
        raise AssertionError("a refused handler reached its dependencies")

    for builder in ("database", "redis_gateway", "state_gateway", "publisher", "settings"):
        monkeypatch.setattr(bootstrap, builder, unreachable)


def _event_for(name):
    source = next((s for s in shop_app.app.event_sources if s.name == name), None)
    if type(source).__name__ == "SQSEventConfig":
        return {"Records": []}
    return SCHEDULED if source is not None else {}


def test_every_handler_but_the_routes_is_listed():
    # Routes refuse in http.endpoint; the rest are these (the queues', the schedules', migrate).
    assert {"handle_order_ingest", "handle_flash_orders", "lifecycle", "flash_reconcile", "warm_cache",
            "migrate"} <= set(NOT_ROUTES)


@pytest.mark.parametrize("name", NOT_ROUTES)
def test_a_misconfigured_deployment_refuses_every_handler(name, misconfigured):
    handler = shop_app.app.handler_map[name]
    with pytest.raises(ServiceUnavailable, match="misconfigured and refuses to serve: AWS_ENDPOINT_URL"):
        handler(_event_for(name), _Context())


def test_serving_runs_the_handler_when_the_deployment_is_sound(monkeypatch):
    monkeypatch.setattr(bootstrap, "deployment_problems", lambda: [])
    assert serving(lambda event, context=None: ("ran", event))({"x": 1}) == ("ran", {"x": 1})
