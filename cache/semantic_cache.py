"""The semantic layer of the response cache: a question close enough to an earlier one is answered from the
earlier one's entry.

Each scope (everything in a response-cache key but the question: the asker's readable namespaces, the plan,
the history, the output-shaping parameters) keeps the questions it has answered with their embeddings and the
exact keys their entries live under. A new question whose embedding's cosine with one of them reaches the
threshold, and that the guard does not set apart (`conflict`), is pointed at that entry; the entry is then
checked against its sources like an exact hit. The index lives in the gateway process (a few hundred small
vectors a scope, searched by one matrix product); the entries it points at are the shared cache's.

The guard is for near-duplicates that mean something else, which an embedding puts close together: a question
and its negation are about 0.98 apart in cosine (`ragyard bench cache`). Two questions conflict when they differ
in negation, in what they ask for (who, when, how many...), in the numbers they name (digits or number words), in
a name one of them writes with a capital or as an identifier that the other lacks, or in one word of a pair of
opposites. Written by hand: no library does this check on short questions (an NLI model would, at the cost of a
second model on every lookup).
"""

from __future__ import annotations

import re
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass

import numpy as np

from core.metrics import counter

SEMANTIC_LOOKUPS = counter(
    "ragyard_semantic_cache_lookups_total",
    "Semantic response-cache lookups by result (hit, below_threshold, guarded, empty).",
    ["result"],
)

_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9_.\-/]*[A-Za-z0-9]|[A-Za-z]|\d+(?:[.,:/]\d+)*")
_IDENTIFIER = re.compile(r"[_./]|\d|[a-z][A-Z]")
NEGATIONS = frozenset(
    "not no never none nobody nothing nowhere neither nor without cannot cant wont dont doesnt didnt isnt "
    "arent wasnt werent hasnt havent hadnt shouldnt wouldnt couldnt mustnt neednt except".split()
)
NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
NUMBER_WORDS.update(
    {w: str(i + 1) for i, w in enumerate("first second third fourth fifth sixth seventh eighth ninth tenth".split())}
)
NUMBER_WORDS.update({"thirty": "30", "forty": "40", "fifty": "50", "hundred": "100", "thousand": "1000"})
NUMBER_WORDS.update({"million": "1e6", "billion": "1e9", "twice": "2"})
# "one" is left out: "which one", "one of" are how people ask, not a count.
del NUMBER_WORDS["one"]
# "who" and "when" about the same thing are two questions ("who gave the statue" / "when was it given").
QUESTION_WORDS = frozenset("who whom whose when where why which what how".split())
SAME_ASK = {"which": "what", "whom": "who"}  # "which port" and "what port" ask the same
HOW_MEASURES = frozenset("many much long old far big often tall large high deep fast".split())
_OPPOSITES = [
    ("before", "after"),
    ("first", "last"),
    ("largest", "smallest"),
    ("biggest", "smallest"),
    ("most", "least"),
    ("more", "less"),
    ("more", "fewer"),
    ("highest", "lowest"),
    ("longest", "shortest"),
    ("oldest", "youngest"),
    ("oldest", "newest"),
    ("earliest", "latest"),
    ("maximum", "minimum"),
    ("max", "min"),
    ("increase", "decrease"),
    ("enable", "disable"),
    ("enabled", "disabled"),
    ("on", "off"),
    ("true", "false"),
    ("yes", "no"),
    ("above", "below"),
    ("over", "under"),
    ("in", "out"),
    ("start", "stop"),
    ("open", "close"),
    ("allow", "deny"),
    ("allowed", "denied"),
    ("accept", "reject"),
    ("add", "remove"),
    ("up", "down"),
    ("win", "lose"),
    ("won", "lost"),
    ("male", "female"),
    ("north", "south"),
    ("east", "west"),
    ("left", "right"),
    ("top", "bottom"),
    ("best", "worst"),
    ("better", "worse"),
    ("faster", "slower"),
    ("fastest", "slowest"),
    ("cheapest", "dearest"),
    ("hot", "cold"),
    ("inside", "outside"),
    ("import", "export"),
    ("read", "write"),
    ("client", "server"),
    ("input", "output"),
]
OPPOSITES = frozenset(frozenset(pair) for pair in _OPPOSITES)


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.replace("’", "'").replace("n't", "nt"))


def _numbers(words: list[str]) -> set[str]:
    out = set()
    for w in words:
        low = w.lower()
        if low[0].isdigit():
            out.add(low.replace(",", ""))
        elif low in NUMBER_WORDS:
            out.add(NUMBER_WORDS[low])
        elif re.fullmatch(r"\d+(st|nd|rd|th)", low):
            out.add(low[:-2])
    return out


def _names(words: list[str]) -> set[str]:
    """Words written as a name (a capital past the first word) or an identifier (digits, dots, underscores,
    camel case), lower-cased."""
    out = set()
    for i, w in enumerate(words):
        if w[0].isdigit() or w.lower() in NUMBER_WORDS:
            continue
        if (i > 0 and w[0].isupper() and w.lower() != "i") or _IDENTIFIER.search(w):
            out.add(w.lower())
    return out


