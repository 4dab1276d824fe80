"""The numbers behind `GET /admin/stats` and the dashboard: the log histogram
that lets percentiles merge across seconds and processes, percentiles, hit
rates, error counts by code, and the per-window summary."""
import math
from collections import defaultdict
from datetime import datetime, timezone

from aws_lambda_powertools.metrics import MetricUnit

HISTOGRAM_BASE = 1.04
MIN_DISTRIBUTION_VALUE = 0.001  # ms
CACHE_RESULTS = ("HIT", "MISS", "BYPASS", "STALE")


def _dims(dimensions):
    return ";".join(f"{k}={dimensions[k]}" for k in sorted(dimensions))


def _bucket(value):
    return math.floor(math.log(max(value, MIN_DISTRIBUTION_VALUE)) / math.log(HISTOGRAM_BASE))


def _bucket_value(index):
    """The value reported for histogram bucket `index` (its geometric middle)."""
    return HISTOGRAM_BASE ** (index + 0.5)


def fields_for(name, value, unit, dimensions):
    """The hash fields one emitted value adds to its second's bucket."""
    dims = _dims(dimensions)
    if unit in (MetricUnit.Milliseconds, "Milliseconds"):
        value = float(value)
        return {f"n|{name}|{dims}": 1, f"s|{name}|{dims}": value, f"h|{name}|{dims}|{_bucket(value)}": 1}
    return {f"c|{name}|{dims}": value}


def percentile(histogram, q):
    """Nearest-rank percentile `q` (0..1) of a {bucket index: count} histogram, or None."""
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return round(_bucket_value(index), 3)
    return round(_bucket_value(max(histogram)), 3)


def hit_rate(counts):
    """HIT / (HIT + MISS + BYPASS + STALE), or None with no reads."""
    total = sum(counts.get(r, 0) for r in CACHE_RESULTS)
    return round(counts.get("HIT", 0) / total, 4) if total else None


def ratio(part, whole):
    return round(part / whole, 4) if whole else None


_STATUS_BY_CODE = None


def status_for_code(code):
    """The HTTP status an error code is answered with (chalicelib.errors)."""
    global _STATUS_BY_CODE
    if _STATUS_BY_CODE is None:
        from chalicelib.domain.errors import ShopError

        table, todo = {"INTERNAL": 500}, [ShopError]
        while todo:
            cls = todo.pop()
            table[cls.code] = cls.status
            todo.extend(cls.__subclasses__())
        _STATUS_BY_CODE = table
    return _STATUS_BY_CODE.get(code, 0)


class _Aggregate:
    """Counters and distributions merged over some seconds."""

    def __init__(self):
        self.counters = defaultdict(float)            # (name, dims) -> sum
        self.count = defaultdict(float)               # (name, dims) -> n
        self.sum = defaultdict(float)                 # (name, dims) -> sum of values
        self.histograms = defaultdict(lambda: defaultdict(float))  # (name, dims) -> {i: n}

    def add(self, fields):
        for field, value in fields.items():
            kind, _, rest = field.partition("|")
            if kind == "c":
                name, _, dims = rest.partition("|")
                self.counters[(name, dims)] += value
            elif kind == "n":
                name, _, dims = rest.partition("|")
                self.count[(name, dims)] += value
            elif kind == "s":
                name, _, dims = rest.partition("|")
                self.sum[(name, dims)] += value
            elif kind == "h":
                name, _, tail = rest.partition("|")
                dims, _, index = tail.rpartition("|")
                self.histograms[(name, dims)][int(index)] += value

    def counter(self, name, **dims):
        return int(self.counters.get((name, _dims(dims)), 0))

    def by_dim(self, name, dim):
        """{dimension value: count} of a counter with one dimension."""
        out = defaultdict(int)
        for (n, dims), value in self.counters.items():
            if n == name:
                for part in dims.split(";"):
                    k, _, v = part.partition("=")
                    if k == dim:
                        out[v] += int(value)
        return dict(out)

    def distribution(self, name, **dims):
        key = (name, _dims(dims))
        hist = self.histograms.get(key, {})
        n = int(self.count.get(key, 0))
        return {"count": n,
                "p50": percentile(hist, 0.50), "p99": percentile(hist, 0.99),
                "mean": round(self.sum[key] / n, 3) if n else None}

    def distributions_by(self, name, dim):
        out = {}
        for (n, dims) in list(self.count):
            if n != name:
                continue
            values = dict(part.partition("=")[::2] for part in dims.split(";") if part)
            if dim in values:
                out[values[dim]] = self.distribution(name, **values)
        return out


