"""The machine-readable contract: an OpenAPI 3.1 document of every route,
built from the same constants the validators use (limits, error codes, search
parameters, usage plans), so it cannot drift from them. Served at
`GET /openapi.json`; docs/openapi.json is the same document, written by
`make openapi` and checked against this module by tests/unit/test_openapi.py,
which also checks it against the app's routes and docs/api.md."""
import json

from chalicelib.entrypoints.openapi.paths import paths
from chalicelib.entrypoints.openapi.schemas import SCHEMAS

VERSION = "1.3.0"


def build():
    """The OpenAPI 3.1 document (a fresh dict)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "shop API", "version": VERSION,
            "description": "Batch orders and product search. The prose contract, with the rules this document "
                           "cannot express (idempotency, ordering, caching), is docs/api.md.",
        },
        "servers": [{"url": "http://127.0.0.1:8000", "description": "make run (local stage)"}],
        "security": [{"ApiKey": []}],
        "paths": paths(),
        "components": {
            "schemas": dict(SCHEMAS),
            "securitySchemes": {
                "ApiKey": {
                    "type": "apiKey", "in": "header", "name": "x-api-key",
                    "description": "Every route but GET /health. Each key is one client's, on a plan "
                                   "(chalicelib/usage_plans.json): operations marked x-plan: admin need a key on "
                                   "the admin plan; /orders and /batches need a trusted-server plan (not "
                                   "public); any other key gets 403 FORBIDDEN. A client sees only its own "
                                   "orders and batches. Over the key's rate, or on a public-plan key over the "
                                   "caller's own (per customer or address) -> 429 RATE_LIMITED.",
                },
                "CustomerToken": {
                    "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "The ID token of a customer signed in to the shop's Cognito user pool "
                                   "(InitiateAuth); the /customer routes need it with the key. Missing, expired, "
                                   "forged, or from another pool or app client -> 401 UNAUTHORIZED.",
                },
            },
        },
    }


def render():
    """docs/openapi.json's exact text."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
