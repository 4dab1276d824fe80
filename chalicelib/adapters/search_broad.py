"""The broad plan of the MySQL search index: every atom is common and every
term has one alternative, so the page is a top-k walk of the driver's
postings in the order of the sort that stops early, never a gather and sort
of every match (adapters/search_mysql.py decides when it applies)."""
import math

from chalicelib.adapters import search_paging
from chalicelib.adapters.search_paging import ORDER
from chalicelib.adapters.search_sql import atom_sql, filters, has, prefix_words, probe, tier_score
from chalicelib.adapters.db import placeholders

# Per sort: the index a walk reads, its ORDER BY, and the keyset condition.
_WALKS = {
    "price_asc": ("ix_search_terms_price", "d.price_cents ASC, d.product_id ASC",
                  "(d.price_cents > %s OR (d.price_cents = %s AND d.product_id > %s))"),
    "price_desc": ("ix_search_terms_price_desc", "d.price_cents DESC, d.product_id ASC",
                   "(d.price_cents < %s OR (d.price_cents = %s AND d.product_id > %s))"),
    "newest": ("ix_search_terms_created", "d.created_at DESC, d.product_id DESC",
               "(d.created_at < %s OR (d.created_at = %s AND d.product_id < %s))"),
}


class BroadPlan:
    """One broad search's reads, with the backend's sample sizes and cap
    (MySQLSearchBackend: DRIVER_SAMPLE, DENSITY_SAMPLE, MAX_EXPANSION, TOTAL_CAP)."""

    def __init__(self, driver_sample, density_sample, max_expansion, total_cap):
        self.driver_sample = driver_sample
        self.density_sample = density_sample
        self.max_expansion = max_expansion
        self.total_cap = total_cap

    def page(self, cur, query, alts):
        """Walk the driver's postings (the atom with the fewest) in the order of
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
        base = sum(tier_score(alts[t][0].tier) for t in query.terms)
        words = self._expand(cur, atoms)
        density, id_space = self._densities(cur, words)
        if density:
            driver = min(density, key=density.get)
        else:
            driver = atoms[0]   # every atom is a prefix of very many words: walked as one range
        need = query.limit + 1
        if len(density) > 1 and math.prod(density.values()) * id_space < self.driver_sample:
            # Common words that are, as words mostly are, rarely together (an estimate that takes them
            # as independent): gathering their matches with a count of them is one read of the driver's
            # postings, where counting first and then gathering reads them twice. Should the estimate be
            # wrong (DRIVER_SAMPLE matches or more), the plan below takes over.
            keys = self._gather(cur, query, alts, words, driver, base, need, self.driver_sample)
            if keys and keys[0]["total"] < self.driver_sample:
                return self._page(cur, query, keys, int(keys[0]["total"]))
            if not keys and query.after is None:
                return self._page(cur, query, [], 0)
        total = self.count(cur, query, words, driver)
        if total < self.driver_sample:
            # Few matches (common words rarely together, a narrow filter): a
            # walk in sort order could read every posting to find them, and
            # the count has just read (and cached) exactly those postings.
            # Gather them the same way and sort them.
            keys = self._gather(cur, query, alts, words, driver, base, need)
            return self._page(cur, query, keys, total)
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
        return self._page(cur, query, keys, total)

    def _page(self, cur, query, keys, total):
        return search_paging.page(cur, query, keys, total, self.total_cap)

    def _expand(self, cur, atoms):
        """atom -> the indexed words it stands for: itself when exact, the
        words a prefix starts (None past MAX_EXPANSION: probed as a range)."""
        return {atom: [atom[1]] if atom[0] != "prefix" else prefix_words(cur, atom, self.max_expansion)
                for atom in atoms}

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
                             f"LIMIT {self.density_sample}) x{i}) AS w{i}")
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
            span = max(last - low + 1, 1) if count >= self.density_sample else id_space
            density[atom] += count / span
        return density, id_space

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
            sql += " WHERE " + ORDER[query.sort][1]
            args += [query.after[0], query.after[0], query.after[1]]
        cur.execute(sql + f" ORDER BY {ORDER[query.sort][0]} LIMIT %s", args + [need])
        return list(cur.fetchall())

    @staticmethod
    def _conditions(query, words, driver, alias="d", joined=()):
        """WHERE pieces (and args) every match satisfies besides its driver
        posting: filters on the posting's copy of search_meta (the listing
        answers in_stock), the other atoms, exact CJK substrings."""
        where, args = filters(query, alias)
        for atom in words:
            if atom != driver and atom not in joined:
                sql, atom_args = has("t", f"{alias}.product_id", atom, words[atom])
                where.append(sql)
                args += atom_args
        for term in query.terms:
            if term.kind == "substr":
                where.append(probe("search_docs x", f"x.product_id = {alias}.product_id "
                                   "AND (LOCATE(%s, x.name_norm) > 0 OR LOCATE(%s, x.body_norm) > 0)"))
                args += [term.text, term.text]
        return where, args

    @staticmethod
    def _score(query, alts, words, driver, alias="d"):
        """Name hits of a posting's product: its query terms found in the name
        (relevance less the terms' tiers, which page() adds)."""
        pieces, args = [], []
        for term in query.terms:
            if term.kind == "substr":
                pieces.append(probe("search_docs y",
                                    f"y.product_id = {alias}.product_id AND LOCATE(%s, y.name_norm) > 0"))
                args.append(term.text)
            elif alts[term][0].atoms == (driver,) and len(words[driver] or []) == 1:
                pieces.append(f"{alias}.in_name")
            else:
                atom = alts[term][0].atoms[0]
                sql, atom_args = has("n", f"{alias}.product_id", atom, words[atom], " AND n.in_name = 1")
                pieces.append(sql)
                args += atom_args
        return "(" + " + ".join(pieces) + ")", args

    def _walks(self, cur, query, alts, words, driver, need, after, hits, base=0):
        """Up to `need` sort-key rows after `after`, in the order of the sort
        (for relevance, `hits` set: the products with that many name hits,
        scored base + hits, in id order)."""
        if need <= 0:
            return []
        where, args = self._conditions(query, words, driver)
        if hits is None:
            index, order, after_sql = _WALKS[query.sort]
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
            cond, arg = ("d.term = %s", word) if word is not None else atom_sql("d", driver)
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
            cond, arg = f"d.term IN ({placeholders(len(words[driver]))})", list(words[driver])
        else:
            sql, one = atom_sql("d", driver)
            cond, arg = sql, [one]
        index = ("ix_search_terms_price" if query.min_price is not None or query.max_price is not None
                 else "ix_search_terms_category" if query.category is not None else "PRIMARY")
        return (f"FROM search_terms d FORCE INDEX ({index}){joins} WHERE {cond} AND {' AND '.join(where)}",
                [words[a][0] for a in joined] + arg + args)

    def count(self, cur, query, words, driver):
        """Matches counted over the driver's postings, up to TOTAL_CAP + 1."""
        source, args = self._count_source(query, words, driver)
        pid = "d.product_id" if words[driver] is not None and len(words[driver]) == 1 else "DISTINCT d.product_id"
        cur.execute(f"SELECT COUNT(*) AS n FROM (SELECT {pid} {source} LIMIT %s) m", args + [self.total_cap + 1])
        return int(cur.fetchone()["n"])
