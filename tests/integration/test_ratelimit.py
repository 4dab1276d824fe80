"""Per-key rate limits over real HTTP (chalice local): the limited key's plan is
burst 5, 1 request/second (chalicelib/usage_plans.json)."""
import threading
import time

from tests.conftest import ADMIN_KEY, DEV_KEY, LIMITED_KEY

# Any keyed route goes through the limiter; a missing product is the cheapest.
PATH = "/products/999999999"


def test_limited_key_gets_burst_then_429_with_retry_after(api):
    statuses = [api.get(PATH, key=LIMITED_KEY).status_code for _ in range(5)]
    assert statuses == [404] * 5

    limited = api.get(PATH, key=LIMITED_KEY)
    assert limited.status_code == 429
    assert limited.headers["Content-Type"].startswith("application/json")
    body = limited.json()
    assert body["error"]["code"] == "RATE_LIMITED"
    assert body["error"]["message"]
    retry_after = int(limited.headers["Retry-After"])
    assert retry_after == 1  # one token per second

    time.sleep(retry_after)
    assert api.get(PATH, key=LIMITED_KEY).status_code == 404
    assert api.get(PATH, key=LIMITED_KEY).status_code == 429


def test_other_keys_and_health_are_not_affected(api):
    for _ in range(8):
        api.get(PATH, key=LIMITED_KEY)
    assert api.get(PATH, key=LIMITED_KEY).status_code == 429
    assert api.get(PATH, key=DEV_KEY).status_code == 404
    assert api.get(PATH, key=ADMIN_KEY).status_code == 404
    assert all(api.get("/health", key=None).status_code == 200 for _ in range(10))


def test_bad_key_is_forbidden_not_rate_limited(api):
    for _ in range(10):
        response = api.get(PATH, key="no-such-key")
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "FORBIDDEN"


def test_concurrent_clients_on_the_limited_key_get_no_more_than_the_bucket(api, live_server):
    from tests.conftest import ApiClient

    results = []
    lock = threading.Lock()
    seconds = 2.5
    barrier = threading.Barrier(12)

    def client():
        own = ApiClient(live_server)  # a session per thread
        barrier.wait()
        end = time.time() + seconds
        while time.time() < end:
            status = own.get(PATH, key=LIMITED_KEY).status_code
            with lock:
                results.append(status)

    started = time.time()
    threads = [threading.Thread(target=client) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.time() - started
    admitted = results.count(404)
    assert set(results) <= {404, 429}
    assert results.count(429) > 0
    assert 5 <= admitted <= 5 + 1 * elapsed + 1
