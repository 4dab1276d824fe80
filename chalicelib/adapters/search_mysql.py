"""The MySQL SearchBackend: the search_terms/search_docs/search_meta index,
written inside the product transaction and queried with per-term posting
lookups (see domain/search_text.py for the matching rules)."""
import math

from chalicelib.domain.search_query import TOTAL_CAP, SearchPage, encode_cursor
from chalicelib.domain.search_text import (MAX_QUERY_TERMS, MAX_TYPO_CANDIDATES, Alternative, deletions,
                                           dictionary_variants, document_terms, edit_distance, normalize,
                                           typo_budget)
from chalicelib.service.unit_of_work import PRODUCT_COLUMNS


def _format_ts(ts):
    return ts.strftime("%Y-%m-%d %H:%M:%S.%f")


def _sort_key(row, first_col, query):
    """[sort value, id] of a match row, as a cursor carries it."""
    first = row[first_col]
    return [_format_ts(first) if query.sort == "newest" else int(first), int(row["id"])]


# ORDER BY and the keyset condition "strictly after the cursor" for each sort.
_ORDER = {
    "relevance": ("score DESC, id ASC", "(score < %s OR (score = %s AND id > %s))", "score"),
    "price_asc": ("price_cents ASC, id ASC", "(price_cents > %s OR (price_cents = %s AND id > %s))", "price_cents"),
    "price_desc": ("price_cents DESC, id ASC", "(price_cents < %s OR (price_cents = %s AND id > %s))", "price_cents"),
    "newest": ("created_at DESC, id DESC", "(created_at < %s OR (created_at = %s AND id < %s))", "created_at"),
}


# Relevance: each term adds TIER_WEIGHT * (2 - tier of its best match), and
# one more when it is found in the name, so a match as typed outranks a
# pinyin or typo match whatever the name hits (at most MAX_QUERY_TERMS).
TIER_WEIGHT = MAX_QUERY_TERMS + 1
TIERS = 3


def _tier_score(tier):
    return TIER_WEIGHT * (TIERS - 1 - tier)


def _probe(table, cond):
    """1 if a row of `table` meets `cond`, else 0: one index lookup per outer
    row. Written as a scalar subquery because the optimizer turns an EXISTS
    in WHERE into a semi-join that materialises every posting of the term."""
    return f"((SELECT 1 FROM {table} WHERE {cond} LIMIT 1) IS NOT NULL)"


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


def _listed(alias, in_stock):
    return f"{alias}.active = {LISTED_IN_STOCK}" if in_stock else f"{alias}.active <> {NOT_LISTED}"


def _meta(row):
    """The search_meta values of a full product row."""
    return (listing(row["status"], row["stock"]), row["category"],
            int(row["price_cents"]), row["created_at"])


