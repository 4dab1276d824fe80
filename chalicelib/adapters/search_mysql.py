"""The MySQL SearchBackend: the search_terms/search_docs/search_meta index,
written inside the product transaction (adapters/search_index.py) and
queried with per-term posting lookups (see domain/search_text.py for the
matching rules). This module plans a query and runs its selective plan;
the SQL of that plan is adapters/search_match.py, the broad plan
adapters/search_broad.py."""
from chalicelib.adapters import search_index
from chalicelib.adapters.search_broad import BroadPlan
from chalicelib.adapters.search_match import match_sql
from chalicelib.adapters.search_paging import keyset_rows, page
from chalicelib.adapters.search_sql import PROBE_WORDS, atom_sql, prefix_words
from chalicelib.domain.search_query import TOTAL_CAP, SearchPage
from chalicelib.domain.search_text import MAX_TYPO_CANDIDATES, Alternative, deletions, edit_distance, typo_budget
from chalicelib.adapters.db import placeholders


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
    ALTERNATIVES_BELOW = 5000   # a term with more matches in all keeps its best tier only
    TOTAL_CAP = TOTAL_CAP  # matches counted exactly (tests lower it)

    def __init__(self, db, time_limit_ms=1500):
        self.db = db
        # The server stops a search's statements after this long in total
        # (StatementTimeout): the cost cap no query can get around.
        self.time_limit_ms = time_limit_ms

    # --- writes (the SearchIndex of the unit of work) -------------------------

    @staticmethod
    def index(cur, rows):
        search_index.index(cur, rows)

    @staticmethod
    def set_in_stock(cur, in_stock):
        search_index.set_in_stock(cur, in_stock)

    # --- reads ----------------------------------------------------------------

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
        cur.execute(f"SELECT DISTINCT term FROM search_typos WHERE variant IN ({placeholders(len(variants))})",
                    variants)
        found = [r["term"] for r in cur.fetchall()]
        for term, budget in budgets.items():
            # Words the prefix already matches need no typo alternative.
            near = sorted((edit_distance(term.text, w, budget), w) for w in found if not w.startswith(term.text))
            alts[term] = alts[term] + [Alternative(d, (("exact", w),))
                                       for d, w in near if d <= budget][:MAX_TYPO_CANDIDATES]
        return alts

    def _estimate(self, cur, atoms):
        """Capped match counts per atom (each a bounded index range read)."""
        parts, args = [], []
        for i, atom in enumerate(atoms):
            cond, arg = atom_sql("s", atom)
            parts.append(f"(SELECT COUNT(*) FROM (SELECT 1 FROM search_terms s WHERE {cond} "
                         f"LIMIT {self.DRIVER_SAMPLE}) x{i}) AS c{i}")
            args.append(arg)
        cur.execute("SELECT " + ", ".join(parts), args)
        row = cur.fetchone()
        return [int(row[f"c{i}"]) for i in range(len(atoms))]

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
            # alternative): walk postings in sort order (BroadPlan). A term
            # still of several broad alternatives after narrowing (several
            # typo words of one tier) is rare and takes the selective plan.
            if costs[driver] >= broad and all(len(alts[t]) == 1 for t in query.terms):
                return BroadPlan(self.DRIVER_SAMPLE, self.DENSITY_SAMPLE, self.MAX_EXPANSION,
                                 self.TOTAL_CAP).page(cur, query, alts)
        words = {atom: prefix_words(cur, atom, PROBE_WORDS) if atom[0] == "prefix" else [atom[1]]
                 for t in query.terms if len(alts[t]) == 1 for atom in alts[t][0].atoms if atom != driver}
        matches, match_args = match_sql(query, alts, driver, query.sort == "relevance", words)
        if driver is not None:
            # Selective: fewer than DRIVER_SAMPLE candidates. One pass over
            # them: the server counts (a window over every match, taken
            # before the keyset condition), sorts and keeps the page, so only
            # limit+1 rows cross the wire (decoding every match in Python
            # cost more than the query itself).
            keys = keyset_rows(cur, query, match_args,
                               f"SELECT id, price_cents, created_at, score, total FROM "
                               f"(SELECT m.*, COUNT(*) OVER () AS total FROM ({matches}) m) w")
            if keys:
                total = int(keys[0]["total"])
            elif query.after is None:
                total = 0
            else:  # past the last match: the window saw no row to carry the count
                cur.execute(f"SELECT COUNT(*) AS n FROM ({matches}) m", match_args)
                total = int(cur.fetchone()["n"])
            return page(cur, query, keys, total, self.TOTAL_CAP)
        # Browsing by filters (no terms): the products indexes give the order.
        keys = keyset_rows(cur, query, match_args, f"SELECT id, price_cents, created_at, score FROM ({matches}) m")
        count_sql, count_args = match_sql(query, alts, driver, False)
        # Stop counting past the cap: a browse has up to every product.
        cur.execute(f"SELECT COUNT(*) AS n FROM (SELECT 1 FROM ({count_sql}) m LIMIT %s) x",
                    count_args + [self.TOTAL_CAP + 1])
        return page(cur, query, keys, int(cur.fetchone()["n"]), self.TOTAL_CAP)

