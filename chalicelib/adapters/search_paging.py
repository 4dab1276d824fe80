"""A search page from the sort-key rows a plan found: the sort orders and
their keyset conditions, the next cursor, and the products read for the page."""
from chalicelib.domain.search_query import SearchPage, encode_cursor
from chalicelib.domain.products import PRODUCT_COLUMNS
from chalicelib.adapters.db import placeholders

# ORDER BY, the keyset condition "strictly after the cursor" and the cursor's first column, per sort.
ORDER = {
    "relevance": ("score DESC, id ASC", "(score < %s OR (score = %s AND id > %s))", "score"),
    "price_asc": ("price_cents ASC, id ASC", "(price_cents > %s OR (price_cents = %s AND id > %s))", "price_cents"),
    "price_desc": ("price_cents DESC, id ASC", "(price_cents < %s OR (price_cents = %s AND id > %s))", "price_cents"),
    "newest": ("created_at DESC, id DESC", "(created_at < %s OR (created_at = %s AND id < %s))", "created_at"),
}


def _format_ts(ts):
    return ts.strftime("%Y-%m-%d %H:%M:%S.%f")


def _sort_key(row, query):
    """[sort value, id] of a match row, as a cursor carries it."""
    first = row[ORDER[query.sort][2]]
    return [_format_ts(first) if query.sort == "newest" else int(first), int(row["id"])]


def keyset_rows(cur, query, match_args, base_sql):
    """Up to limit+1 sort-key rows of `base_sql` after the cursor, in sort order."""
    order, after_sql, _ = ORDER[query.sort]
    sql, args = base_sql, list(match_args)
    if query.after is not None:
        first, last_id = query.after
        sql += " WHERE " + after_sql
        args += [first, first, last_id]
    cur.execute(sql + f" ORDER BY {order} LIMIT %s", args + [query.limit + 1])
    return list(cur.fetchall())


def page(cur, query, keys, total, total_cap):
    """keys: up to limit+1 sort-key rows (an extra one means there is more).
    A total above `total_cap` is reported as `total_cap`, not exact."""
    total_exact = total <= total_cap
    total = min(total, total_cap)
    more = len(keys) > query.limit
    keys = keys[:query.limit]
    items, item_keys = [], []
    if keys:
        from chalicelib.domain.products import to_api
        ids = [int(k["id"]) for k in keys]
        cur.execute(f"SELECT {PRODUCT_COLUMNS} FROM products WHERE id IN ({placeholders(len(ids))})", ids)
        by_id = {int(r["id"]): r for r in cur.fetchall()}
        for k in keys:
            if int(k["id"]) in by_id:
                items.append(to_api(by_id[int(k["id"])]))
                item_keys.append(_sort_key(k, query))
    next_cursor = encode_cursor(query, _sort_key(keys[-1], query)) if more and keys else None
    return SearchPage(items, total, next_cursor, item_keys, total_exact)
