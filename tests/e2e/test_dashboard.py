"""Observability over real HTTP: /admin/stats counts what clients did, and
/dashboard renders those numbers in a real (headless) Chromium."""
import re
import shutil
import subprocess
import uuid
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import ADMIN_KEY, DEV_KEY

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT_COPY = Path("/tmp/shop-dashboard.png")


def stats(api, **params):
    response = api.get("/admin/stats", key=ADMIN_KEY, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()


def create_product(api, **overrides):
    body = {"sku": f"OBS-{uuid.uuid4().hex[:10]}", "name": "Observability lamp", "description": "Bright",
            "category": "lamps", "price_cents": 1500, "stock": 50}
    body.update(overrides)
    response = api.post("/products", key=ADMIN_KEY, json=body)
    assert response.status_code == 201, response.text
    return response.json()["product"]


def place_orders(api, lines_per_order):
    orders = [{"client_order_id": f"obs-{uuid.uuid4().hex[:12]}", "user_id": 7,
               "items": [{"product_id": pid, "quantity": qty} for pid, qty in lines]}
              for lines in lines_per_order]
    response = api.post("/orders/batch", json={"orders": orders})
    assert response.status_code == 200, response.text
    return response.json()


def delta(after, before):
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before) if after.get(k, 0) != before.get(k, 0)}


def test_admin_stats_count_orders_cache_reads_and_errors(api):
    before = stats(api)  # flushes whatever the server had pending; everything below is a delta
    made = 0
    lamp, rare = create_product(api), create_product(api, stock=1, name="Rare lamp")
    made += 2

    product_cache = Counter()
    for pid in (lamp["id"], lamp["id"], lamp["id"], rare["id"], rare["id"]):
        response = api.get(f"/products/{pid}")
        assert response.status_code == 200
        product_cache[response.headers["X-Cache"]] += 1
        made += 1
    search_cache = Counter()
    for _ in range(3):
        response = api.get("/products/search", params={"q": "lamp"})
        assert response.status_code == 200
        search_cache[response.headers["X-Cache"]] += 1
        made += 1
    assert product_cache["HIT"] and product_cache["MISS"]

    batch = place_orders(api, [[(lamp["id"], 1)], [(lamp["id"], 2), (rare["id"], 1)], [(lamp["id"], 1)],
                               [(rare["id"], 5)], [(999_999_999, 1)]])
    made += 1
    assert batch["summary"] == {"created": 3, "failed": 2}

    errors = Counter()
    for path, key, code in [("/products/999999999", DEV_KEY, "PRODUCT_NOT_FOUND"),
                            ("/products/999999998", DEV_KEY, "PRODUCT_NOT_FOUND"),
                            ("/products/search?limit=0", DEV_KEY, "VALIDATION_ERROR"),
                            ("/admin/stats", DEV_KEY, "FORBIDDEN"),
                            ("/admin/stats", None, "FORBIDDEN")]:
        response = api.get(path, key=key)
        assert response.json()["error"]["code"] == code
        errors[code] += 1
        made += 1

    after = stats(api)
    assert after["source"] == "redis" and after["window_seconds"] == 300

    orders = after["orders"]
    assert orders["created"] - before["orders"]["created"] == 3
    assert orders["failed"] - before["orders"]["failed"] == 2
    assert delta(orders["failed_by_code"], before["orders"]["failed_by_code"]) == {
        "INSUFFICIENT_STOCK": 1, "PRODUCT_NOT_FOUND": 1}
    latency = orders["latency_ms"]
    assert latency["count"] - before["orders"]["latency_ms"]["count"] == 3
    assert 0 < latency["p50"] <= latency["p99"]

    # Hit rates agree with the X-Cache headers this client saw.
    for name, seen in (("product", product_cache), ("search", search_cache)):
        got = delta(after["cache"][name]["by_result"], before["cache"][name]["by_result"])
        assert got == dict(seen), name
    if before["cache"]["product"]["reads"] == 0:
        assert after["cache"]["product"]["hit_rate"] == round(product_cache["HIT"] / sum(product_cache.values()), 4)

    requests = after["requests"]
    assert requests["count"] - before["requests"]["count"] == made + 1  # + the first /admin/stats
    assert delta(requests["errors_by_code"], before["requests"]["errors_by_code"]) == dict(errors)
    assert requests["errors_5xx"] == before["requests"]["errors_5xx"]
    assert requests["error_rate"] == round(requests["errors_5xx"] / requests["count"], 4)

    route = after["routes"]["GET /products/{product_id}"]
    assert route["count"] - before["routes"].get("GET /products/{product_id}", {}).get("count", 0) == 7
    assert 0 < route["p50"] <= route["p99"]
    assert after["routes"]["POST /orders/batch"]["p99"] > 0

    series = after["series"]
    assert series["step_seconds"] == 1 and len(series["t"]) == 300
    assert sum(series["orders_created"]) == orders["created"]
    assert sum(series["requests"]) == requests["count"]
    assert any(v is not None for v in series["order_p99_ms"])

    charts = stats(api, window=60, step=5)
    assert len(charts["series"]["t"]) == 12 and charts["window_seconds"] == 60


