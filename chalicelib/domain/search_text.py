"""Search matching rules (docs/api.md "Search", docs/design.md section 4): the
tokenizer, pure.

Text is NFKC-normalised and case-folded, then split into Latin-script *words*
(runs of letters/digits) and *CJK runs* (Han, kana, Hangul). Punctuation and
whitespace only separate tokens.
- Words are indexed whole; a query word matches any indexed word it is a
  **prefix** of ("pho" finds "phone", "phones"), which is what shoppers type.
  A query word shorter than MIN_PREFIX_CHARS matches whole words only ("tv",
  "60"): a one- or two-letter prefix would read a large part of the index.
  Words mixing letters and digits are also indexed by their parts
  ("mate60" -> "mate60", "mate", "60").
- CJK runs match by **substring**: every character (unigram) and adjacent
  pair (bigram) is indexed, so a query run of 1-2 characters is one exact
  lookup and a longer one intersects its bigrams and is then verified exactly
  against the normalised text (search_docs).
- Every query term must match the name or the description (AND).

The query and its cursors are domain/search_query.py; the index and the
queries over it adapters/search_mysql.py (behind the SearchBackend seam in
service/search.py, which also caches the pages).
"""
import re
import unicodedata
from dataclasses import dataclass

MAX_TERM_CHARS = 64          # search_terms.term is VARCHAR(64)
MAX_QUERY_CHARS = 200
MAX_QUERY_TERMS = 10
MIN_PREFIX_CHARS = 3         # shorter Latin query words match whole words only
MAX_BIGRAMS_PER_RUN = 6      # candidates only; the exact check follows
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
    """One query term. kind: 'prefix' (Latin word), 'exact' (a whole indexed
    term: a CJK run of 1-2 characters, a Latin word shorter than
    MIN_PREFIX_CHARS) or 'substr' (longer CJK run: bigram candidates + exact check)."""
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


def is_blank(text):
    """Only whitespace and invisible format characters (zero-width space...)."""
    return all(c.isspace() or unicodedata.category(c) == "Cf" for c in normalize(text))


def query_terms(q):
    """The distinct terms of a query string, in a canonical order."""
    terms = set()
    for kind, token in tokens(q):
        if kind == "word":
            terms.add(Term("prefix" if len(token) >= MIN_PREFIX_CHARS else "exact", token))
        else:
            terms.add(Term("exact" if len(token) <= 2 else "substr", token))
    return sorted(terms)
