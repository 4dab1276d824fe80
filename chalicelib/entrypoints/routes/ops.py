"""Operations routes: `GET /admin/stats` (admin), `GET /dashboard` and
`GET /openapi.json` (the machine-readable contract, entrypoints/openapi/).

`/admin/stats?window=300&step=1` -> the last `window` seconds (1..300) of
order latency, orders, cache hit rates, requests, errors and per-route
latency across every process, with per-`step`-second series for charts.

`/dashboard` is a static HTML page (no data in it). The page asks for the
admin key (field, or `#key=...` in the URL; a fragment never reaches the
server or its logs) and polls `/admin/stats` with it, so the numbers stay
admin-only. The HTML itself is served without a key check by the app: locally
anyone on the machine can open http://127.0.0.1:8000/dashboard; in the cloud
the route is `api_key_required` like every route but /health, so API Gateway
only serves it to callers with a key (operators use the CloudWatch dashboard
from infra/ there).
"""
import functools

from chalice import Blueprint, Response

from chalicelib.domain.validation import query_int
from chalicelib.entrypoints.http import endpoint, query_params
from chalicelib.ops import metrics
from chalicelib.ops.dashboard import DASHBOARD_HTML

routes = Blueprint(__name__)

HTML_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    # Everything is inline; the page only talks to this origin, and no other page may frame it (it
    # holds the admin key once typed in: a framing site could trick an operator's clicks).
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",  # the same for browsers without CSP frame-ancestors
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@endpoint(routes, "/admin/stats", admin=True)
def admin_stats(request):
    params = query_params(request)
    window = query_int(params, "window", metrics.WINDOW_SECONDS, 1, metrics.WINDOW_SECONDS)
    step = query_int(params, "step", 1, 1, 60)
    return 200, metrics.stats(window, step), {"Cache-Control": "no-store"}


@endpoint(routes, "/dashboard", check_key_in_app=False)
def dashboard(request):
    return Response(body=DASHBOARD_HTML, status_code=200, headers=dict(HTML_HEADERS))


@functools.cache
def _openapi_document():
    # Built on its route's first request, not at every cold start of every route.
    from chalicelib.entrypoints import openapi

    return openapi.build()


@endpoint(routes, "/openapi.json")
def openapi_document(request):
    return 200, _openapi_document()
