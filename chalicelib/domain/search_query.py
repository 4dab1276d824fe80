"""A search request: parsing and validation of the query parameters, the
canonical cache key, keyset cursors (and their signatures) and the page shape. Pure: no I/O."""
import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Optional

from chalicelib.domain import validation as v
from chalicelib.domain.errors import ValidationError
from chalicelib.domain.search_text import MAX_QUERY_CHARS, MAX_QUERY_TERMS, is_blank, query_terms, typo_budget

SORTS = ("relevance", "price_asc", "price_desc", "newest")
PARAMS = ("q", "category", "min_price", "max_price", "in_stock", "sort", "limit", "cursor", "typo")
MAX_PRICE_CENTS = 10**12
# The backend reads and caches pages of these sizes and a request gets its
# `limit` sliced from one, so `limit` cannot make every call a cache miss.
PAGE_SIZES = (20, 50, 100)
CACHE_FORMAT = 3   # cached pages carry their sort keys; 3: relevance scores carry match tiers
TOTAL_CAP = 10000  # matches counted exactly; beyond, `total` is this lower bound
MAX_CURSOR_CHARS = 512
CURSOR_MAC_CHARS = 22  # 128 bits of the HMAC-SHA256, base64url


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
    typo: bool = True                 # words of 5+ letters also match within one or two edits

    def canonical(self):
        """Everything that selects and orders the matches (not the page), with
        filters that select nothing away left out (min_price=0, max_price=10^12)."""
        return {
            "t": [[t.kind, t.text] for t in self.terms],
            "c": self.category, "lo": self.min_price or None,
            "hi": None if self.max_price == MAX_PRICE_CENTS else self.max_price,
            "s": self.in_stock, "o": self.sort,
            # Without a word typos could apply to, typo=false changes nothing.
            "ty": self.typo or not any(typo_budget(t.text) for t in self.terms if t.kind == "prefix"),
        }

    def backend_query(self):
        """The query the backend answers and the cache stores: the same matches
        and order, a page of the next size in PAGE_SIZES (see SearchService.search)."""
        return replace(self, limit=next(size for size in PAGE_SIZES if size >= self.limit))

    @property
    def fingerprint(self):
        return _sha256(self.canonical())[:16]

    @property
    def cache_hash(self):
        return _sha256({**self.canonical(), "a": list(self.after) if self.after else None, "n": self.limit,
                        "v": CACHE_FORMAT})

    def popularity_member(self):
        """The first-page request, as the warming job replays it."""
        canonical = self.canonical()
        params = {"q": " ".join(t.text for t in self.terms), "sort": self.sort,
                  "limit": str(self.backend_query().limit)}
        if self.category is not None:
            params["category"] = self.category
        if canonical["lo"] is not None:
            params["min_price"] = str(canonical["lo"])
        if canonical["hi"] is not None:
            params["max_price"] = str(canonical["hi"])
        if self.in_stock:
            params["in_stock"] = "true"
        if not canonical["ty"]:
            params["typo"] = "false"
        return json.dumps(params, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@dataclass
class SearchPage:
    items: list
    total: int
    next_cursor: Optional[str] = None
    keys: list = field(default_factory=list)   # each item's [sort key, id], to cut the page shorter
    total_exact: bool = True                   # False: total is a lower bound (counting stopped at a cap)

    def to_api(self):
        return {"items": self.items, "total": self.total, "total_exact": self.total_exact,
                "next_cursor": self.next_cursor}

    def to_cache(self):
        return {**self.to_api(), "keys": self.keys}


def cut_page(cached, query):
    """The page `query` asked for out of a cached backend_query() page: its
    first `limit` items, with a cursor after the last one when more follow."""
    page = {key: cached[key] for key in ("items", "total", "total_exact", "next_cursor")}
    if len(page["items"]) > query.limit:
        page["items"] = page["items"][:query.limit]
        page["next_cursor"] = encode_cursor(query, tuple(cached["keys"][query.limit - 1]))
    return page


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


class CursorSigner:
    """Signs the cursors this deployment hands out and refuses any other: a cursor is a
    position the backend reads from, and one a caller could write would be a new backend
    query and a new cache key for free. `<cursor>.<HMAC-SHA256 of it, truncated>`."""

    def __init__(self, secret):
        if not secret:
            raise ValueError("search cursors need a secret to be signed with")
        self._key = secret.encode()

    def _mac(self, cursor):
        digest = hmac.new(self._key, cursor.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode()[:CURSOR_MAC_CHARS]

    def sign(self, cursor):
        return f"{cursor}.{self._mac(cursor)}"

    def verify(self, signed):
        """The cursor `signed` carries; 400 unless this deployment signed it (crafted, changed,
        cut short, signed with another secret, or issued before cursors were signed)."""
        if not isinstance(signed, str) or len(signed) > MAX_CURSOR_CHARS:
            raise _bad_cursor("it is too long" if isinstance(signed, str) else "it is not a string")
        cursor, dot, mac = signed.rpartition(".")
        if not (dot and signed.isascii() and hmac.compare_digest(mac, self._mac(cursor))):
            raise _bad_cursor("it is not one this service issued")
        return cursor


def decode_cursor(raw, query):
    """The sort key a cursor carries, checked against this query's sort."""
    if len(raw) > MAX_CURSOR_CHARS:
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
    """Validate raw query-string parameters into a SearchQuery (400 on anything odd). A
    `cursor` is the position as the backend writes it: a caller's is verified first
    (CursorSigner.verify, in the search service)."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        names = [v.echo(name) for name in unknown[:v.MAX_ECHO_NAMES]]
        raise ValidationError(f"Unknown query parameter(s): {', '.join(names)}.",
                              details={"unknown_fields": names, "allowed": list(PARAMS)})
    for name, value in params.items():
        if not isinstance(value, str) or "\x00" in value:
            raise ValidationError(f"'{name}' is not a valid string.", details={"field": name})
    q = params.get("q") or ""
    if len(q) > MAX_QUERY_CHARS:
        raise ValidationError(f"'q' must be at most {MAX_QUERY_CHARS} characters.", details={"field": "q"})
    terms = query_terms(q)
    if not terms and not is_blank(q):
        # Only punctuation or emoji: browsing the whole catalog is not what was asked for.
        raise ValidationError("'q' has no letters or digits to search for; send an empty q to browse by the filters.",
                              details={"field": "q"})
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
    typo = v.query_bool(params, "typo")
    query = SearchQuery(tuple(terms), category.lower() or None, min_price, max_price, in_stock, sort, limit,
                        typo=typo is not False)
    cursor = params.get("cursor")
    if cursor:
        query = replace(query, after=decode_cursor(cursor, query))
    return query


def generation_born_ms(generation):
    """The birth new_generation() wrote into `generation`; None for one without (conservative)."""
    _, _, born = str(generation).rpartition("-")
    return int(born) if born.isdigit() else None
