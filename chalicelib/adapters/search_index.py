"""The write side of the MySQL search index: a product's postings
(search_terms), its normalised text (search_docs), the values filters and
sorts read (search_meta, copied on every posting) and the typo dictionary
(search_typos), all written inside the product's own transaction."""
from chalicelib.adapters.search_sql import LISTED_IN_STOCK, LISTED_SOLD_OUT, listing
from chalicelib.domain.search_text import dictionary_variants, document_terms, normalize
from chalicelib.adapters.db import placeholders


def meta(row):
    """The search_meta values of a full product row."""
    return (listing(row["status"], row["stock"]), row["category"],
            int(row["price_cents"]), row["created_at"])


def index(cur, rows):
    """Bring the index of these product rows (None: skipped) up to date with them."""
    rows = [r for r in rows if r is not None]
    if not rows:
        return
    ids = sorted({int(r["id"]) for r in rows})
    wanted = {int(r["id"]): document_terms(r["name"], r.get("description") or "") for r in rows}
    docs = {int(r["id"]): (normalize(r["name"]), normalize(r.get("description") or "")) for r in rows}
    marks = placeholders(len(ids))
    # A plain read: the caller holds the product row (created or locked
    # FOR UPDATE), so no other transaction is re-indexing these products;
    # a locking read here would gap-lock and deadlock concurrent creates.
    cur.execute(f"SELECT product_id, term, in_name FROM search_terms WHERE product_id IN ({marks})", ids)
    existing = {}
    for row in cur.fetchall():
        existing.setdefault(int(row["product_id"]), {})[row["term"]] = int(row["in_name"])
    # What filters and sorts read: search_meta, and a copy on every
    # posting (migration 0009) so broad queries walk one term's postings
    # in sort order. Rewritten whenever the product's status, category,
    # price or created_at differ from it.
    metas = {int(r["id"]): meta(r) for r in rows}
    cur.execute(f"SELECT product_id, active, category, price_cents, created_at FROM search_meta "
                f"WHERE product_id IN ({marks})", ids)
    have_meta = {int(r["product_id"]): (int(r["active"]), r["category"], int(r["price_cents"]), r["created_at"])
                 for r in cur.fetchall()}
    upserts = []
    for pid in ids:
        have, want = existing.get(pid, {}), wanted[pid]
        stale = sorted(t for t in have if t not in want)
        for start in range(0, len(stale), 500):
            chunk = stale[start:start + 500]
            cur.execute(f"DELETE FROM search_terms WHERE product_id = %s AND term IN ({placeholders(len(chunk))})",
                        (pid, *chunk))
        upserts += [(t, pid, flag, *metas[pid]) for t, flag in want.items() if have.get(t) != flag]
    upserts.sort()
    # Every word, not only those new to the product: one indexed read,
    # and a dictionary that lost a word (or predates it) heals on the next write.
    _add_typo_words(cur, {term for pid in ids for term in wanted[pid]})
    for start in range(0, len(upserts), 1000):
        chunk = upserts[start:start + 1000]
        cur.execute("INSERT INTO search_terms (term, product_id, in_name, active, category, price_cents, "
                    "created_at) VALUES " + ",".join(["(%s,%s,%s,%s,%s,%s,%s)"] * len(chunk))
                    + " ON DUPLICATE KEY UPDATE in_name = VALUES(in_name)",
                    [value for row in chunk for value in row])
    cur.execute(f"SELECT product_id, name_norm, body_norm FROM search_docs WHERE product_id IN ({marks})", ids)
    have_docs = {int(r["product_id"]): (r["name_norm"], r["body_norm"]) for r in cur.fetchall()}
    changed = [(pid, *docs[pid]) for pid in ids if have_docs.get(pid) != docs[pid]]
    for start in range(0, len(changed), 200):
        chunk = changed[start:start + 200]
        cur.execute("INSERT INTO search_docs (product_id, name_norm, body_norm) VALUES "
                    + ",".join(["(%s,%s,%s)"] * len(chunk))
                    + " ON DUPLICATE KEY UPDATE name_norm = VALUES(name_norm), body_norm = VALUES(body_norm)",
                    [value for triple in chunk for value in triple])
    changed = [(pid, *metas[pid]) for pid in ids if have_meta.get(pid) != metas[pid]]
    for pid, *values in changed:
        if pid in have_meta:   # new postings were written with it above
            cur.execute("UPDATE search_terms SET active = %s, category = %s, price_cents = %s, created_at = %s "
                        "WHERE product_id = %s", (*values, pid))
    for start in range(0, len(changed), 500):
        chunk = changed[start:start + 500]
        cur.execute("INSERT INTO search_meta (product_id, active, category, price_cents, created_at) VALUES "
                    + ",".join(["(%s,%s,%s,%s,%s)"] * len(chunk))
                    + " ON DUPLICATE KEY UPDATE active = VALUES(active), category = VALUES(category), "
                    "price_cents = VALUES(price_cents), created_at = VALUES(created_at)",
                    [value for row in chunk for value in row])


def set_in_stock(cur, in_stock):
    """{product id: in stock now} of products whose stock this transaction
    took to zero or back from it (the caller holds their rows): their
    listing moves on search_meta and on every posting."""
    for pid, now in sorted(in_stock.items()):
        was, to = (LISTED_SOLD_OUT, LISTED_IN_STOCK) if now else (LISTED_IN_STOCK, LISTED_SOLD_OUT)
        cur.execute("UPDATE search_meta SET active = %s WHERE product_id = %s AND active = %s", (to, pid, was))
        if cur.rowcount:
            cur.execute("UPDATE search_terms SET active = %s WHERE product_id = %s", (to, pid))


def _add_typo_words(cur, terms):
    """Put words new to the typo dictionary there with their deletion
    variants (INSERT IGNORE: two writers adding one word agree)."""
    words = sorted(t for t in terms if dictionary_variants(t))
    if not words:
        return
    marks = placeholders(len(words))
    cur.execute(f"SELECT term FROM search_typos WHERE variant IN ({marks}) AND term = variant", words)
    known = {r["term"] for r in cur.fetchall()}
    rows = sorted({(v, w) for w in words if w not in known for v in dictionary_variants(w)})
    for start in range(0, len(rows), 1000):
        chunk = rows[start:start + 1000]
        cur.execute("INSERT IGNORE INTO search_typos (variant, term) VALUES " + ",".join(["(%s,%s)"] * len(chunk)),
                    [value for pair in chunk for value in pair])
