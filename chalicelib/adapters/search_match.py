"""The selective plan's SQL: every match of a query whose rarest term has few
postings, read from that driver's postings and probed for the other terms
(adapters/search_mysql.py runs it), or, without terms, every product the
filters let through."""
from chalicelib.adapters.search_sql import atom_sql, filters, has, probe, tier_score
from chalicelib.domain.search_text import Alternative


def any_sql(pid, alternatives, alias="t", extra=""):
    """SQL true when the product matches one of the alternatives (OR of
    ANDs of posting probes)."""
    ors, args = [], []
    for alt in alternatives:
        ands = []
        for atom in alt.atoms:
            cond, arg = atom_sql(alias, atom)
            ands.append(probe(f"search_terms {alias}", f"{alias}.product_id = {pid} AND {cond}{extra}"))
            args.append(arg)
        ors.append("(" + " AND ".join(ands) + ")")
    return "(" + " OR ".join(ors) + ")", args


def multi_score(pid, alternatives):
    """Score of a term with several alternatives: its best tier, plus one
    if an alternative's rarest atom is in the name (exact for one-atom
    alternatives, close enough for a pinyin chain)."""
    tiers = sorted({a.tier for a in alternatives})
    sql, args = "", []
    for tier in tiers[:-1]:
        cond, cond_args = any_sql(pid, [a for a in alternatives if a.tier == tier])
        sql += f" WHEN {cond} THEN {tier_score(tier)}"
        args += cond_args
    tier_sql = f"(CASE{sql} ELSE {tier_score(tiers[-1])} END)" if sql else str(tier_score(tiers[-1]))
    firsts = [Alternative(a.tier, a.atoms[:1]) for a in alternatives]
    name_sql, name_args = any_sql(pid, firsts, "n", " AND n.in_name = 1")
    return f"{tier_sql} + {name_sql}", args + name_args


class _Match:
    """A query's terms as the selective plan meets them: the atoms of terms with one
    alternative, the terms of several (each one OR condition), the CJK substrings to
    check exactly, and whether the driver is a term whose alternatives are single
    words (`lone`: its tier is read with its postings)."""

    def __init__(self, query, alts, driver, words):
        self.query, self.alts, self.driver, self.words = query, alts, driver, words or {}
        self.atoms = list(dict.fromkeys(a for t in query.terms if len(alts[t]) == 1 for a in alts[t][0].atoms))
        self.multi = [t for t in query.terms if len(alts[t]) > 1]
        self.verify = [t for t in query.terms if t.kind == "substr"]
        self.lone = driver in self.multi and all(len(a.atoms) == 1 for a in alts[driver])
        self.pid = "p.product_id" if driver is not None else "p.id"

    def driver_source(self):
        """One range read of the rarest atom (or of each alternative's first
        atom). Every posting carries its product's listing, category, price
        and created_at (migrations 0009, 0014), so the filters and sort keys
        come from that read, with no lookup per candidate; MAX(in_name) is
        that term's name hit, and for `lone` the best tier of the
        alternatives a product matches, so relevance needs no probe for the driver."""
        driver, alts = self.driver, self.alts
        firsts = [(a.tier, atom_sql("s", a.atoms[0])) for a in alts[driver]] if driver in self.multi \
            else [(None, atom_sql("s", driver))]
        where, filter_args = filters(self.query, "s")
        tier_sql, tier_args = "", []
        if self.lone:
            tier_sql = (", MAX(CASE " + " ".join(f"WHEN {c} THEN {tier_score(tier)}" for tier, (c, _) in firsts)
                        + " ELSE 0 END) AS tier")
            tier_args = [arg for _, (_, arg) in firsts]
        source = (f"(SELECT s.product_id, MAX(s.in_name) AS h{tier_sql}, MAX(s.price_cents) AS price_cents, "
                  f"MAX(s.created_at) AS created_at FROM search_terms s "
                  f"WHERE ({' OR '.join(c for _, (c, _) in firsts)}) AND {' AND '.join(where)} "
                  "GROUP BY s.product_id) p")
        return source, tier_args + [arg for _, (_, arg) in firsts] + filter_args

    def conditions(self):
        """WHERE pieces (and args) every match meets besides its source: the
        other atoms, the terms of several alternatives, the exact CJK substrings."""
        where, args = [], []
        for atom in self.atoms:
            if atom == self.driver:
                continue
            sql, atom_args = has("t", self.pid, atom, self.words.get(atom))
            where.append(sql)
            args += atom_args
        for term in self.multi:
            if term == self.driver and self.lone:
                continue   # the union of its atoms is the source
            cond, cond_args = any_sql(self.pid, self.alts[term])
            where.append(cond)
            args += cond_args
        for term in self.verify:
            where.append("(LOCATE(%s, d.name_norm) > 0 OR LOCATE(%s, d.body_norm) > 0)")
            args += [term.text, term.text]
        return where, args

    def score(self):
        """Relevance: per term its tier's score (read with a `lone` driver's
        postings, probed for a term of several alternatives, a constant for
        one) plus its name hit."""
        pieces, args, constant = [], [], 0
        for term in self.query.terms:
            if term == self.driver and self.lone:
                pieces.append("(p.tier + p.h)")
                continue
            if term in self.multi:
                piece, piece_args = multi_score(self.pid, self.alts[term])
                pieces.append(piece)
                args += piece_args
                continue
            alt = self.alts[term][0]
            constant += tier_score(alt.tier)
            if term.kind == "substr":
                pieces.append("(LOCATE(%s, d.name_norm) > 0)")
                args.append(term.text)
            elif alt.atoms[0] == self.driver:
                pieces.append("p.h")
            else:
                atom = alt.atoms[0]
                sql, atom_args = has("n", self.pid, atom, self.words.get(atom), " AND n.in_name = 1")
                pieces.append(sql)
                args += atom_args
        return "(" + " + ".join(pieces + [str(constant)]) + ")", args


def match_sql(query, alts, driver, with_score, words=None):
    """SELECT id, price_cents, created_at, score of every match (no paging).

    alts: term -> its Alternatives that can match (see MySQLSearchBackend._search).
    A term with one alternative contributes its atoms to one AND; a term with
    several is one OR condition. driver: an atom, or a term with several
    alternatives (then the union of each alternative's first atom drives).

    With terms, filters and sort keys come from the driver's postings
    (_Match.driver_source). Without terms (browsing by filters), the products
    indexes on (status, price|created_at) serve the query.
    `words` (atom -> its indexed words) lets the other atoms be probed
    with point lookups in their words' postings (see search_sql.has)."""
    match = _Match(query, alts, driver, words)
    if driver is not None:
        source, source_args = match.driver_source()
        where, where_args = [], []
    else:
        source, source_args = "products p", []
        where, where_args = filters(query, "p",
                                    listed_sql="p.status = 'active'" + (" AND p.stock > 0" if query.in_stock else ""))
    if match.verify:
        source += f" JOIN search_docs d ON d.product_id = {match.pid}"
    conditions, condition_args = match.conditions()
    where, where_args = where + conditions, where_args + condition_args
    score, score_args = match.score() if with_score and query.terms else ("0", [])
    hint = "STRAIGHT_JOIN " if driver is not None else ""
    sql = (f"SELECT {hint}{match.pid} AS id, p.price_cents AS price_cents, p.created_at AS created_at, "
           f"{score} AS score FROM {source}" + (f" WHERE {' AND '.join(where)}" if where else ""))
    return sql, score_args + source_args + where_args
