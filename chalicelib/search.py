"""Product keyword search (docs/api.md "Search", docs/design.md section 4).

Three layers:

* The tokenizer (pure): text is NFKC-normalised and case-folded, then split
  into Latin-script *words* (runs of letters/digits) and *CJK runs* (Han, kana,
  Hangul). Punctuation and whitespace only separate tokens.
  - Words are indexed whole; a query word matches any indexed word it is a
    **prefix** of ("pho" finds "phone", "phones"), which is what shoppers type.
    Words mixing letters and digits are also indexed by their parts
    ("mate60" -> "mate60", "mate", "60").
  - CJK runs match by **substring**: every character (unigram) and adjacent
    pair (bigram) is indexed, so a query run of 1-2 characters is one exact
    lookup and a longer one intersects its bigrams and is then verified exactly
    against the normalised text (search_docs).
  - Every query term must match the name or the description (AND).
* A `SearchBackend` (the seam): `search(SearchQuery) -> SearchPage` and
  `index(cur, rows)`. `MySQLSearchBackend` is the implementation; an
  OpenSearch backend would implement the same two methods (its `index` would
  write an outbox row in the product transaction for a shipper to send).
* `SearchService`: the read-through cache around a backend, keys
  `product_search:{generation}:{sha256}`, one loader per hot key, X-Cache
  states HIT / MISS / BYPASS / STALE, and the cache-warming job.
"""
import base64
import binascii
import hashlib
import json
import logging
import random
import re
import time
import unicodedata
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Optional, Protocol

from .cache import CacheUnavailable
from .errors import ServiceUnavailable, ValidationError
from .unit_of_work import PRODUCT_COLUMNS
from . import validation as v

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------

MAX_TERM_CHARS = 64          # search_terms.term is VARCHAR(64)
MAX_QUERY_CHARS = 200
MAX_QUERY_TERMS = 10
MAX_BIGRAMS_PER_RUN = 6      # candidates only; the exact check follows
SORTS = ("relevance", "price_asc", "price_desc", "newest")
PARAMS = ("q", "category", "min_price", "max_price", "in_stock", "sort", "limit", "cursor")
MAX_PRICE_CENTS = 10**12

_CJK = ("\u1100-\u11ff\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3130-\u318f\u31a0-\u31ff"
        "\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\U00020000-\U0003134f")
_TOKEN = re.compile(f"([{_CJK}]+)|([^\\W_{_CJK}]+)")
_ALNUM_PARTS = re.compile(r"[^\W\d_]+|\d+")


def normalize(text):
    """NFKC + casefold: full-width forms, ligatures and case all compare equal."""
    return unicodedata.normalize("NFKC", text or "").casefold()


def tokens(text):
    """[(kind, token)] with kind 'word' or 'cjk', in order, from raw text."""
    out = []
    for match in _TOKEN.finditer(normalize(text)):
        if match.group(1):
            out.append(("cjk", match.group(1)))
        else:
            out.append(("word", match.group(2)[:MAX_TERM_CHARS]))
    return out


def _word_terms(word):
    yield word
    parts = _ALNUM_PARTS.findall(word)
    if len(parts) > 1:
        yield from parts


def _cjk_terms(run):
    for i, char in enumerate(run):
        yield char
        if i + 1 < len(run):
            yield run[i:i + 2]


def text_terms(text):
    terms = set()
    for kind, token in tokens(text):
        terms.update(_word_terms(token) if kind == "word" else _cjk_terms(token))
    return terms


def document_terms(name, description):
    """term -> in_name (1 if it occurs in the name) for one product."""
    in_name = text_terms(name)
    terms = {term: 0 for term in text_terms(description)}
    terms.update({term: 1 for term in in_name})
    return terms