def test_admin_stats_is_admin_only_and_validates_params(api):
    for key in (DEV_KEY, "not-a-key", None):
        response = api.get("/admin/stats", key=key)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "FORBIDDEN"
    for query in ("window=0", "window=301", "step=abc", "step=61"):
        response = api.get(f"/admin/stats?{query}", key=ADMIN_KEY)
        assert response.status_code == 400, query
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"


def test_dashboard_page_is_self_contained_html(api):
    response = api.get("/dashboard", key=None)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.headers["X-Request-Id"]
    page = response.text
    assert "/admin/stats" in page and 'id="order-p99"' in page
    # No data in the page, and nothing loaded from elsewhere (the machine is offline).
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "connect-src 'self'" in response.headers["Content-Security-Policy"]
    # No other site may frame it (clickjacking): CSP for today's browsers, X-Frame-Options for older ones.
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium; `make test` installs it, this covers a bare `pytest` too."""
    if not shutil.which("chromium"):
        subprocess.run("apt-get update -qq && apt-get install -y -qq chromium", shell=True, check=True,
                       stdout=subprocess.DEVNULL, timeout=900)
    path = shutil.which("chromium") or CHROMIUM
    assert Path(path).exists(), "chromium is not installed (apt-get install chromium)"
    return path


def run_chromium(chromium, tmp_path, url, *mode):
    argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000", "--window-size=1280,1000", *mode, url]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class Elements(HTMLParser):
    """id -> (text, data-value) of every element with an id."""

    def __init__(self):
        super().__init__()
        self.found, self._open = {}, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.found[attrs["id"]] = ["", attrs.get("data-value")]
            self._open.append((tag, attrs["id"]))
        else:
            self._open.append((tag, None))

    def handle_endtag(self, tag):
        while self._open:
            open_tag, _ = self._open.pop()
            if open_tag == tag:
                break

    def handle_data(self, data):
        for _, element_id in self._open:
            if element_id:
                self.found[element_id][0] += data


def test_dashboard_renders_the_stats_in_headless_chromium(api, chromium, tmp_path):
    lamp = create_product(api, stock=100)
    for _ in range(3):
        api.get(f"/products/{lamp['id']}")
    batch = place_orders(api, [[(lamp["id"], 1)] for _ in range(6)] + [[(lamp["id"], 1000)]])
    assert batch["summary"] == {"created": 6, "failed": 1}
    expected = stats(api)
    latency = expected["orders"]["latency_ms"]
    assert latency["count"] == 6 and latency["p99"] > 0

    url = f"{api.base_url}/dashboard#key={ADMIN_KEY}"
    dom = run_chromium(chromium, tmp_path, url, "--dump-dom")
    elements = Elements()
    elements.feed(dom)
    found = elements.found
    assert "Could not load" not in found["status"][0], found["status"]
    assert found["status"][0].startswith("Updated")

    def number(element_id):
        return float(found[element_id][1])

    assert number("order-p99") == latency["p99"]
    assert number("order-p50") == latency["p50"]
    assert found["order-p99"][0].endswith(" ms") and found["order-p99"][0] != "\u2014"
    assert number("orders-created") == expected["orders"]["created"] == 6
    assert number("orders-failed") == expected["orders"]["failed"] == 1
    assert number("product-hit-rate") == expected["cache"]["product"]["hit_rate"]
    assert found["product-hit-rate"][0] == f"{expected['cache']['product']['hit_rate'] * 100:.1f}%"
    assert number("request-count") >= expected["requests"]["count"]  # the page's own poll counts too
    assert "INSUFFICIENT_STOCK" in found["failed-by-code"][0]
    assert "POST /orders/batch" in found["routes"][0]
    assert "<path" in dom  # the charts drew lines

    # A wrong key shows the 403 instead of numbers.
    denied = Elements()
    denied.feed(run_chromium(chromium, tmp_path, f"{api.base_url}/dashboard#key={DEV_KEY}", "--dump-dom"))
    assert "FORBIDDEN" in denied.found["status"][0]
    assert denied.found["order-p99"][0] == "\u2014"

    shot = tmp_path / "dashboard.png"
    run_chromium(chromium, tmp_path, url, f"--screenshot={shot}")
    assert shot.exists() and shot.stat().st_size > 10_000
    try:
        shutil.copyfile(shot, SCREENSHOT_COPY)  # for a person to look at
    except OSError:
        pass


def route_count(api, route):
    return (stats(api)["routes"].get(route) or {}).get("count", 0)


def test_another_page_cannot_frame_the_dashboard_in_chromium(api, chromium, tmp_path):
    """A page of another origin frames the dashboard with the admin key in the fragment. Rendered,
    the dashboard would poll /admin/stats at once; the browser refuses to render it in a frame."""
    framing = tmp_path / "framing.html"
    framing.write_text(f'<html><body><iframe src="{api.base_url}/dashboard#key={ADMIN_KEY}" width="900" '
                       'height="700"></iframe></body></html>')
    before = route_count(api, "GET /admin/stats")
    run_chromium(chromium, tmp_path, framing.as_uri(), "--dump-dom")
    # The one request since `before` is that read of the stats itself.
    assert route_count(api, "GET /admin/stats") == before + 1
    # The page alone (not framed) does poll: the check above could see a framed dashboard run.
    run_chromium(chromium, tmp_path, f"{api.base_url}/dashboard#key={ADMIN_KEY}", "--dump-dom")
    assert route_count(api, "GET /admin/stats") >= before + 3