def _asks(words: list[str]) -> set[str]:
    """What a question asks for: its question words ("how" with the word after it when that is a measure)."""
    out = set()
    for i, w in enumerate(words):
        if w == "how" and i + 1 < len(words) and words[i + 1] in HOW_MEASURES:
            out.add(f"how {words[i + 1]}")
        elif w in QUESTION_WORDS:
            out.add(SAME_ASK.get(w, w))
    return out


def conflict(a: str, b: str) -> str | None:
    """Why two close questions must not share an answer ("negation", "asks", "number", "name", "opposite"), or
    None."""
    ta, tb = _tokens(a), _tokens(b)
    la, lb = [w.lower() for w in ta], [w.lower() for w in tb]
    if _asks(la) != _asks(lb):
        return "asks"
    if sum(w in NEGATIONS for w in la) != sum(w in NEGATIONS for w in lb):
        return "negation"
    if _numbers(ta) != _numbers(tb):
        return "number"
    wa, wb = set(la), set(lb)
    if any(n not in wb for n in _names(ta)) or any(n not in wa for n in _names(tb)):
        return "name"
    # Counted, not as sets: "in ... in" against "in ... out" has swapped one of two.
    only_a, only_b = Counter(la) - Counter(lb), Counter(lb) - Counter(la)
    if any(frozenset((x, y)) in OPPOSITES for x in only_a for y in only_b):
        return "opposite"
    return None


@dataclass(frozen=True)
class SemanticMatch:
    key: str
    question: str
    similarity: float


class _Scope:
    """One scope's questions, most recently used last; the matrix of their vectors built when asked for."""

    def __init__(self) -> None:
        self.entries: OrderedDict[str, tuple[str, np.ndarray]] = OrderedDict()  # key -> (question, unit vector)
        self._matrix: tuple[list[str], np.ndarray] | None = None

    def matrix(self) -> tuple[list[str], np.ndarray]:
        if self._matrix is None:
            keys = list(self.entries)
            self._matrix = (keys, np.stack([self.entries[k][1] for k in keys]))
        return self._matrix

    def changed(self) -> None:
        self._matrix = None


class SemanticIndex:
    """The questions answered per scope, bounded: ``max_entries`` a scope and ``max_scopes`` scopes, the least
    recently used dropped first. Thread-safe (the gateway's loop and its executor threads may both call it)."""

    def __init__(self, threshold: float, max_entries: int = 512, max_scopes: int = 1024, guard: bool = True) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"semantic threshold {threshold} is not in (0, 1]")
        self.threshold = threshold
        self.max_entries = max_entries
        self.max_scopes = max_scopes
        self.guard = guard
        self._scopes: OrderedDict[str, _Scope] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _unit(vector: list[float] | np.ndarray) -> np.ndarray:
        v = np.asarray(vector, dtype=np.float32).ravel()
        norm = float(np.linalg.norm(v))
        return v / norm if norm > 0 else v

    def lookup(self, scope: str, vector: list[float] | np.ndarray, question: str) -> SemanticMatch | None:
        """The closest earlier question of the scope at or over the threshold that the guard lets through."""
        v = self._unit(vector)
        with self._lock:
            held = self._scopes.get(scope)
            if held is None or not held.entries:
                SEMANTIC_LOOKUPS.labels("empty").inc()
                return None
            self._scopes.move_to_end(scope)
            keys, matrix = held.matrix()
            sims = matrix @ v
            order = np.argsort(-sims)
            candidates = [(keys[i], held.entries[keys[i]][0], float(sims[i])) for i in order[:8]]
        guarded = False
        for key, earlier, sim in candidates:
            if sim < self.threshold:
                break
            if self.guard and conflict(question, earlier) is not None:
                guarded = True
                continue
            SEMANTIC_LOOKUPS.labels("hit").inc()
            return SemanticMatch(key, earlier, round(sim, 4))
        SEMANTIC_LOOKUPS.labels("guarded" if guarded else "below_threshold").inc()
        return None

    def add(self, scope: str, vector: list[float] | np.ndarray, question: str, key: str) -> None:
        v = self._unit(vector)
        with self._lock:
            held = self._scopes.get(scope)
            if held is None:
                held = self._scopes[scope] = _Scope()
                while len(self._scopes) > self.max_scopes:
                    self._scopes.popitem(last=False)
            self._scopes.move_to_end(scope)
            held.entries[key] = (question, v)
            held.entries.move_to_end(key)
            while len(held.entries) > self.max_entries:
                held.entries.popitem(last=False)
            held.changed()

    def forget(self, scope: str, key: str) -> None:
        """Drop a question whose entry is gone (stale or unreadable)."""
        with self._lock:
            held = self._scopes.get(scope)
            if held is not None and held.entries.pop(key, None) is not None:
                held.changed()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(s.entries) for s in self._scopes.values())