@dataclass(frozen=True, order=True)
class Term:
    """One query term. kind: 'prefix' (Latin word), 'exact' (CJK run of 1-2
    characters) or 'substr' (longer CJK run: bigram candidates + exact check)."""
    kind: str
    text: str

    def atoms(self):
        """Conditions on search_terms.term that every match satisfies."""
        if self.kind == "prefix":
            return [("prefix", self.text)]
        if self.kind == "exact":
            return [("exact", self.text)]
        grams = list(dict.fromkeys(self.text[i:i + 2] for i in range(len(self.text) - 1)))
        if len(grams) > MAX_BIGRAMS_PER_RUN:
            step = (len(grams) - 1) / (MAX_BIGRAMS_PER_RUN - 1)
            grams = list(dict.fromkeys(grams[round(i * step)] for i in range(MAX_BIGRAMS_PER_RUN)))
        return [("exact", g) for g in grams]


def query_terms(q):
    """The distinct terms of a query string, in a canonical order."""
    terms = set()
    for kind, token in tokens(q):
        if kind == "word":
            terms.add(Term("prefix", token))
        else:
            terms.add(Term("exact" if len(token) <= 2 else "substr", token))
    return sorted(terms)


# --------------------------------------------------------------------------
# Query, page, cursor
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class SearchQuery:
    terms: tuple = ()
    category: Optional[str] = None
    min_price: Optional[int] = None
    max_price: Optional[int] = None
    in_stock: bool = False
    sort: str = "relevance"
    limit: int = 20
    after: Optional[tuple] = None     # the last sort key of the previous page

    def canonical(self):
        """Everything that selects and orders the matches (not the page)."""
        return {
            "t": [[t.kind, t.text] for t in self.terms],
            "c": self.category, "lo": self.min_price, "hi": self.max_price,
            "s": self.in_stock, "o": self.sort,
        }

    @property
    def fingerprint(self):
        return _sha256(self.canonical())[:16]

    @property
    def cache_hash(self):
        return _sha256({**self.canonical(), "a": list(self.after) if self.after else None, "n": self.limit})

    def popularity_member(self):
        """The first-page request, as the warming job replays it."""
        params = {"q": " ".join(t.text for t in self.terms), "sort": self.sort, "limit": str(self.limit)}
        if self.category is not None:
            params["category"] = self.category
        if self.min_price is not None:
            params["min_price"] = str(self.min_price)
        if self.max_price is not None:
            params["max_price"] = str(self.max_price)
        if self.in_stock:
            params["in_stock"] = "true"
        return json.dumps(params, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@dataclass
class SearchPage:
    items: list
    total: int
    next_cursor: Optional[str] = None

    def to_api(self):
        return {"items": self.items, "total": self.total, "next_cursor": self.next_cursor}


def _sha256(value):
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False,
                                     separators=(",", ":")).encode()).hexdigest()


_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}$")


