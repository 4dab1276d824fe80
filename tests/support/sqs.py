"""Driving a local SQS poller in tests."""
import time


def drain(poller, until, timeout=30):
    """Poll until `until()` holds (True) or `timeout` seconds pass (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        poller.poll_once()
        if until():
            return True
    return False