def _cache_block(agg, metric):
    counts = {r: 0 for r in CACHE_RESULTS}
    counts.update(agg.by_dim(metric, "result"))
    return {"hit_rate": hit_rate(counts), "reads": sum(counts[r] for r in CACHE_RESULTS), "by_result": counts}


def _errors(agg):
    by_code = agg.by_dim("Errors", "code")
    return by_code, sum(n for code, n in by_code.items() if status_for_code(code) >= 500)


def summarize(buckets, first_second, last_second, step=1, source="redis"):
    """The /admin/stats body from per-second buckets {second: {field: value}}."""
    step = max(1, int(step))
    total = _Aggregate()
    for fields in buckets.values():
        total.add(fields)

    errors_by_code, errors_5xx = _errors(total)
    routes = total.distributions_by("RequestLatency", "route")
    request_count = int(sum(v for (n, _), v in total.count.items() if n == "RequestLatency"))
    product, search = _cache_block(total, "ProductCache"), _cache_block(total, "SearchCache")
    reads = product["reads"] + search["reads"]
    hits = product["by_result"]["HIT"] + search["by_result"]["HIT"]

    series = defaultdict(list)
    for t in range(first_second, last_second + 1, step):
        agg = _Aggregate()
        for second in range(t, min(t + step, last_second + 1)):
            if second in buckets:
                agg.add(buckets[second])
        latency = agg.distribution("OrderLatency")
        reqs = sum(int(v) for (n, _), v in agg.count.items() if n == "RequestLatency")
        _, e5 = _errors(agg)
        p, s = _cache_block(agg, "ProductCache"), _cache_block(agg, "SearchCache")
        series["t"].append(t)
        series["order_p50_ms"].append(latency["p50"])
        series["order_p99_ms"].append(latency["p99"])
        series["orders_created"].append(agg.counter("OrdersCreated"))
        series["orders_failed"].append(sum(agg.by_dim("OrdersFailed", "code").values()))
        series["requests"].append(reqs)
        series["errors"].append(sum(agg.by_dim("Errors", "code").values()))
        series["errors_5xx"].append(e5)
        series["error_rate"].append(ratio(e5, reqs))
        series["product_hit_rate"].append(p["hit_rate"])
        series["search_hit_rate"].append(s["hit_rate"])
        series["cache_hit_rate"].append(ratio(p["by_result"]["HIT"] + s["by_result"]["HIT"], p["reads"] + s["reads"]))

    failed_by_code = total.by_dim("OrdersFailed", "code")
    return {
        "window_seconds": last_second - first_second + 1,
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": source,
        "orders": {
            "created": total.counter("OrdersCreated"),
            "failed": sum(failed_by_code.values()),
            "failed_by_code": failed_by_code,
            "cancelled": total.counter("OrdersCancelled"),
            "latency_ms": total.distribution("OrderLatency"),
        },
        "cache": {"product": product, "search": search, "hit_rate": ratio(hits, reads)},
        "requests": {
            "count": request_count,
            "errors": sum(errors_by_code.values()),
            "errors_5xx": errors_5xx,
            "error_rate": ratio(errors_5xx, request_count),
            "errors_by_code": errors_by_code,
        },
        "routes": dict(sorted(routes.items())),
        "series": {"step_seconds": step, **series},
    }
