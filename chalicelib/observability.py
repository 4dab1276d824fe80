"""Structured logs and EMF metrics (Powertools), plus an in-process rolling
window of the same numbers for the local dashboard."""
import threading
import time
from collections import deque

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

logger = Logger(service="shop")
NAMESPACE = "Shop"


def emit(name, value, unit=MetricUnit.Count, **dimensions):
    """One EMF metric line; safe from any thread (no shared metric buffer)."""
    LOCAL_STATS.record(name, value, dimensions)
    if is_metrics_disabled():
        return
    with single_metric(name=name, unit=unit, value=value, namespace=NAMESPACE) as metric:
        for key, dim in dimensions.items():
            metric.add_dimension(name=key, value=str(dim))


class LocalStats:
    """Last few minutes of metrics, for the admin stats endpoint and dashboard."""

    def __init__(self, window_seconds=300, max_samples=50000):
        self.window_seconds = window_seconds
        self._samples = deque(maxlen=max_samples)
        self._lock = threading.Lock()

    def record(self, name, value, dimensions):
        with self._lock:
            self._samples.append((time.time(), name, value, tuple(sorted(dimensions.items()))))

    def snapshot(self):
        cutoff = time.time() - self.window_seconds
        with self._lock:
            samples = [s for s in self._samples if s[0] >= cutoff]
        return samples


LOCAL_STATS = LocalStats()
