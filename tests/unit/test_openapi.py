"""The OpenAPI document cannot drift: it must be valid OpenAPI 3.1, list
exactly the app's routes, every error code of errors.py with the status
docs/api.md gives it, every route docs/api.md names, and docs/openapi.json
must be what chalicelib/entrypoints/openapi/ builds (`make openapi`)."""
import json
import re
from pathlib import Path

import schemathesis

import app as shop_app
from chalicelib.domain import errors
from chalicelib.entrypoints import openapi
from chalicelib.entrypoints.openapi.responses import ERROR_CLASSES

ROOT = Path(__file__).resolve().parents[2]
API_MD = (ROOT / "docs" / "api.md").read_text()
METHODS = {"get", "post", "patch", "put", "delete"}


def document_routes(doc):
    return {(path, method.upper()) for path, item in doc["paths"].items() for method in item if method in METHODS}


def test_docs_copy_is_what_the_code_builds():
    assert (ROOT / "docs" / "openapi.json").read_text() == openapi.render(), "run `make openapi`"


def test_document_is_valid_openapi_3_1():
    doc = openapi.build()
    assert doc["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(doc).validate()  # raises on a schema that breaks the 3.1 meta-schema


def test_document_lists_exactly_the_apps_routes():
    app_routes = {(path, method) for path, methods in shop_app.app.routes.items() for method in methods}
    assert document_routes(openapi.build()) == app_routes


def test_docs_api_md_names_exactly_the_documented_routes():
    def shape(path):  # {id}, {product_id} and sqs-<messageId> all name a parameter segment
        return re.sub(r"[^/]*(\{[^}]+\}|<[^>]+>)[^/]*", "{}", path)

    named = {(method, shape(path)) for method, path in re.findall(r"`(GET|POST|PATCH|PUT|DELETE) (/[^`?\s]*)", API_MD)}
    documented = {(method, shape(path)) for path, method in document_routes(openapi.build())}
    assert named == documented, (named - documented, documented - named)


def test_every_error_code_with_the_status_docs_api_md_gives_it():
    table = dict(re.findall(r"^\s*\| `([A-Z_]+)` \| (\d{3}) \|", API_MD, flags=re.MULTILINE))
    classes = {cls.code: cls.status for cls in ERROR_CLASSES}
    assert {code: int(status) for code, status in table.items()} == classes
    assert set(openapi.build()["components"]["schemas"]["ErrorCode"]["enum"]) == set(classes)
    assert errors.ConcurrencyExhausted in ERROR_CLASSES  # subclasses are found too


def test_every_error_status_an_operation_can_answer_is_documented():
    doc = openapi.build()
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            statuses = set(operation["responses"])
            keyed = operation["security"] != []
            assert "500" in statuses, (method, path)
            if keyed:
                assert {"403", "429", "503"} <= statuses, (method, path)
            if "requestBody" in operation:
                assert {"400", "413", "415"} <= statuses, (method, path)
            if "{" in path:
                assert "400" in statuses or path == "/batches/{batch_id}", (method, path)


def test_api_key_scheme_and_admin_plan():
    doc = openapi.build()
    assert doc["components"]["securitySchemes"]["ApiKey"] == {
        **doc["components"]["securitySchemes"]["ApiKey"], "type": "apiKey", "in": "header", "name": "x-api-key"}
    plans = json.loads((ROOT / "chalicelib" / "usage_plans.json").read_text())["plans"]
    admin_routes = {(path, method) for path, item in doc["paths"].items() for method, op in item.items()
                    if op.get("x-plan") == "admin"}
    assert admin_routes == {("/products", "post"), ("/products/bulk", "post"), ("/products/{product_id}", "patch"),
                            ("/products/{product_id}/stock", "post"), ("/admin/stats", "get"),
                            ("/products/{product_id}/sale", "post"), ("/products/{product_id}/sale", "get"),
                            ("/products/{product_id}/sale", "delete")}
    assert {"standard", "admin"} <= set(plans)
    assert [path for path, item in doc["paths"].items() if item.get("get", {}).get("security") == []] == ["/health"]
