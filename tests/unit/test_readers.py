"""Readers' choices from what the reader answers (the real replica is in
tests/integration/test_readers.py): fall back on a dead or lagging reader,
prove a search generation only by the stamp its own snapshot holds, never retry a
statement the server stopped at its time limit on the writer."""
import pytest

from chalicelib.adapters.cache import new_generation
from chalicelib.domain.search_query import generation_born_ms
from chalicelib.adapters.readers import Readers
from chalicelib.domain.errors import ServiceUnavailable, StatementTimeout


class FakeDatabase:
    def __init__(self, name, beat_ms=0, now_ms=0):
        self.name, self.beat_ms, self.now_ms = name, beat_ms, now_ms
        self.fail = None
        self.queries, self.run_statements = [], []

    def run(self, work, **options):
        db = self

        class Cursor:
            def execute(self, sql, args=None):
                db.run_statements.append(sql)

            def fetchone(self):
                return {"beat_ms": db.beat_ms}

        return work(Cursor())

    def query(self, sql, args=None):
        self.queries.append(sql)
        if self.fail is not None:
            raise self.fail
        if "replica_heartbeat" in sql:
            return [{"beat_ms": self.beat_ms, "now_ms": self.now_ms}]
        return [{"served_by": self.name}]


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def readers(beat_ms=10_000, now_ms=10_500, max_lag_ms=2500):
    writer, reader, clock, seen = FakeDatabase("writer"), FakeDatabase("reader", beat_ms, now_ms), Clock(), []
    return Readers(writer, reader, max_lag_ms=max_lag_ms, clock_skew_ms=100, check_seconds=0.5, monotonic=clock,
                   metrics=lambda name, value, unit=None, **dims: seen.append((name, dims.get("reason")))), clock, seen


def test_a_reader_close_behind_serves_and_its_lag_is_reported():
    reads, _, seen = readers()
    assert reads.query("SELECT 1") == ([{"served_by": "reader"}], True)
    assert reads.status() == {"configured": True, "up": True, "lag_ms": 500, "max_lag_ms": 2500}
    assert ("ReaderLag", None) in seen


def test_a_reader_past_the_bound_sends_reads_to_the_writer_until_it_catches_up():
    reads, clock, seen = readers(beat_ms=10_000, now_ms=13_000)
    assert reads.query("SELECT 1") == ([{"served_by": "writer"}], False)
    assert ("ReaderFallback", "lag") in seen
    reads.reader.beat_ms = 12_900
    assert reads.choose() is reads.writer, "the heartbeat is read again only after check_seconds"
    clock.now += 0.5
    assert reads.choose() is reads.reader


def test_a_reader_that_fails_mid_read_is_answered_by_the_writer_and_left_alone():
    reads, clock, seen = readers()
    reads.choose()
    reads.reader.fail = ServiceUnavailable("gone")
    assert reads.query("SELECT 1") == ([{"served_by": "writer"}], False)
    assert ("ReaderFallback", "down") in seen
    count = len(reads.reader.queries)
    assert reads.query("SELECT 1")[1] is False and len(reads.reader.queries) == count
    clock.now += 0.5
    assert reads.query("SELECT 1")[1] is False and reads.status()["up"] is False


def test_a_statement_stopped_at_its_time_limit_is_not_run_again_on_the_writer():
    reads, _, _ = readers()
    reads.choose()
    reads.reader.fail = StatementTimeout(1500)
    with pytest.raises(StatementTimeout):
        reads.query("SELECT costly")
    assert reads.writer.queries == []


def test_a_generation_is_proven_only_by_the_stamp_its_search_read_first():
    reads, _, _ = readers(beat_ms=10_000)
    assert reads.covers(9_000) is False, "no search has run on this thread"
    statements = []
    assert reads.stamped.run(lambda cur: statements.append("search") or "page") == "page"
    assert statements == ["search"] and reads.reader.run_statements[0].startswith("SELECT beat_ms")
    assert reads.covers(9_900) is True
    assert reads.covers(9_901) is False      # within the clock skew
    assert reads.covers(None) is False
    reads.reader.beat_ms = 20_000   # a later heartbeat proves nothing until a search reads it
    assert reads.covers(10_000) is False


def test_without_a_reader_the_writer_serves_and_nothing_is_proven():
    writer = FakeDatabase("writer")
    reads = Readers(writer)
    assert reads.query("SELECT 1") == ([{"served_by": "writer"}], False)
    assert reads.covers(0) is False and reads.stamped is None and reads.status() == {"configured": False}


def test_a_generation_carries_its_birth_and_an_old_one_proves_nothing():
    born = generation_born_ms(new_generation())
    assert born is not None and born > 1_700_000_000_000
    assert generation_born_ms("3f2a9c0d1e4b5a69") is None
