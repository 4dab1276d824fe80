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
- Pinyin: every adjacent pair of Han characters is also indexed by its full
  pinyin ("py:shouji" for 手机) and its initials ("pi:sj"); a run of one Han
  character by its syllable. A Latin query word that reads as pinyin
  syllables matches through those pairs (tier 1); a word of consonants only
  ("sj", "hwsj") through the initials (tier 2). Heteronyms (多音字): a
  character inside a phrase pypinyin knows has that phrase's reading only
  (银行: yinhang); one it reads on its own is indexed under its two most
  common readings (行走 and 行 alone: xing and hang).
- Typos (the dictionary lookup is adapters/search_mysql.py): a Latin word of
  TYPO_MIN_CHARS+ letters also matches indexed words within one edit
  (insertion, deletion, substitution, adjacent transposition), of
  TYPO_TWO_CHARS+ letters within two; tier = number of edits. Candidates come
  from precomputed deletion variants of each distinct indexed word
  (typo_variants, SymSpell), never from a scan of the terms.

The query and its cursors are domain/search_query.py; the index and the
queries over it adapters/search_mysql.py (behind the SearchBackend port of
service/ports.py; service/search.py caches the pages).
"""
import functools
import gc
import re
import unicodedata
from dataclasses import dataclass

MAX_TERM_CHARS = 64          # search_terms.term is VARCHAR(64)
MAX_QUERY_CHARS = 200
MAX_QUERY_TERMS = 10
MIN_PREFIX_CHARS = 3         # shorter Latin query words match whole words only
MAX_BIGRAMS_PER_RUN = 6      # candidates only; the exact check follows
PINYIN = "py:"               # full pinyin of a Han pair (or lone character)
INITIALS = "pi:"             # initials of a Han pair; ':' never occurs in a token
MAX_PAIR_READINGS = 4        # pinyin spellings indexed per Han pair (heteronyms)
TYPO_MIN_CHARS = 5           # query words this long match with one typo...
TYPO_TWO_CHARS = 8           # ...and this long with two
TYPO_MAX_CHARS = 24          # longer words get no typo variants (their count grows ~n^2)
MAX_TYPO_CANDIDATES = 8      # nearest dictionary words a query word may stand for
# Every toneless pinyin syllable (pypinyin's readings; the unit test checks
# it against pypinyin), so parsing a query never imports pypinyin.
SYLLABLES = frozenset("""
a ai an ang ao ba bai ban bang bao bei ben beng bi bian biang biao bie bin bing bo bong bu ca cai can cang cao ce
cei cen ceng cha chai chan chang chao che chen cheng chi chong chou chu chua chuai chuan chuang chui chun chuo ci cong
cou cu cuan cui cun cuo da dai dan dang dao de dei den deng di dia dian diao die din ding diu dong dou du duan dui dun
duo e ei en eng er fa fan fang fei fen feng fiao fo fou fu ga gai gan gang gao ge gei gen geng gong gou gu gua guai
guan guang gui gun guo ha hai han hang hao he hei hen heng hong hou hu hua huai huan huang hui hun huo ji jia jian
jiang jiao jie jin jing jiong jiu ju juan jue jun ka kai kan kang kao ke kei ken keng kong kou ku kua kuai kuan kuang
kui kun kuo la lai lan lang lao le lei len leng li lia lian liang liao lie lin ling liu lo long lou lu luan lun luo lv
lve ma mai man mang mao me mei men meng mi mian miao mie min ming miu mo mou mu na nai nan nang nao ne nei nen neng
ni nia nian niang niao nie nin ning niu nong nou nu nuan nun nuo nv nve o ou pa pai pan pang pao pei pen peng pi pian
piao pie pin ping po pou pu qi qia qian qiang qiao qie qin qing qiong qiu qu quan que qun ran rang rao re ren reng ri
rong rou ru rua ruan rui run ruo sa sai san sang sao se sen seng sha shai shan shang shao she shei shen sheng shi shou
shu shua shuai shuan shuang shui shun shuo si song sou su suan sui sun suo ta tai tan tang tao te tei teng ti tian
tiao tie ting tong tou tu tuan tui tun tuo wa wai wan wang wei wen weng wo wong wu xi xia xian xiang xiao xie xin xing
xiong xiu xu xuan xue xun ya yan yang yao ye yi yin ying yo yong you yu yuan yue yun za zai zan zang zao ze zei zen
zeng zha zhai zhan zhang zhao zhe zhei zhen zheng zhi zhong zhou zhu zhua zhuai zhuan zhuang zhui zhun zhuo zi zong
zou zu zuan zui zun zuo""".split())
_SYLLABLE_PREFIXES = frozenset(s[:i] for s in SYLLABLES for i in range(1, len(s)))
_MAX_SYLLABLE = max(map(len, SYLLABLES))
_VOWELS = set("aeiouv")
_CJK = ("\u1100-\u11ff\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3130-\u318f\u31a0-\u31ff"
        "\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\U00020000-\U0003134f")
_TOKEN = re.compile(f"([{_CJK}]+)|([^\\W_{_CJK}]+)")
_CJK_CHAR = re.compile(f"[{_CJK}]")
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


@functools.lru_cache(maxsize=None)
def load_pypinyin():
    """pypinyin, imported on first use (the write path only: ~0.3 s). Its
    dictionaries are ~190,000 objects the garbage collector tracks; every
    full collection would walk them all (~35-40 ms, every thread stopped, in
    whichever request it falls), so they are frozen out of its reach once loaded."""
    from pypinyin import Style, lazy_pinyin, pinyin
    from pypinyin.seg.mmseg import seg

    gc.freeze()
    return Style, lazy_pinyin, pinyin, seg


def _han_readings(run):
    """Per character of a CJK run: its toneless pinyin readings ([] for kana,
    Hangul and the like). The reading pypinyin picks in context comes first
    and is the only one for a character inside a phrase it knows (行 in 银行
    is hang); a character read on its own also gets its next most common
    reading (行 alone: xing, hang)."""
    Style, lazy_pinyin, pinyin, seg = load_pypinyin()
    context = lazy_pinyin(run, style=Style.NORMAL, errors=lambda chars: [""] * len(chars))
    settled, at = set(), 0
    for word in seg.cut(run):
        if len(word) > 1:
            settled.update(range(at, at + len(word)))
        at += len(word)
    out = []
    for i, (char, first) in enumerate(zip(run, context)):
        if not first:
            out.append([])
        elif i in settled:
            out.append([first])
        else:
            others = [r for r in pinyin(char, style=Style.NORMAL, heteronym=True)[0] if r != first]
            out.append([first] + others[:1])
    return out


def _pinyin_terms(run):
    """py:/pi: terms of one CJK run: each Han pair's full pinyin and initials
    (every combination of the two characters' readings), or the syllable of a
    run that is one Han character."""
    readings = _han_readings(run)
    if len(run) == 1:
        return {PINYIN + r for r in readings[0]}
    terms = set()
    for a, b in zip(readings, readings[1:]):
        for x, y in [(x, y) for x in a for y in b][:MAX_PAIR_READINGS]:
            terms.add(PINYIN + x + y)
            terms.add(INITIALS + x[0] + y[0])
    return terms


def text_terms(text):
    terms = set()
    for kind, token in tokens(text):
        if kind == "word":
            terms.update(_word_terms(token))
        else:
            terms.update(_cjk_terms(token))
            terms.update(_pinyin_terms(token))
    return terms


def document_terms(name, description):
    """term -> in_name (1 if it occurs in the name) for one product."""
    in_name = text_terms(name)
    terms = {term: 0 for term in text_terms(description)}
    terms.update({term: 1 for term in in_name})
    return terms


# --- pinyin queries -------------------------------------------------------

@functools.lru_cache(maxsize=4096)   # memoised: no backtracking blow-up on long words
def _whole_syllables(word):
    """The word as complete syllables, longest first ("xian" -> [xian]), or None."""
    if not word:
        return []
    for end in range(min(len(word), _MAX_SYLLABLE), 0, -1):
        if word[:end] in SYLLABLES:
            rest = _whole_syllables(word[end:])
            if rest is not None:
                return [word[:end], *rest]
    return None


def split_syllables(word):
    """The word as pinyin syllables ("shouji" -> [shou, ji]); the last piece
    may be the start of a syllable still being typed ("shouj" -> [shou, j]).
    None if it does not read as pinyin."""
    if not word.isascii() or not word.isalpha():
        return None
    whole = _whole_syllables(word)
    if whole:
        return whole
    for cut in range(len(word) - 1, 0, -1):
        head = _whole_syllables(word[:cut]) if word[cut:] in _SYLLABLE_PREFIXES else None
        if head:
            return head + [word[cut:]]
    return None


def pinyin_atoms(word):
    """AND atoms of the full-pinyin reading of a query word, or None. Pairs
    of syllables are whole lookups; the last pair (or a lone syllable of
    MIN_PREFIX_CHARS+ letters) is a prefix, as the word is being typed."""
    parts = split_syllables(word)
    if not parts:
        return None
    if len(parts) == 1:
        if parts[0] not in SYLLABLES:
            return None
        return [("prefix" if len(word) >= MIN_PREFIX_CHARS else "exact", PINYIN + word)]
    pairs = [parts[i] + parts[i + 1] for i in range(len(parts) - 1)]
    atoms = [("exact", PINYIN + p) for p in pairs[:-1]] + [("prefix", PINYIN + pairs[-1])]
    return _spread(atoms)


def _spread(atoms):
    """At most MAX_BIGRAMS_PER_RUN of the atoms, evenly spaced, first and last kept."""
    if len(atoms) <= MAX_BIGRAMS_PER_RUN:
        return atoms
    step = (len(atoms) - 1) / (MAX_BIGRAMS_PER_RUN - 1)
    return list(dict.fromkeys(atoms[round(i * step)] for i in range(MAX_BIGRAMS_PER_RUN)))


def initials_atoms(word):
    """AND atoms of a word of consonants only read as pinyin initials ("sj",
    "hwsj": hw, ws, sj), or None."""
    if not (2 <= len(word) <= 8 and word.isascii() and word.isalpha()) or _VOWELS & set(word):
        return None
    return list(dict.fromkeys(("exact", INITIALS + word[i:i + 2]) for i in range(len(word) - 1)))


# --- typos ----------------------------------------------------------------

def _is_word(text):
    """Letters only and not CJK: digits (model numbers) and Han get no typos."""
    return text.isalpha() and not _CJK_CHAR.search(text)


def typo_budget(word):
    """Edits a query word may carry: 0, 1 or 2 (letters only, by length)."""
    if not _is_word(word) or len(word) > TYPO_MAX_CHARS or len(word) < TYPO_MIN_CHARS:
        return 0
    return 2 if len(word) >= TYPO_TWO_CHARS else 1


def deletions(word, depth):
    """The word and every string made by deleting up to `depth` characters."""
    out, frontier = {word}, {word}
    for _ in range(depth):
        frontier = {w[:i] + w[i + 1:] for w in frontier for i in range(len(w))}
        out |= frontier
    return out


def dictionary_variants(term):
    """What the typo dictionary stores for one indexed word: its deletion
    variants, deep enough that every query word within its budget of it
    shares one (a query of 8+ letters may be 2 edits from a 6-letter word)."""
    if not _is_word(term) or not TYPO_MIN_CHARS - 1 <= len(term) <= TYPO_MAX_CHARS:
        return set()
    return deletions(term, 2 if len(term) >= TYPO_TWO_CHARS - 2 else 1)


def edit_distance(a, b, limit):
    """Optimal string alignment distance (a transposition is one edit), or
    limit+1 once it is certainly above limit."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2, prev = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return min(prev[-1], limit + 1)


@dataclass(frozen=True)
class Alternative:
    """One way a query term can match: every atom (a condition on
    search_terms.term) holds. tier 0 is the term as typed; higher tiers rank
    below it (1: full pinyin or one typo, 2: initials or two typos)."""
    tier: int
    atoms: tuple


@dataclass(frozen=True, order=True)
class Term:
    """One query term. kind: 'prefix' (Latin word), 'exact' (a whole indexed
    term: a CJK run of 1-2 characters, a Latin word shorter than
    MIN_PREFIX_CHARS) or 'substr' (longer CJK run: bigram candidates + exact check)."""
    kind: str
    text: str

    def atoms(self):
        """Conditions on search_terms.term that every exact match satisfies."""
        if self.kind == "prefix":
            return [("prefix", self.text)]
        if self.kind == "exact":
            return [("exact", self.text)]
        grams = list(dict.fromkeys(self.text[i:i + 2] for i in range(len(self.text) - 1)))
        return _spread([("exact", g) for g in grams])

    def alternatives(self):
        """Every way the term matches without a dictionary lookup: as typed,
        then as full pinyin, then as pinyin initials. Typo alternatives need
        the typo dictionary and are added by the backend."""
        out = [Alternative(0, tuple(self.atoms()))]
        if self.kind != "substr":
            for tier, atoms in ((1, pinyin_atoms(self.text)), (2, initials_atoms(self.text))):
                if atoms:
                    out.append(Alternative(tier, tuple(atoms)))
        return out


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
