"""The one place that maps exceptions to responses: a bug is a 500 INTERNAL
with a request id and a log line, never a stack trace to the client."""
import json
import logging

import pytest
from chalice import Chalice
from chalice.test import Client

from chalicelib import bootstrap
from chalicelib.domain.errors import InsufficientStock
from chalicelib.entrypoints.http import endpoint


@pytest.fixture(autouse=True)
def no_clients_left_behind():
    yield
    bootstrap.reset()  # the app ran under the local stage's config: build nothing more from it


def make_app():
    app = Chalice(app_name="errors-test")

    @endpoint(app, "/boom", public=True)
    def boom(request):
        raise RuntimeError("secret internal detail")

    @endpoint(app, "/business", public=True)
    def business(request):
        raise InsufficientStock("Only 2 left.", product_id=7)

    return app


def test_unexpected_exception_is_500_internal_with_request_id_and_log(caplog):
    with caplog.at_level(logging.ERROR), Client(make_app(), stage_name="local") as client:
        response = client.http.get("/boom")
    assert response.status_code == 500
    body = json.loads(response.body)
    assert body["error"]["code"] == "INTERNAL"
    assert body["error"]["request_id"] == response.headers["X-Request-Id"]
    assert "secret internal detail" not in response.body.decode()
    assert "Traceback" not in response.body.decode()
    assert "secret internal detail" in caplog.text  # the on-call engineer sees it in the log


def test_business_error_keeps_its_code_and_extra_fields():
    with Client(make_app(), stage_name="local") as client:
        response = client.http.get("/business")
    assert response.status_code == 409
    error = json.loads(response.body)["error"]
    assert error["code"] == "INSUFFICIENT_STOCK" and error["product_id"] == 7 and error["message"] == "Only 2 left."
