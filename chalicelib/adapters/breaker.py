"""A small circuit breaker: once a dependency is known dead, callers fail in
microseconds instead of paying a connect timeout each; after `reset_after`
seconds one caller is let through as a half-open probe."""
import threading
import time


class CircuitOpen(Exception):
    pass


class CircuitBreaker:
    def __init__(self, name, failure_threshold=3, reset_after=2.0, clock=time.monotonic):
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_after = reset_after
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at = None
        self._probe_in_flight = False
        self._probe_started = 0.0

    @property
    def state(self):
        with self._lock:
            if self._opened_at is None:
                return "closed"
            if self._clock() - self._opened_at >= self.reset_after:
                return "half_open"
            return "open"

    def before_call(self):
        """Raise CircuitOpen unless this caller may try the dependency."""
        with self._lock:
            if self._opened_at is None:
                return
            now = self._clock()
            if now - self._opened_at < self.reset_after:
                raise CircuitOpen(f"{self.name} circuit open")
            # One probe at a time; a probe whose caller never reported (it died
            # of an unexpected exception) is replaced after another window, or
            # the circuit would stay open forever.
            if self._probe_in_flight and now - self._probe_started < self.reset_after:
                raise CircuitOpen(f"{self.name} circuit open")
            self._probe_in_flight = True
            self._probe_started = now

    def record_success(self):
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._probe_in_flight = False

    def record_failure(self):
        with self._lock:
            self._failures += 1
            if self._probe_in_flight or self._failures >= self.failure_threshold:
                self._opened_at = self._clock()
            self._probe_in_flight = False
