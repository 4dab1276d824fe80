"""The vocabulary of the search_terms index that its writer
(adapters/search_index.py) and both read plans (adapters/search_match.py,
adapters/search_broad.py) share: the listing states copied on the postings,
relevance tiers, and the SQL pieces that read postings (atoms, probes, filters)."""
from chalicelib.domain.search_text import MAX_QUERY_TERMS

# The listing state, in search_meta.active and on every posting (migration
# 0014): in_stock=true is then checked on the index entry like the other
# filters, not by reading each candidate's products row (one random read
# per candidate: a broad in-stock query counted up to TOTAL_CAP of them).
# (1 stays "for sale": a new migration only rewrites the postings of sold-out products.)
NOT_LISTED, LISTED_IN_STOCK, LISTED_SOLD_OUT = 0, 1, 2


def listing(status, stock):
    if str(status).strip().lower() != "active":
        return NOT_LISTED
    return LISTED_IN_STOCK if int(stock) > 0 else LISTED_SOLD_OUT


def listed(alias, in_stock):
    return f"{alias}.active = {LISTED_IN_STOCK}" if in_stock else f"{alias}.active <> {NOT_LISTED}"


# Relevance: each term adds TIER_WEIGHT * (2 - tier of its best match), and
# one more when it is found in the name, so a match as typed outranks a
# pinyin or typo match whatever the name hits (at most MAX_QUERY_TERMS).
TIER_WEIGHT = MAX_QUERY_TERMS + 1
TIERS = 3


def tier_score(tier):
    return TIER_WEIGHT * (TIERS - 1 - tier)


# An atom of more words is probed in the product's own terms (one dive into
# ix_search_terms_product) rather than once per word: with the index in the
# buffer pool, one dive beats two (Zipf misses at 1M: p99 76 -> 55 ms with 1 vs 8).
PROBE_WORDS = 1


def probe(table, cond):
    """1 if a row of `table` meets `cond`, else 0: one index lookup per outer
    row. Written as a scalar subquery because the optimizer turns an EXISTS
    in WHERE into a semi-join that materialises every posting of the term."""
    return f"((SELECT 1 FROM {table} WHERE {cond} LIMIT 1) IS NOT NULL)"


def atom_sql(alias, atom):
    """The condition (and its argument) on `alias`.term of one atom: a prefix or an exact term."""
    kind, text = atom
    if kind == "prefix":
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return f"{alias}.term LIKE %s", escaped + "%"
    return f"{alias}.term = %s", text


def has(alias, pid, atom, words, extra=""):
    """1 if product `pid` has a posting of `atom`. Point lookups in its
    words' primary-key ranges (postings of one word are contiguous, so
    probes in id order stay on few pages), one per word: with `term IN`
    and a correlated product_id the server scans every listed posting.
    An atom of more than PROBE_WORDS words reads the product's own terms instead."""
    if words is not None and len(words) <= PROBE_WORDS:
        return ("(" + " OR ".join(probe(f"search_terms {alias} FORCE INDEX (PRIMARY)",
                                        f"{alias}.term = %s AND {alias}.product_id = {pid}{extra}")
                                  for _ in words) + ")", list(words))
    cond, arg = atom_sql(alias, atom)
    return (probe(f"search_terms {alias} FORCE INDEX (ix_search_terms_product)",
                  f"{alias}.product_id = {pid} AND {cond}{extra}"), [arg])


def filters(query, alias, listed_sql=None):
    """WHERE pieces (and args) of the query's filters on `alias`: a posting
    or search_meta row (the listing answers in_stock), or, given `listed_sql`,
    a products row."""
    where, args = [listed_sql or listed(alias, query.in_stock)], []
    if query.category is not None:
        where.append(f"{alias}.category = %s")
        args.append(query.category)
    if query.min_price is not None:
        where.append(f"{alias}.price_cents >= %s")
        args.append(query.min_price)
    if query.max_price is not None:
        where.append(f"{alias}.price_cents <= %s")
        args.append(query.max_price)
    return where, args


def prefix_words(cur, atom, most):
    """Up to `most` indexed words starting with a prefix atom (None if
    there are more), skipping from word to word: one index dive each, not
    a read of every posting (DISTINCT, GROUP BY and a correlated
    recursive CTE read them all)."""
    cond, arg = atom_sql("s", atom)
    words = []
    while len(words) <= most:
        after = "AND s.term > %s " if words else ""
        cur.execute(f"SELECT s.term FROM search_terms s FORCE INDEX (PRIMARY) WHERE {cond} {after}"
                    "ORDER BY s.term LIMIT 1", [arg] + words[-1:])
        row = cur.fetchone()
        if row is None:
            break
        words.append(row["term"])
    return words if len(words) <= most else None