class MySQLSearchBackend:
    """Search over the search_terms index. Status, whether in stock, category,
    price and created_at of a product are copied on each of its postings (and
    kept in search_meta, the copy index() compares with), in the product
    write transaction, so totals, filters, sorts and keysets are answered
    from the postings a query reads anyway; products is read for the page
    only. Stock changes move the listing only when they cross zero
    (set_in_stock, from the unit of work)."""

    DRIVER_SAMPLE = 5000   # cap when estimating how selective each term is
    MAX_EXPANSION = 32     # words of a prefix a broad query walks one by one
    DENSITY_SAMPLE = 1000  # postings per word read to rank a broad query's atoms
    # An atom of more words is probed in the product's own terms (one dive into
    # ix_search_terms_product) rather than once per word: with the index in the
    # buffer pool, one dive beats two (Zipf misses at 1M: p99 76 -> 55 ms with 1 vs 8).
    PROBE_WORDS = 1
    ALTERNATIVES_BELOW = 5000   # a term with more matches in all keeps its best tier only
    TOTAL_CAP = TOTAL_CAP  # matches counted exactly (tests lower it)

    def __init__(self, db, time_limit_ms=1500):
        self.db = db
        # The server stops a search's statements after this long in total
        # (StatementTimeout): the cost cap no query can get around.
        self.time_limit_ms = time_limit_ms

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
        # What filters and sorts read: search_meta, and a copy on every
        # posting (migration 0009) so broad queries walk one term's postings
        # in sort order. Rewritten whenever the product's status, category,
        # price or created_at differ from it.
        metas = {int(r["id"]): _meta(r) for r in rows}
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
                cur.execute(f"DELETE FROM search_terms WHERE product_id = %s AND term IN ({','.join(['%s'] * len(chunk))})",
                            (pid, *chunk))
            upserts += [(t, pid, flag, *metas[pid]) for t, flag in want.items() if have.get(t) != flag]
        upserts.sort()
        # Every word, not only those new to the product: one indexed read,
        # and a dictionary that lost a word (or predates it) heals on the next write.
        self._add_typo_words(cur, {term for pid in ids for term in wanted[pid]})
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
        for pid, *meta in changed:
            if pid in have_meta:   # new postings were written with it above
                cur.execute("UPDATE search_terms SET active = %s, category = %s, price_cents = %s, created_at = %s "
                            "WHERE product_id = %s", (*meta, pid))
        for start in range(0, len(changed), 500):
            chunk = changed[start:start + 500]
            cur.execute("INSERT INTO search_meta (product_id, active, category, price_cents, created_at) VALUES "
                        + ",".join(["(%s,%s,%s,%s,%s)"] * len(chunk))
                        + " ON DUPLICATE KEY UPDATE active = VALUES(active), category = VALUES(category), "
                        "price_cents = VALUES(price_cents), created_at = VALUES(created_at)",
                        [value for row in chunk for value in row])

    @staticmethod
    def set_in_stock(cur, in_stock):
        """{product id: in stock now} of products whose stock this transaction
        took to zero or back from it (the caller holds their rows): their
        listing moves on search_meta and on every posting."""
        for pid, now in sorted(in_stock.items()):
            was, to = (LISTED_SOLD_OUT, LISTED_IN_STOCK) if now else (LISTED_IN_STOCK, LISTED_SOLD_OUT)
            cur.execute("UPDATE search_meta SET active = %s WHERE product_id = %s AND active = %s", (to, pid, was))
            if cur.rowcount:
                cur.execute("UPDATE search_terms SET active = %s WHERE product_id = %s", (to, pid))

    @staticmethod
    def _add_typo_words(cur, terms):
        """Put words new to the typo dictionary there with their deletion
        variants (INSERT IGNORE: two writers adding one word agree)."""
        words = sorted(t for t in terms if dictionary_variants(t))
        if not words:
            return
        marks = ",".join(["%s"] * len(words))
        cur.execute(f"SELECT term FROM search_typos WHERE variant IN ({marks}) AND term = variant", words)
        known = {r["term"] for r in cur.fetchall()}
        rows = sorted({(v, w) for w in words if w not in known for v in dictionary_variants(w)})
        for start in range(0, len(rows), 1000):
            chunk = rows[start:start + 1000]
            cur.execute("INSERT IGNORE INTO search_typos (variant, term) VALUES " + ",".join(["(%s,%s)"] * len(chunk)),
                        [value for pair in chunk for value in pair])

    # --- reads ------------------------------------------------------------

    def _alternatives(self, cur, query):
        """term -> its Alternatives: as typed, pinyin (pure), and, unless the
        query turned typos off, the indexed words within its edit budget
        (one read of the typo dictionary for all the words of the query)."""
        alts = {term: term.alternatives() for term in query.terms}
        budgets = {t: typo_budget(t.text) for t in query.terms if t.kind == "prefix"} if query.typo else {}
        budgets = {t: k for t, k in budgets.items() if k}
        if not budgets:
            return alts
        variants = sorted({v for t, k in budgets.items() for v in deletions(t.text, k)})
        cur.execute(f"SELECT DISTINCT term FROM search_typos WHERE variant IN ({','.join(['%s'] * len(variants))})",
                    variants)
        found = [r["term"] for r in cur.fetchall()]
        for term, budget in budgets.items():
            # Words the prefix already matches need no typo alternative.
            near = sorted((edit_distance(term.text, w, budget), w) for w in found if not w.startswith(term.text))
            alts[term] = alts[term] + [Alternative(d, (("exact", w),))
                                       for d, w in near if d <= budget][:MAX_TYPO_CANDIDATES]
        return alts


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

    def _any_sql(self, pid, alternatives, alias="t", extra=""):
        """SQL true when the product matches one of the alternatives (OR of
        ANDs of posting probes)."""
        ors, args = [], []
        for alt in alternatives:
            ands = []
            for atom in alt.atoms:
                cond, arg = self._atom_sql(alias, atom)
                ands.append(_probe(f"search_terms {alias}", f"{alias}.product_id = {pid} AND {cond}{extra}"))
                args.append(arg)
            ors.append("(" + " AND ".join(ands) + ")")
        return "(" + " OR ".join(ors) + ")", args

    def _multi_score(self, pid, alternatives):
        """Score of a term with several alternatives: its best tier, plus one
        if an alternative's rarest atom is in the name (exact for one-atom
        alternatives, close enough for a pinyin chain)."""
        tiers = sorted({a.tier for a in alternatives})
        sql, args = "", []
        for tier in tiers[:-1]:
            cond, cond_args = self._any_sql(pid, [a for a in alternatives if a.tier == tier])
            sql += f" WHEN {cond} THEN {_tier_score(tier)}"
            args += cond_args
        tier_sql = f"(CASE{sql} ELSE {_tier_score(tiers[-1])} END)" if sql else str(_tier_score(tiers[-1]))
        firsts = [Alternative(a.tier, a.atoms[:1]) for a in alternatives]
        name_sql, name_args = self._any_sql(pid, firsts, "n", " AND n.in_name = 1")
        return f"{tier_sql} + {name_sql}", args + name_args

    def _match_sql(self, query, alts, driver, with_score, words=None):
        """SELECT id, price_cents, created_at, score of every match (no paging).

        alts: term -> its Alternatives that can match (see _search). A term
        with one alternative contributes its atoms to one AND; a term with
        several is one OR condition. driver: an atom, or a term with several
        alternatives (then the union of each alternative's first atom drives).

        With terms, filters and sort keys come from the driver's postings
        (see below). Without terms (browsing by filters), the products
        indexes on (status, price|created_at) serve the query.
        `words` (atom -> its indexed words) lets the other atoms be probed
        with point lookups in their words' postings (see _has)."""
        words = words or {}
        atoms = list(dict.fromkeys(a for t in query.terms if len(alts[t]) == 1 for a in alts[t][0].atoms))
        multi = [t for t in query.terms if len(alts[t]) > 1]
        verify = [t for t in query.terms if t.kind == "substr"]
        # A driver term whose alternatives are single words: its tier is read with its postings.
        lone = driver in multi and all(len(a.atoms) == 1 for a in alts[driver])
        if driver is not None:
            # One range read of the rarest atom (or of each alternative's
            # first atom). Every posting carries its product's listing,
            # category, price and created_at (migrations 0009, 0014), so the
            # filters and sort keys come from that read, with no lookup per
            # candidate; MAX(in_name) is that term's name hit, and for `lone`
            # the best tier of the alternatives a product matches, so
            # relevance needs no probe for the driver.
            firsts = [(a.tier, self._atom_sql("s", a.atoms[0])) for a in alts[driver]] if driver in multi \
                else [(None, self._atom_sql("s", driver))]
            filters, filter_args = self._filters(query, "s")
            tier_sql, tier_args = "", []
            if lone:
                tier_sql = (", MAX(CASE " + " ".join(f"WHEN {c} THEN {_tier_score(tier)}" for tier, (c, _) in firsts)
                            + " ELSE 0 END) AS tier")
                tier_args = [arg for _, (_, arg) in firsts]
            source = (f"(SELECT s.product_id, MAX(s.in_name) AS h{tier_sql}, MAX(s.price_cents) AS price_cents, "
                      f"MAX(s.created_at) AS created_at FROM search_terms s "
                      f"WHERE ({' OR '.join(c for _, (c, _) in firsts)}) AND {' AND '.join(filters)} "
                      "GROUP BY s.product_id) p")
            source_args = tier_args + [arg for _, (_, arg) in firsts] + filter_args
            where, where_args = [], []
        else:
            source, source_args = "products p", []
            where, where_args = self._filters(
                query, "p", listed="p.status = 'active'" + (" AND p.stock > 0" if query.in_stock else ""))
        indexed = driver is not None
        pid = "p.product_id" if indexed else "p.id"
        if verify:
            source += f" JOIN search_docs d ON d.product_id = {pid}"
        for atom in atoms:
            if atom == driver:
                continue
            sql, atom_args = self._has("t", pid, atom, words.get(atom))
            where.append(sql)
            where_args += atom_args
        for term in multi:
            if term == driver and lone:
                continue   # the union of its atoms is the source
            cond, cond_args = self._any_sql(pid, alts[term])
            where.append(cond)
            where_args += cond_args
        for term in verify:
            where.append("(LOCATE(%s, d.name_norm) > 0 OR LOCATE(%s, d.body_norm) > 0)")
            where_args += [term.text, term.text]
        score, score_args = "0", []
        if with_score and query.terms:
            pieces, constant = [], 0
            for term in query.terms:
                if term == driver and lone:
                    pieces.append("(p.tier + p.h)")
                    continue
                if term in multi:
                    piece, piece_args = self._multi_score(pid, alts[term])
                    pieces.append(piece)
                    score_args += piece_args
                    continue
                alt = alts[term][0]
                constant += _tier_score(alt.tier)
                if term.kind == "substr":
                    pieces.append("(LOCATE(%s, d.name_norm) > 0)")
                    score_args.append(term.text)
                elif alt.atoms[0] == driver:
                    pieces.append("p.h")
                else:
                    atom = alt.atoms[0]
                    sql, atom_args = self._has("n", pid, atom, words.get(atom), " AND n.in_name = 1")
                    pieces.append(sql)
                    score_args += atom_args
            score = "(" + " + ".join(pieces + [str(constant)]) + ")"
        hint = "STRAIGHT_JOIN " if indexed else ""
        sql = (f"SELECT {hint}{pid} AS id, p.price_cents AS price_cents, p.created_at AS created_at, {score} AS score "
               f"FROM {source}" + (f" WHERE {' AND '.join(where)}" if where else ""))
        args = score_args + source_args + where_args
        return sql, args

    def search(self, query):
        def work(cur):
            return self._search(cur, query)

        return self.db.run(work, time_limit_ms=self.time_limit_ms)

    def _search(self, cur, query):
        alts = self._alternatives(cur, query)
        driver = None
        if query.terms:
            atoms = list(dict.fromkeys(a for t in query.terms for alt in alts[t] for a in alt.atoms))
            count = dict(zip(atoms, self._estimate(cur, atoms)))
            # An alternative with an atom nobody has cannot match: dropping it
            # leaves most terms with one alternative and the plans below as
            # they were before pinyin and typos.
            # Rarest atom first: it is what drives an alternative.
            alts = {t: [Alternative(a.tier, tuple(sorted(a.atoms, key=lambda x: count[x])))
                        for a in alts[t] if all(count[x] for x in a.atoms)] for t in query.terms}
            if not all(alts.values()):
                return SearchPage([], 0)
            # A term whose alternatives together match thousands keeps its
            # best tier only (as typed, when that matches): the others would
            # rank below thousands of better matches, and probing several
            # alternatives per candidate is what would make it slow (the
            # idea of Typesense's typo_tokens_threshold).
            for t, found in alts.items():
                if len(found) > 1 and sum(min(count[x] for x in a.atoms) for a in found) >= self.ALTERNATIVES_BELOW:
                    alts[t] = [a for a in found if a.tier == min(b.tier for b in found)]
            # Selective: drive from the rarest atom (or multi-alternative
            # term), materialise its few candidates and probe the others.
            # A capped estimate means "DRIVER_SAMPLE or far more": it loses
            # to any sum of exact counts, so a term of several selective
            # alternatives drives rather than a broad atom.
            broad = self.DRIVER_SAMPLE * 100
            cost = {a: count[a] if count[a] < self.DRIVER_SAMPLE else broad for a in atoms}
            costs = {}
            for t in query.terms:
                if len(alts[t]) > 1:
                    costs[t] = sum(cost[a.atoms[0]] for a in alts[t])
                else:
                    costs.update({a: cost[a] for a in alts[t][0].atoms})
            driver = min(costs, key=lambda k: (costs[k], str(k)))
            # Broad (every atom has DRIVER_SAMPLE+ postings, every term one
            # alternative): walk postings in sort order (_broad). A term
            # still of several broad alternatives after narrowing (several
            # typo words of one tier) is rare and takes the selective plan.
            if costs[driver] >= broad and all(len(alts[t]) == 1 for t in query.terms):
                return self._broad(cur, query, alts)
        order, after_sql, first_col = _ORDER[query.sort]
        words = {atom: self._words(cur, atom, self.PROBE_WORDS) if atom[0] == "prefix" else [atom[1]]
                 for t in query.terms if len(alts[t]) == 1 for atom in alts[t][0].atoms if atom != driver}
        match_sql, match_args = self._match_sql(query, alts, driver, query.sort == "relevance", words)
        if driver is not None:
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
        # Browsing by filters (no terms): the products indexes give the order.
        keys = self._keyset_rows(cur, query, order, after_sql, match_args,
                                 f"SELECT id, price_cents, created_at, score FROM ({match_sql}) m")
        count_sql, count_args = self._match_sql(query, alts, driver, False)
        # Stop counting past the cap: a browse has up to every product.
        cur.execute(f"SELECT COUNT(*) AS n FROM (SELECT 1 FROM ({count_sql}) m LIMIT %s) x",
                    count_args + [self.TOTAL_CAP + 1])
        return self._page(cur, query, keys, int(cur.fetchone()["n"]), first_col)

    # --- broad queries: top-k walks --------------------------------------

    def _expand(self, cur, atoms):
        """atom -> the indexed words it stands for: itself when exact, the
        words a prefix starts (None past MAX_EXPANSION: probed as a range)."""
        return {atom: [atom[1]] if atom[0] != "prefix" else self._words(cur, atom, self.MAX_EXPANSION)
                for atom in atoms}

    @staticmethod
    def _words(cur, atom, most):
        """Up to `most` indexed words starting with a prefix atom (None if
        there are more), skipping from word to word: one index dive each, not
        a read of every posting (DISTINCT, GROUP BY and a correlated
        recursive CTE read them all)."""
        cond, arg = MySQLSearchBackend._atom_sql("s", atom)
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

    def _densities(self, cur, words):
        """atom -> share of products with a posting of it, estimated from the
        first DENSITY_SAMPLE postings of each word (in id order: the lower
        the id they reach, the denser the word), and the size of the product
        id space; one statement for all."""
        parts, args, keys = [], [], []
        for atom, atom_words in words.items():
            for word in atom_words or []:
                i = len(keys)
                parts.append(f"(SELECT CONCAT(COUNT(*), ' ', COALESCE(MAX(product_id), 0)) FROM (SELECT product_id "
                             f"FROM search_terms FORCE INDEX (PRIMARY) WHERE term = %s ORDER BY product_id "
                             f"LIMIT {self.DENSITY_SAMPLE}) x{i}) AS w{i}")
                args.append(word)
                keys.append(atom)
        density = {atom: 0.0 for atom in words if words[atom] is not None}
        if not parts:
            return density, 0
        cur.execute("SELECT " + ", ".join(parts) + ", (SELECT CONCAT(MIN(id), ' ', MAX(id)) FROM products) AS ids",
                    args)
        row = cur.fetchone()
        low, high = (int(x) for x in (row["ids"] or "1 0").split())
        id_space = max(high - low + 1, 1)
        for i, atom in enumerate(keys):
            count, last = (int(x) for x in row[f"w{i}"].split())
            # A word read to its end: its share of the id space; else of the ids its sample spans.
            span = max(last - low + 1, 1) if count >= self.DENSITY_SAMPLE else id_space
            density[atom] += count / span
        return density, id_space

    def _broad(self, cur, query, alts):
        """Every atom is common and every term has one alternative. The page:
        walk the driver's postings (the atom with the fewest) in the order of
        the sort (one index per sort, migration 0009), with the filters
        checked on the index entry and the other atoms probed per posting,
        and stop at limit+1 matches; a prefix driver walks each of its words
        and the walks are merged. Relevance walks name-hit counts from the top
        (all terms in the name) down, each in id order. The count comes first
        (the driver's postings, stopping at TOTAL_CAP + 1); when it finds fewer
        than DRIVER_SAMPLE matches they are gathered and sorted instead of
        walked for, and when the words' densities say that few is likely, the
        gathering comes first and counts them. Scores are those of the
        selective plan: the terms' tiers (a constant here) plus name hits."""
        atoms = list(dict.fromkeys(a for t in query.terms for a in alts[t][0].atoms))
        base = sum(_tier_score(alts[t][0].tier) for t in query.terms)
        words = self._expand(cur, atoms)
        density, id_space = self._densities(cur, words)
        if density:
            driver = min(density, key=density.get)
        else:
            driver = atoms[0]   # every atom is a prefix of very many words: walked as one range
        first_col = _ORDER[query.sort][2]
        need = query.limit + 1
        if len(density) > 1 and math.prod(density.values()) * id_space < self.DRIVER_SAMPLE:
            # Common words that are, as words mostly are, rarely together (an estimate that takes them
            # as independent): gathering their matches with a count of them is one read of the driver's
            # postings, where counting first and then gathering reads them twice. Should the estimate be
            # wrong (DRIVER_SAMPLE matches or more), the plan below takes over.
            keys = self._gather(cur, query, alts, words, driver, base, need, self.DRIVER_SAMPLE)
            if keys and keys[0]["total"] < self.DRIVER_SAMPLE:
                return self._page(cur, query, keys, int(keys[0]["total"]), first_col)
            if not keys and query.after is None:
                return self._page(cur, query, [], 0, first_col)
        total = self._broad_count(cur, query, words, driver)
        if total < self.DRIVER_SAMPLE:
            # Few matches (common words rarely together, a narrow filter): a
            # walk in sort order could read every posting to find them, and
            # the count has just read (and cached) exactly those postings.
            # Gather them the same way and sort them.
            keys = self._gather(cur, query, alts, words, driver, base, need)
            return self._page(cur, query, keys, total, first_col)
        if query.sort != "relevance":
            keys = self._walks(cur, query, alts, words, driver, need, query.after, hits=None)
        else:
            # Walk name-hit counts from all terms down; a cursor's score is base + hits.
            keys = []
            top = len(query.terms)
            start = top if query.after is None else min(top, int(query.after[0]) - base)
            for hits in range(start, -1, -1):
                after = query.after if query.after is not None and hits == int(query.after[0]) - base else None
                keys += self._walks(cur, query, alts, words, driver, need - len(keys), after, hits, base)
                if len(keys) >= need:
                    break
        return self._page(cur, query, keys, total, first_col)

    def _gather(self, cur, query, alts, words, driver, base, need, up_to=None):
        """Up to `need` sort-key rows after the cursor, in sort order, from
        all matches sorted. With `up_to`, only the first `up_to` matches are
        gathered and every row carries their count (`total`, taken before
        the cursor's condition): less than `up_to` is every match."""
        source, args = self._count_source(query, words, driver)
        score, score_args = self._score(query, alts, words, driver) if query.sort == "relevance" else ("0", [])
        matches = (f"SELECT DISTINCT d.product_id AS id, d.price_cents AS price_cents, d.created_at AS created_at, "
                   f"{score} + {base} AS score {source}")
        args = score_args + args
        if up_to is not None:
            matches = f"SELECT m.*, COUNT(*) OVER () AS total FROM ({matches} LIMIT %s) m"
            args.append(up_to)
        sql = f"SELECT * FROM ({matches}) w"
        if query.after is not None:
            sql += " WHERE " + _ORDER[query.sort][1]
            args += [query.after[0], query.after[0], query.after[1]]
        cur.execute(sql + f" ORDER BY {_ORDER[query.sort][0]} LIMIT %s", args + [need])
        return list(cur.fetchall())

    @staticmethod
    def _has(alias, pid, atom, words, extra=""):
        """1 if product `pid` has a posting of `atom`. Point lookups in its
        words' primary-key ranges (postings of one word are contiguous, so
        probes in id order stay on few pages), one per word: with `term IN`
        and a correlated product_id the server scans every listed posting.
        An atom of more than PROBE_WORDS words reads the product's own terms instead."""
        if words is not None and len(words) <= MySQLSearchBackend.PROBE_WORDS:
            return ("(" + " OR ".join(_probe(f"search_terms {alias} FORCE INDEX (PRIMARY)",
                                             f"{alias}.term = %s AND {alias}.product_id = {pid}{extra}")
                                      for _ in words) + ")", list(words))
        cond, arg = MySQLSearchBackend._atom_sql(alias, atom)
        return (_probe(f"search_terms {alias} FORCE INDEX (ix_search_terms_product)",
                       f"{alias}.product_id = {pid} AND {cond}{extra}"), [arg])

    @staticmethod
    def _filters(query, alias, listed=None):
        """WHERE pieces (and args) of the query's filters on `alias`: a posting
        or search_meta row (the listing answers in_stock), or, given `listed`,
        a products row."""
        where, args = [listed or _listed(alias, query.in_stock)], []
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

    def _conditions(self, query, words, driver, alias="d", joined=()):
        """WHERE pieces (and args) every match satisfies besides its driver
        posting: filters on the posting's copy of search_meta (the listing
        answers in_stock), the other atoms, exact CJK substrings."""
        where, args = self._filters(query, alias)
        for atom in words:
            if atom != driver and atom not in joined:
                sql, atom_args = self._has("t", f"{alias}.product_id", atom, words[atom])
                where.append(sql)
                args += atom_args
        for term in query.terms:
            if term.kind == "substr":
                where.append(_probe("search_docs x", f"x.product_id = {alias}.product_id "
                                    "AND (LOCATE(%s, x.name_norm) > 0 OR LOCATE(%s, x.body_norm) > 0)"))
                args += [term.text, term.text]
        return where, args

    def _score(self, query, alts, words, driver, alias="d"):
        """Name hits of a posting's product: its query terms found in the name
        (relevance less the terms' tiers, which _broad adds)."""
        pieces, args = [], []
        for term in query.terms:
            if term.kind == "substr":
                pieces.append(_probe("search_docs y",
                                     f"y.product_id = {alias}.product_id AND LOCATE(%s, y.name_norm) > 0"))
                args.append(term.text)
            elif alts[term][0].atoms == (driver,) and len(words[driver] or []) == 1:
                pieces.append(f"{alias}.in_name")
            else:
                atom = alts[term][0].atoms[0]
                sql, atom_args = self._has("n", f"{alias}.product_id", atom, words[atom], " AND n.in_name = 1")
                pieces.append(sql)
                args += atom_args
        return "(" + " + ".join(pieces) + ")", args

    # Per sort: the index a walk reads, its ORDER BY, and the keyset condition.
    _WALKS = {
        "price_asc": ("ix_search_terms_price", "d.price_cents ASC, d.product_id ASC",
                      "(d.price_cents > %s OR (d.price_cents = %s AND d.product_id > %s))"),
        "price_desc": ("ix_search_terms_price_desc", "d.price_cents DESC, d.product_id ASC",
                       "(d.price_cents < %s OR (d.price_cents = %s AND d.product_id > %s))"),
        "newest": ("ix_search_terms_created", "d.created_at DESC, d.product_id DESC",
                   "(d.created_at < %s OR (d.created_at = %s AND d.product_id < %s))"),
    }

    def _walks(self, cur, query, alts, words, driver, need, after, hits, base=0):
        """Up to `need` sort-key rows after `after`, in the order of the sort
        (for relevance, `hits` set: the products with that many name hits,
        scored base + hits, in id order)."""
        if need <= 0:
            return []
        where, args = self._conditions(query, words, driver)
        if hits is None:
            index, order, after_sql = self._WALKS[query.sort]
            if after is not None:
                where.append(after_sql)
                args += [after[0], after[0], after[1]]
            select = "0 AS score"
        else:
            score, score_args = self._score(query, alts, words, driver)
            # Most hits: every term is in the name, the driver's too.
            index, order = ("ix_search_terms_name", "d.product_id ASC") if hits == len(query.terms) else \
                ("PRIMARY", "d.product_id ASC")
            if hits == len(query.terms):
                where.insert(0, "d.in_name = 1")
            if after is not None:
                where.append("d.product_id > %s")
                args.append(after[1])
            where.append(f"{score} = %s")
            args += score_args + [hits]
            select = f"{base + hits} AS score"
        walks, walk_args = [], []
        for word in (words[driver] or [None]):
            cond, arg = ("d.term = %s", word) if word is not None else self._atom_sql("d", driver)
            walks.append(f"SELECT d.product_id AS id, d.price_cents AS price_cents, d.created_at AS created_at, "
                         f"{select} FROM search_terms d FORCE INDEX ({index}) "
                         f"WHERE {cond} AND {' AND '.join(where)} ORDER BY {order} LIMIT %s")
            walk_args += [arg] + args + [need]
        if len(walks) == 1:
            cur.execute(walks[0], walk_args)
        else:
            # Each word's top `need`, deduplicated (a product may have two of
            # the words), hold the top `need` of their union.
            merged = " UNION ".join(f"({w})" for w in walks)
            cur.execute(f"SELECT * FROM ({merged}) u ORDER BY {order.replace('d.product_id', 'id').replace('d.', '')} "
                        "LIMIT %s", walk_args + [need])
        return list(cur.fetchall())

    def _count_source(self, query, words, driver):
        """FROM ... WHERE of the driver's matching postings, read in the order
        that visits the fewest: the price range's or the category's postings
        when the query filters on them, else the primary key (id order)."""
        # Another atom of one word is an eq_ref join on its posting, not a subquery per posting
        # (the server runs a join's lookups a quarter faster; these are most of a broad count).
        joined = [a for a in words if a != driver and words[a] is not None and len(words[a]) == 1]
        where, args = self._conditions(query, words, driver, joined=joined)
        joins = "".join(f" STRAIGHT_JOIN search_terms j{i} FORCE INDEX (PRIMARY) "
                        f"ON j{i}.term = %s AND j{i}.product_id = d.product_id" for i in range(len(joined)))
        if words[driver] is not None:
            cond, arg = f"d.term IN ({','.join(['%s'] * len(words[driver]))})", list(words[driver])
        else:
            sql, one = self._atom_sql("d", driver)
            cond, arg = sql, [one]
        index = ("ix_search_terms_price" if query.min_price is not None or query.max_price is not None
                 else "ix_search_terms_category" if query.category is not None else "PRIMARY")
        return (f"FROM search_terms d FORCE INDEX ({index}){joins} WHERE {cond} AND {' AND '.join(where)}",
                [words[a][0] for a in joined] + arg + args)

    def _broad_count(self, cur, query, words, driver):
        """Matches counted over the driver's postings, up to TOTAL_CAP + 1."""
        source, args = self._count_source(query, words, driver)
        pid = "d.product_id" if words[driver] is not None and len(words[driver]) == 1 else "DISTINCT d.product_id"
        cur.execute(f"SELECT COUNT(*) AS n FROM (SELECT {pid} {source} LIMIT %s) m", args + [self.TOTAL_CAP + 1])
        return int(cur.fetchone()["n"])

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
        """keys: up to limit+1 sort-key rows (an extra one means there is more).
        A total above TOTAL_CAP is reported as TOTAL_CAP, not exact."""
        total_exact = total <= self.TOTAL_CAP
        total = min(total, self.TOTAL_CAP)
        more = len(keys) > query.limit
        keys = keys[:query.limit]
        items, item_keys = [], []
        if keys:
            from chalicelib.domain.products import to_api
            ids = [int(k["id"]) for k in keys]
            cur.execute(f"SELECT {PRODUCT_COLUMNS} FROM products WHERE id IN ({','.join(['%s'] * len(ids))})", ids)
            by_id = {int(r["id"]): r for r in cur.fetchall()}
            for k in keys:
                if int(k["id"]) in by_id:
                    items.append(to_api(by_id[int(k["id"])]))
                    item_keys.append(_sort_key(k, first_col, query))
        next_cursor = encode_cursor(query, _sort_key(keys[-1], first_col, query)) if more and keys else None
        return SearchPage(items, total, next_cursor, item_keys, total_exact)


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
