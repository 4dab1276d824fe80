"""The shop's cursor binds parameters itself for ints and NULLs (adapters/db.py, Cursor._mogrify):
every statement it sends must be the one the driver would have sent."""
import datetime
import decimal

import pymysql.cursors
import pytest

from chalicelib import bootstrap

VALUES = [0, 1, -7, 2**63 - 1, 10**30, None, True, False, 1.5, decimal.Decimal("12.30"), "", "plain",
          "it's", 'say "hi"', "back\\slash", "nul\x00byte", "line\nbreak", "%s %% 100%", "中文 ü",
          b"\x00\xff'", datetime.datetime(2026, 12, 7, 1, 2, 3, 456789), datetime.date(2026, 12, 7)]


@pytest.fixture
def conn(clean_db):
    with bootstrap.database().connection() as conn:
        yield conn


def test_every_value_is_bound_as_the_driver_binds_it(conn):
    ours, drivers = conn.cursor(), pymysql.cursors.Cursor(conn)
    query = "SELECT " + ", ".join(["%s"] * len(VALUES))
    assert ours.mogrify(query, VALUES) == drivers.mogrify(query, VALUES)
    assert ours.mogrify(query, tuple(VALUES)) == drivers.mogrify(query, tuple(VALUES))
    named = {"a": 5, "b": None, "c": "x'y"}
    assert ours.mogrify("SELECT %(a)s, %(b)s, %(c)s", named) == drivers.mogrify("SELECT %(a)s, %(b)s, %(c)s", named)


def test_a_string_that_looks_like_sql_stays_one_value(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT %s AS v, %s AS n, %s AS z", ["1' OR '1'='1", 42, None])
        assert cur.fetchone() == {"v": "1' OR '1'='1", "n": 42, "z": None}


def test_executemany_folds_rows_through_the_same_binding(conn):
    with conn.cursor() as cur:
        cur.execute("CREATE TEMPORARY TABLE bind_check (n BIGINT NULL, s VARCHAR(20) NULL)")
        rows = [(1, "a'b"), (None, None), (-3, "%s")]
        cur.executemany("INSERT INTO bind_check (n, s) VALUES (%s, %s)", rows)
        cur.execute("SELECT n, s FROM bind_check ORDER BY COALESCE(n, 0)")
        assert [(r["n"], r["s"]) for r in cur.fetchall()] == [(-3, "%s"), (None, None), (1, "a'b")]


def test_a_wrong_number_of_parameters_is_the_drivers_programming_error(conn):
    with conn.cursor() as cur, pytest.raises(pymysql.err.ProgrammingError):
        cur.execute("SELECT %s, %s", [1])