def encode_cursor(query, key):
    raw = json.dumps({"f": query.fingerprint, "k": list(key)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _bad_cursor(why="it is malformed"):
    return ValidationError(f"'cursor' is invalid: {why}. Use the next_cursor of the previous page "
                           "with the same q, filters and sort.", details={"field": "cursor"})


def decode_cursor(raw, query):
    """The sort key a cursor carries, checked against this query's sort."""
    if len(raw) > 512:
        raise _bad_cursor("it is too long")
    try:
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode())
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _bad_cursor() from None
    if not isinstance(data, dict) or not isinstance(data.get("k"), list) or len(data["k"]) != 2:
        raise _bad_cursor()
    if data.get("f") != query.fingerprint:
        raise _bad_cursor("it belongs to another query")
    first, last_id = data["k"]
    if isinstance(last_id, bool) or not isinstance(last_id, int) or not 0 <= last_id < 2**63:
        raise _bad_cursor()
    if query.sort == "newest":
        if not isinstance(first, str) or not _DATETIME.match(first):
            raise _bad_cursor()
        try:
            datetime.strptime(first, "%Y-%m-%d %H:%M:%S.%f")
        except ValueError:
            raise _bad_cursor() from None
    elif isinstance(first, bool) or not isinstance(first, int) or not 0 <= first <= MAX_PRICE_CENTS:
        raise _bad_cursor()
    return (first, last_id)


def parse_query(params):
    """Validate raw query-string parameters into a SearchQuery (400 on anything odd)."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise ValidationError(f"Unknown query parameter(s): {', '.join(unknown)}.",
                              details={"unknown_fields": unknown, "allowed": list(PARAMS)})
    for name, value in params.items():
        if not isinstance(value, str) or "\x00" in value:
            raise ValidationError(f"'{name}' is not a valid string.", details={"field": name})
    q = params.get("q") or ""
    if len(q) > MAX_QUERY_CHARS:
        raise ValidationError(f"'q' must be at most {MAX_QUERY_CHARS} characters.", details={"field": "q"})
    terms = query_terms(q)
    if len(terms) > MAX_QUERY_TERMS:
        raise ValidationError(f"'q' must have at most {MAX_QUERY_TERMS} distinct terms.", details={"field": "q"})
    category = (params.get("category") or "").strip()
    if len(category) > 64:
        raise ValidationError("'category' must be at most 64 characters.", details={"field": "category"})
    min_price = v.query_int(params, "min_price", None, 0, MAX_PRICE_CENTS)
    max_price = v.query_int(params, "max_price", None, 0, MAX_PRICE_CENTS)
    if min_price is not None and max_price is not None and min_price > max_price:
        raise ValidationError("'min_price' must not be greater than 'max_price'.", details={"field": "min_price"})
    in_stock = bool(v.query_bool(params, "in_stock"))
    sort = params.get("sort") or "relevance"
    v.choice(sort, "sort", SORTS)
    limit = v.query_int(params, "limit", 20, 1, 100)
    query = SearchQuery(tuple(terms), category.lower() or None, min_price, max_price, in_stock, sort, limit)
    cursor = params.get("cursor")
    if cursor:
        query = replace(query, after=decode_cursor(cursor, query))
    return query


# --------------------------------------------------------------------------
# Backend seam
# --------------------------------------------------------------------------

class SearchBackend(Protocol):
    def search(self, query: SearchQuery) -> SearchPage:
        """One page of active products matching `query`; raises ServiceUnavailable."""

    def index(self, cur, rows) -> None:
        """(Re)index full product rows inside the product write transaction `cur`."""


def _format_ts(ts):
    return ts.strftime("%Y-%m-%d %H:%M:%S.%f")


# ORDER BY and the keyset condition "strictly after the cursor" for each sort.
_ORDER = {
    "relevance": ("score DESC, id ASC", "(score < %s OR (score = %s AND id > %s))", "score"),
    "price_asc": ("price_cents ASC, id ASC", "(price_cents > %s OR (price_cents = %s AND id > %s))", "price_cents"),
    "price_desc": ("price_cents DESC, id ASC", "(price_cents < %s OR (price_cents = %s AND id > %s))", "price_cents"),
    "newest": ("created_at DESC, id DESC", "(created_at < %s OR (created_at = %s AND id < %s))", "created_at"),
}


def _meta(row):
    """The search_meta values of a full product row."""
    return (1 if str(row["status"]).strip().lower() == "active" else 0, row["category"],
            int(row["price_cents"]), row["created_at"])


class MySQLSearchBackend:
    """Search over the search_terms index. Status, category, price and
    created_at of the candidates come from search_meta (a compact copy kept
    in the product write transaction), so totals, filters, sorts and keysets
    are answered without the wide products rows; products is read for the
    page only, plus the stock of the surviving candidates when in_stock=true
    (orders change stock with plain UPDATEs, so it is never copied)."""

    DRIVER_SAMPLE = 5000   # cap when estimating how selective each term is

    def __init__(self, db):
        self.db = db

    # --- writes -----------------------------------------------------------

    def index(self, cur, rows):
        rows = [r for r in rows if r is not None]
        if not rows:
            return
        ids = sorted({int(r["id"]) for r in rows})
        wanted = {int(r["id"]): document_terms(r["name"], r.get("description") or "") for r in rows}
        docs = {int(r["id"]): (normalize(r["name"]), normalize(r.get("description") or "")) for r in rows}
        marks = ",".join(["%s"] * len(ids))
        # A plain read: the caller holds the product row (created or locked
        # FOR UPDATE), so no other transaction is re-indexing these products;
        # a locking read here would gap-lock and deadlock concurrent creates.
        cur.execute(f"SELECT product_id, term, in_name FROM search_terms WHERE product_id IN ({marks})", ids)
        existing = {}
        for row in cur.fetchall():
            existing.setdefault(int(row["product_id"]), {})[row["term"]] = int(row["in_name"])
        upserts = []
        for pid in ids:
            have, want = existing.get(pid, {}), wanted[pid]
            stale = sorted(t for t in have if t not in want)
            for start in range(0, len(stale), 500):
                chunk = stale[start:start + 500]
                cur.execute(f"DELETE FROM search_terms WHERE product_id = %s AND term IN ({','.join(['%s'] * len(chunk))})",
                            (pid, *chunk))
            upserts += [(t, pid, flag) for t, flag in want.items() if have.get(t) != flag]
        upserts.sort()
        for start in range(0, len(upserts), 1000):
            chunk = upserts[start:start + 1000]
            cur.execute("INSERT INTO search_terms (term, product_id, in_name) VALUES "
                        + ",".join(["(%s,%s,%s)"] * len(chunk))
                        + " ON DUPLICATE KEY UPDATE in_name = VALUES(in_name)",
                        [value for triple in chunk for value in triple])
        cur.execute(f"SELECT product_id, name_norm, body_norm FROM search_docs WHERE product_id IN ({marks})", ids)
        have_docs = {int(r["product_id"]): (r["name_norm"], r["body_norm"]) for r in cur.fetchall()}
        changed = [(pid, *docs[pid]) for pid in ids if have_docs.get(pid) != docs[pid]]
        for start in range(0, len(changed), 200):
            chunk = changed[start:start + 200]
            cur.execute("INSERT INTO search_docs (product_id, name_norm, body_norm) VALUES "
                        + ",".join(["(%s,%s,%s)"] * len(chunk))
                        + " ON DUPLICATE KEY UPDATE name_norm = VALUES(name_norm), body_norm = VALUES(body_norm)",
                        [value for triple in chunk for value in triple])
        # What filters and sorts read (search_meta); rewritten whenever the
        # product's status, category, price or created_at differ from it.
        metas = {int(r["id"]): _meta(r) for r in rows}
        cur.execute(f"SELECT product_id, active, category, price_cents, created_at FROM search_meta "
                    f"WHERE product_id IN ({marks})", ids)
        have_meta = {int(r["product_id"]): (int(r["active"]), r["category"], int(r["price_cents"]), r["created_at"])
                     for r in cur.fetchall()}
        changed = [(pid, *metas[pid]) for pid in ids if have_meta.get(pid) != metas[pid]]
        for start in range(0, len(changed), 500):
            chunk = changed[start:start + 500]
            cur.execute("INSERT INTO search_meta (product_id, active, category, price_cents, created_at) VALUES "
                        + ",".join(["(%s,%s,%s,%s,%s)"] * len(chunk))
                        + " ON DUPLICATE KEY UPDATE active = VALUES(active), category = VALUES(category), "
                        "price_cents = VALUES(price_cents), created_at = VALUES(created_at)",
                        [value for row in chunk for value in row])

    # --- reads ------------------------------------------------------------

    @staticmethod
    def _atom_sql(alias, atom):
        kind, text = atom
        if kind == "prefix":
            escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            return f"{alias}.term LIKE %s", escaped + "%"
        return f"{alias}.term = %s", text

    def _estimate(self, cur, atoms):
        """Capped match counts per atom (each a bounded index range read)."""
        parts, args = [], []
        for i, atom in enumerate(atoms):
            cond, arg = self._atom_sql("s", atom)
            parts.append(f"(SELECT COUNT(*) FROM (SELECT 1 FROM search_terms s WHERE {cond} "
                         f"LIMIT {self.DRIVER_SAMPLE}) x{i}) AS c{i}")
            args.append(arg)
        cur.execute("SELECT " + ", ".join(parts), args)
        row = cur.fetchone()
        return [int(row[f"c{i}"]) for i in range(len(atoms))]

    def _merge_source(self, query):
        """Broad queries: read every term's posting range once (index-only,
        sequential) and intersect by grouping, instead of probing per row."""
        branches, args = [], []
        for term in query.terms:
            if term.kind == "substr":
                for _, gram in term.atoms():
                    branches.append("SELECT product_id, 0 AS h FROM search_terms WHERE term = %s")
                    args.append(gram)
            elif term.kind == "exact":
                branches.append("SELECT product_id, in_name AS h FROM search_terms WHERE term = %s")
                args.append(term.text)
            else:
                cond, arg = self._atom_sql("search_terms", ("prefix", term.text))
                branches.append(f"SELECT product_id, MAX(in_name) AS h FROM search_terms WHERE {cond} GROUP BY product_id")
                args.append(arg)
        source = (f"(SELECT product_id, SUM(h) AS score FROM ({' UNION ALL '.join(branches)}) u "
                  f"GROUP BY product_id HAVING COUNT(*) = {len(branches)}) c "
                  "JOIN search_meta p ON p.product_id = c.product_id")
        return source, args

    def _match_sql(self, query, atoms, driver, with_score, merge=False):
        """SELECT id, price_cents, created_at, score of every match (no paging).

        With terms, everything but the stock comes from search_meta (compact,
        stays in the buffer pool); `products` is probed for stock only, and
        only for candidates that pass every other condition (it is the last
        condition of the WHERE). Without terms (browsing by filters), the
        products indexes on (status, price|created_at) serve the query."""
        verify = [t for t in query.terms if t.kind == "substr"]
        if merge:
            source, source_args = self._merge_source(query)
        elif driver is not None:
            # One range read of the rarest atom; MAX(in_name) is that term's
            # name hit, so relevance needs no probe for it.
            cond, arg = self._atom_sql("s", driver)
            source = (f"(SELECT s.product_id, MAX(s.in_name) AS h FROM search_terms s WHERE {cond} "
                      "GROUP BY s.product_id) c JOIN search_meta p ON p.product_id = c.product_id")
            source_args = [arg]
        else:
            source, source_args = "products p", []
        indexed = merge or driver is not None
        pid = "p.product_id" if indexed else "p.id"
        if verify:
            source += f" JOIN search_docs d ON d.product_id = {pid}"
        where, where_args = ["p.active = 1" if indexed else "p.status = 'active'"], []
        if query.category is not None:
            where.append("p.category = %s")
            where_args.append(query.category)
        if query.min_price is not None:
            where.append("p.price_cents >= %s")
            where_args.append(query.min_price)
        if query.max_price is not None:
            where.append("p.price_cents <= %s")
            where_args.append(query.max_price)
        for atom in ([] if merge else atoms):
            if atom == driver:
                continue
            cond, arg = self._atom_sql("t", atom)
            where.append(f"EXISTS (SELECT 1 FROM search_terms t WHERE t.product_id = {pid} AND {cond})")
            where_args.append(arg)
        for term in verify:
            where.append("(LOCATE(%s, d.name_norm) > 0 OR LOCATE(%s, d.body_norm) > 0)")
            where_args += [term.text, term.text]
        if query.in_stock:
            # Last: stock is not denormalised (orders change it with plain UPDATEs).
            if indexed:
                where.append("EXISTS (SELECT 1 FROM products ps WHERE ps.id = p.product_id AND ps.stock > 0)")
            else:
                where.append("p.stock > 0")
        score, score_args = "0", []
        if with_score and merge:
            pieces = ["c.score"]
            for term in verify:
                pieces.append("(LOCATE(%s, d.name_norm) > 0)")
                score_args.append(term.text)
            score = "(" + " + ".join(pieces) + ")"
        elif with_score and query.terms:
            pieces = []
            for term in query.terms:
                if term.kind == "substr":
                    pieces.append("(LOCATE(%s, d.name_norm) > 0)")
                    score_args.append(term.text)
                elif term.atoms()[0] == driver:
                    pieces.append("c.h")
                else:
                    cond, arg = self._atom_sql("n", term.atoms()[0])
                    pieces.append(f"EXISTS (SELECT 1 FROM search_terms n WHERE n.product_id = {pid} "
                                  f"AND {cond} AND n.in_name = 1)")
                    score_args.append(arg)
            score = "(" + " + ".join(pieces) + ")"
        hint = "STRAIGHT_JOIN " if indexed else ""
        sql = (f"SELECT {hint}{pid} AS id, p.price_cents AS price_cents, p.created_at AS created_at, {score} AS score "
               f"FROM {source} WHERE {' AND '.join(where)}")
        args = score_args + source_args + where_args
        return sql, args

    def search(self, query):
        def work(cur):
            return self._search(cur, query)

        return self.db.run(work)

    def _search(self, cur, query):
        atoms = list(dict.fromkeys(atom for term in query.terms for atom in term.atoms()))
        driver, merge = None, False
        if atoms:
            # Selective: drive from the rarest term and probe the others per
            # candidate. Broad (every term has DRIVER_SAMPLE+ postings): merge.
            counts = self._estimate(cur, atoms)
            if min(counts) == 0:
                return SearchPage([], 0, None)
            driver = atoms[counts.index(min(counts))]
            merge = min(counts) >= self.DRIVER_SAMPLE
        order, after_sql, first_col = _ORDER[query.sort]
        match_sql, match_args = self._match_sql(query, atoms, driver, query.sort == "relevance", merge)
        if driver is not None and not merge:
            # Selective: fewer than DRIVER_SAMPLE candidates. One pass over
            # them: the server counts (a window over every match, taken
            # before the keyset condition), sorts and keeps the page, so only
            # limit+1 rows cross the wire (decoding every match in Python
            # cost more than the query itself).
            keys = self._keyset_rows(
                cur, query, order, after_sql, match_args,
                f"SELECT id, price_cents, created_at, score, total FROM "
                f"(SELECT m.*, COUNT(*) OVER () AS total FROM ({match_sql}) m) w")
            if keys:
                total = int(keys[0]["total"])
            elif query.after is None:
                total = 0
            else:  # past the last match: the window saw no row to carry the count
                cur.execute(f"SELECT COUNT(*) AS n FROM ({match_sql}) m", match_args)
                total = int(cur.fetchone()["n"])
            return self._page(cur, query, keys, total, first_col)
        keys = self._keyset_rows(cur, query, order, after_sql, match_args,
                                 f"SELECT id, price_cents, created_at, score FROM ({match_sql}) m")
        more = len(keys) > query.limit
        keys = keys[:query.limit]
        count_sql, count_args = self._match_sql(query, atoms, driver, False, merge)
        cur.execute(f"SELECT COUNT(*) AS n FROM ({count_sql}) m", count_args)
        total = int(cur.fetchone()["n"])
        return self._page(cur, query, list(keys) + ([None] if more else []), total, first_col)

    @staticmethod
    def _keyset_rows(cur, query, order, after_sql, match_args, base_sql):
        """Up to limit+1 sort-key rows of `base_sql` after the cursor, in sort order."""
        sql, args = base_sql, list(match_args)
        if query.after is not None:
            first, last_id = query.after
            sql += " WHERE " + after_sql
            args += [first, first, last_id]
        cur.execute(sql + f" ORDER BY {order} LIMIT %s", args + [query.limit + 1])
        return list(cur.fetchall())

    def _page(self, cur, query, keys, total, first_col):
        """keys: up to limit+1 sort-key rows (an extra one means there is more)."""
        more = len(keys) > query.limit
        keys = keys[:query.limit]
        items = []
        if keys:
            from .catalog import to_api
            ids = [int(k["id"]) for k in keys]
            cur.execute(f"SELECT {PRODUCT_COLUMNS} FROM products WHERE id IN ({','.join(['%s'] * len(ids))})", ids)
            by_id = {int(r["id"]): r for r in cur.fetchall()}
            items = [to_api(by_id[i]) for i in ids if i in by_id]
        next_cursor = None
        if more and keys:
            last = keys[-1]
            first = last[first_col]
            first = _format_ts(first) if query.sort == "newest" else int(first)
            next_cursor = encode_cursor(query, (first, int(last["id"])))
        return SearchPage(items, total, next_cursor)


def like_scan_search(db, query):
    """Baseline for bench/search only: the same AND semantics with LIKE '%term%'
    on every active product (a full scan). Not used by the API."""
    where, args = ["status = 'active'"], []
    for term in query.terms:
        where.append("(name LIKE %s OR description LIKE %s)")
        args += [f"%{term.text}%", f"%{term.text}%"]
    rows = db.query(f"SELECT id FROM products WHERE {' AND '.join(where)} ORDER BY id LIMIT %s", args + [query.limit])
    total = db.query(f"SELECT COUNT(*) AS n FROM products WHERE {' AND '.join(where)}", args)[0]["n"]
    return [r["id"] for r in rows], total


# --------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------

def _jitter_ms(seconds):
    return max(1, int(seconds * 1000 * random.uniform(0.9, 1.1)))


class SearchService:
    """Read-through cache around a SearchBackend.

    Freshness: the generation is read *before* the backend is queried, and
    every product write bumps it after commit. A reader that raced a write
    stores its (possibly old) page under the old generation, which no request
    reads once the write has returned."""

    LEASE_MS = 3000
    WAIT_SECONDS = 0.3
    POPULAR_DAYS = 2

    def __init__(self, backend, gateway, generation, ttl_seconds=60, stale_seconds=86400, clock=time.time):
        self.backend = backend
        self.gateway = gateway
        self.generation = generation
        self.ttl_seconds = ttl_seconds
        self.stale_seconds = stale_seconds
        self.clock = clock

    def key(self, generation, query):
        return self.gateway.key(f"product_search:{generation}:{query.cache_hash}")

    def stale_key(self, query):
        return self.gateway.key(f"product_search:stale:{query.cache_hash}")

    def popular_key(self, day=None):
        day = day or datetime.fromtimestamp(self.clock(), timezone.utc).strftime("%Y%m%d")
        return self.gateway.key(f"product_search:popular:{day}")

    def search_params(self, params):
        return self.search(parse_query(params))

    def search(self, query):
        """(page dict, X-Cache state)."""
        try:
            generation = self.generation.current()
        except CacheUnavailable:
            return self.backend.search(query).to_api(), "BYPASS"
        key = self.key(generation, query)
        try:
            cached = self._get(key, query)
        except CacheUnavailable:
            return self.backend.search(query).to_api(), "BYPASS"
        if cached is not None:
            return cached, "HIT"
        return self._load(key, query)

    def _get(self, key, query):
        record = query.after is None and bool(query.terms or query.category)

        def fn(r):
            if not record:
                return r.get(key)
            pipe = r.pipeline(transaction=False)
            pipe.get(key)
            popular = self.popular_key()
            pipe.zincrby(popular, 1, query.popularity_member())
            pipe.expire(popular, 86400 * (self.POPULAR_DAYS + 1))
            return pipe.execute()[0]

        raw = self.gateway.call(fn)
        return json.loads(raw) if raw is not None else None

    def _load(self, key, query):
        lease = key + ":loading"
        try:
            leader = bool(self.gateway.call(lambda r: r.set(lease, "1", nx=True, px=self.LEASE_MS)))
        except CacheUnavailable:
            return self._from_backend(query, None)
        if not leader:
            deadline = time.monotonic() + self.WAIT_SECONDS
            while time.monotonic() < deadline:
                time.sleep(0.01)
                try:
                    raw = self.gateway.call(lambda r: r.get(key))
                except CacheUnavailable:
                    break
                if raw is not None:
                    return json.loads(raw), "HIT"
        try:
            return self._from_backend(query, key)
        finally:
            if leader:
                try:
                    self.gateway.call(lambda r: r.delete(lease))
                except CacheUnavailable:
                    pass

    def _from_backend(self, query, key):
        try:
            page = self.backend.search(query).to_api()
        except ServiceUnavailable:
            try:
                raw = self.gateway.call(lambda r: r.get(self.stale_key(query)))
            except CacheUnavailable:
                raw = None
            if raw is None:
                raise
            return json.loads(raw), "STALE"
        if key is None:
            return page, "BYPASS"
        payload = json.dumps(page, separators=(",", ":"), ensure_ascii=False)

        def store(r):
            pipe = r.pipeline(transaction=False)
            pipe.set(key, payload, px=_jitter_ms(self.ttl_seconds))
            pipe.set(self.stale_key(query), payload, px=_jitter_ms(self.stale_seconds))
            pipe.execute()

        try:
            self.gateway.call(store)
        except CacheUnavailable:
            return page, "BYPASS"
        return page, "MISS"

    # --- warming ----------------------------------------------------------

    def popular_searches(self, n=50):
        """The most frequent first-page searches of the last POPULAR_DAYS days."""
        now = self.clock()
        days = [datetime.fromtimestamp(now, timezone.utc) - timedelta(days=d) for d in range(self.POPULAR_DAYS)]
        keys = [self.popular_key(d.strftime("%Y%m%d")) for d in days]
        scores = {}
        for k in keys:
            for member, score in self.gateway.call(lambda r: r.zrevrange(k, 0, 999, withscores=True)):
                scores[member] = scores.get(member, 0) + score
        ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:n]
        # Keep the sets small: only the top 1000 of each day survive.
        for k in keys:
            self.gateway.call(lambda r: r.zremrangebyrank(k, 0, -1001))
        return [json.loads(member) for member, _ in ranked]


def top_product_ids(db, n=100, recent_orders=100000):
    """Best sellers among recent orders, topped up with the newest active products."""
    ids = []
    try:
        rows = db.query(
            "SELECT oi.product_id AS id FROM order_items oi JOIN products p ON p.id = oi.product_id "
            "WHERE p.status = 'active' AND oi.order_id > (SELECT COALESCE(MAX(id), 0) - %s FROM orders) "
            "GROUP BY oi.product_id ORDER BY SUM(oi.quantity) DESC LIMIT %s", (recent_orders, n))
        ids = [int(r["id"]) for r in rows]
    except ServiceUnavailable:
        raise
    except Exception as exc:  # the orders tables may not exist yet in some deployments
        log.warning("best sellers unavailable: %s", exc)
    if len(ids) < n:
        rows = db.query("SELECT id FROM products WHERE status = 'active' ORDER BY created_at DESC LIMIT %s", (n,))
        ids += [int(r["id"]) for r in rows if int(r["id"]) not in ids]
    return ids[:n]


def warm_caches(top_products=100, searches=(), popular=50):
    """Preload the product cache for the top products and the frequent searches
    (given ones plus the most popular recorded ones). Returns a summary dict."""
    from . import bootstrap

    summary = {"products": {}, "searches": {}, "errors": 0}
    catalog = bootstrap.catalog()
    for pid in top_product_ids(bootstrap.database(), top_products):
        try:
            _, state = catalog.get(pid)
        except Exception as exc:
            summary["errors"] += 1
            log.warning("warming product %s failed: %s", pid, exc)
            continue
        summary["products"][state] = summary["products"].get(state, 0) + 1
    svc = service()
    wanted = [dict(p) for p in searches]
    try:
        wanted += svc.popular_searches(popular)
    except CacheUnavailable as exc:
        log.warning("popular searches unavailable: %s", exc)
    seen = set()
    for params in wanted:
        try:
            query = parse_query(params)
        except ValidationError as exc:
            summary["errors"] += 1
            log.warning("skipping search %s: %s", params, exc.message)
            continue
        if query.cache_hash in seen:
            continue
        seen.add(query.cache_hash)
        try:
            _, state = svc.search(query)
        except Exception as exc:
            summary["errors"] += 1
            log.warning("warming search %s failed: %s", params, exc)
            continue
        summary["searches"][state] = summary["searches"].get(state, 0) + 1
    return summary


def service():
    """The process-wide SearchService (rebuilt after bootstrap.reset())."""
    from . import bootstrap

    s = bootstrap.settings()
    return bootstrap._once("search_service", lambda: SearchService(
        MySQLSearchBackend(bootstrap.database()),
        bootstrap.redis_gateway(),
        bootstrap.search_generation(),
        ttl_seconds=s.number("SEARCH_TTL_SECONDS"),
        stale_seconds=s.number("CACHE_STALE_SECONDS"),
    ))
