"""Sentence-level context selection: the retrieved passages cut down to the lines and sentences that bear on the
question, so a small model reads a short prompt with the fact near the top instead of four chunks of similar text.

A passage is split into units: a table row (shown under its table's header row), a list item, a line of code, a
sentence of prose. Each unit is scored by the question's content words it holds, each weighted by its inverse
frequency among the candidate units (a word every unit holds tells nothing) and by how rare it is in the question's
own passages, with a small bonus for words of the passage's nearest heading. A follow-up's words count fully and
the words its standalone query borrowed from the conversation a quarter (`HISTORY_WEIGHT`): the history finds the
passages, the follow-up chooses their lines. The best units are kept up to a token
budget, each with its neighbour when it is short, and shown in the passage's own order under the passage's heading,
so the model still sees which section a fact comes from.

Written here rather than taken from a library: langchain's and LlamaIndex's sentence compressors either call an LLM
or embed every sentence (an embedder round trip per request on this CPU), and none keeps markdown's table headers
with their rows; this is a few regexes and counts. `ragyard bench docsqa` measures it against whole passages
(README: "Context a small model can use").
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, replace

from retrieval.documents import Passage
from retrieval.prompts import CHARS_PER_TOKEN
from retrieval.support import STOPWORDS

_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+(?=[\"'(\[*]?[A-Z0-9`])")
_WORD = re.compile(r"[a-z0-9_]+(?:[./'-][a-z0-9_]+)*")
_HEADING = re.compile(r"^#{1,6}\s+(.*)$")
_TABLE_RULE = re.compile(r"^\|?\s*:?-{2,}")
# Whole sentences (a quote): a sentence ends at . ! or ? before a capital, a digit or code, not after "e.g.", "i.e."
# or an initial ("Franklin D. Roosevelt", "S.M. Entertainment", "U.S. House"); a list item starts a paragraph of its
# own.
_WHOLE_SENTENCE_END = re.compile(r"(?<!\be\.g\.)(?<!\bi\.e\.)(?<!\b[A-Z]\.)(?<=[.!?])\s+(?=[\"'(\[*]?[A-Z0-9`])")
_LIST_ITEM = re.compile(r"^(?:[-*+]|\d{1,3}[.)])\s")
_MID_SENTENCE = re.compile(r"\s*[a-z,;:)\]]")  # a chunk whose text starts so starts inside a sentence
_LONG_SENTENCE = 400  # characters: a longer sentence is cut again at its semicolons
# `bench followups --modes history` (README "Follow-ups that retrieve"): 22/47 right with every word alike, 23 at
# 0.5, 24 at 0.25.
HISTORY_WEIGHT = 0.25


@dataclass
class Unit:
    passage: int  # index of its passage
    order: int  # position within its passage
    text: str
    header: str | None = None  # a table row's header row
    heading: str = ""  # the nearest heading above it in its passage
    code: bool = False  # a line of a fenced code block
    score: float = 0.0


def _stem(word: str) -> str:
    # Enough folding for a question's words to meet the docs' ("limits" / "limit", "retries" / "retry").
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def content_words(text: str) -> set[str]:
    words: set[str] = set()
    for w in _WORD.findall(text.lower()):
        if w in STOPWORDS or len(w) < 2:
            continue
        words.add(_stem(w))
        # An identifier's parts count too: a question about "chunk overlap" meets `chunk_overlap_tokens`.
        for part in re.split(r"[._/'-]", w):
            if part and part != w and part not in STOPWORDS and len(part) > 1:
                words.add(_stem(part))
    return words


def _whole_sentences(paragraph: str) -> list[str]:
    out: list[str] = []
    for sentence in _WHOLE_SENTENCE_END.split(paragraph):
        sentence = sentence.strip()
        if len(sentence) > _LONG_SENTENCE:
            out += [c.strip() for c in sentence.split("; ") if c.strip()]
        elif sentence:
            out.append(sentence)
    return out


def split_units(text: str, passage: int, *, whole_sentences: bool = False) -> list[Unit]:
    """The passage's units: table rows, lines of code, and lines of prose (a long line cut at its sentences); with
    ``whole_sentences``, prose is rejoined across markdown's hard wraps first and cut into whole sentences (what a
    quote shows a reader; the prompt's selection reads lines better: README, "Context a small model can use")."""
    units: list[Unit] = []
    heading = ""
    header: str | None = None
    in_code = False
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            sentences = _whole_sentences(" ".join(paragraph))
            if not units and _MID_SENTENCE.match(text):
                # The passage's chunk starts inside a sentence whose start is in the chunk before: not a quote.
                sentences = sentences[1:]
            units.extend(Unit(passage, len(units), s, heading=heading) for s in sentences)
            paragraph.clear()

    lines = text.splitlines()
    for i, raw in enumerate(lines):
        line = raw.strip()
        if whole_sentences and (not line or in_code or line.startswith(("```", "|", "#")) or _LIST_ITEM.match(line)):
            flush()
        if line.startswith("```"):
            in_code = not in_code
            continue
        if not line:
            header = None
            continue
        if not in_code and (m := _HEADING.match(line)):
            heading = m.group(1).strip()
            continue
        if line.startswith("|"):
            if _TABLE_RULE.match(line.lstrip("| ")):
                continue
            nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if header is None and _TABLE_RULE.match(nxt.lstrip("| ")):
                header = line  # the header row: shown above any of its rows that are kept
                continue
            units.append(Unit(passage, len(units), line, header=header, heading=heading))
            continue
        header = None
        if whole_sentences and not in_code:
            paragraph.append(line)
            continue
        if in_code or len(line) < 160:
            units.append(Unit(passage, len(units), line, heading=heading, code=in_code))
            continue
        for sentence in _SENTENCE_END.split(line):
            if sentence.strip():
                units.append(Unit(passage, len(units), sentence.strip(), heading=heading))
    flush()
    return units


def _score(units: list[Unit], question: str, context: str | None = None) -> None:
    own = content_words(question)
    # A follow-up's standalone query adds the conversation's words; they find the passages, but the lines kept
    # should answer what the follow-up itself asks, so a word only the history holds counts for less.
    borrowed = content_words(context) - own if context else set()
    asked = own | borrowed
    if not asked:
        return

    def share(w: str) -> float:
        return HISTORY_WEIGHT if w in borrowed else 1.0

    bags = [content_words(u.text) for u in units]
    df = Counter(w for bag in bags for w in bag & asked)
    n = len(units)
    for u, bag in zip(units, bags, strict=True):
        hit = bag & asked
        weight = sum(share(w) * math.log(1 + n / df[w]) for w in hit)
        heading_words = content_words(u.heading) & asked - hit
        weight += 0.3 * sum(share(w) * math.log(1 + n / max(df[w], 1)) for w in heading_words)
        # Long units hold more words by chance; a mild length norm, as BM25's.
        u.score = weight / (0.75 + 0.25 * max(len(bag), 1) / 12)


def select_sentences(
    question: str, passages: list[Passage], max_tokens: int, *, context: str | None = None
) -> list[Passage]:
    """The passages with their text cut to the units that bear on the question, within ``max_tokens`` (estimated
    as the whole passages' budget is: `retrieval.prompts.CHARS_PER_TOKEN`), in relevance order of their passages;
    a passage left with nothing is dropped. ``context``: a follow-up's standalone query, whose words beyond the
    question's count `HISTORY_WEIGHT` as much.
    Empty when there is nothing to select by (a question with no content word, passages with nothing it asks
    about): the caller shows the passages whole."""
    units = line_units(passages)
    if not units:
        return []
    _score(units, question, context)
    ranked = sorted(units, key=lambda u: (-u.score, u.passage, u.order))
    if ranked[0].score <= 0:
        return []
    budget = max_tokens * CHARS_PER_TOKEN
    used = 0.0
    kept: set[tuple[int, int]] = set()
    by_key = {(u.passage, u.order): u for u in units}
    seen: list[str] = []  # the kept units' texts: overlapping chunks hold the same sentences twice
    for u in ranked:
        if u.score <= 0:
            break
        if any(u.text in t for t in seen):
            continue
        picks = [u]
        # A short line ("Yes.", a list item's first line) reads better with the one after it; a table row stands
        # alone under its header.
        after = by_key.get((u.passage, u.order + 1))
        if len(u.text) < 60 and u.header is None and after is not None and after.header is None:
            picks.append(after)
        cost = sum(len(p.text) + len(p.header or "") for p in picks if (p.passage, p.order) not in kept)
        if kept and used + cost > budget:
            continue
        used += cost
        kept.update((p.passage, p.order) for p in picks)
        seen.extend(p.text for p in picks)
    out: list[Passage] = []
    for n, p in enumerate(passages):
        mine = [u for u in units if u.passage == n and (u.passage, u.order) in kept]
        if not mine:
            continue
        lines: list[str] = []
        heading = None
        header = None
        for u in mine:
            if u.heading and u.heading != heading:
                lines.append(f"## {u.heading}")
                heading = u.heading
            if u.header and u.header != header:
                lines.append(u.header)
            header = u.header
            lines.append(u.text)
        out.append(replace(p, chunk=replace(p.chunk, text="\n".join(lines))))
    return out


# The closest line (`retrieval.evidence`) ranks every unit of the passages by its words (normalised to the best
# unit's) and its embedding's cosine to the question's, mixed with this weight on the cosine. Measured on the docs-QA
# dev set (100 questions, the 8 passages the hybrid search finds), the top unit held every key fact for 31 questions
# by words alone and 43 at 0.65 (0.5: 39, 0.8: 43, the cosine alone 45, but the best two units held them for 51
# there and 55 at 0.65); with chunk sections in the search, 27 by words and 45 at 0.65
# (`results/docsqa-sections-search-2026-12-07/offline.py`; README: "Sections in the search, lines by the embedder").
LINE_SIMILARITY_WEIGHT = 0.65


def line_units(passages: list[Passage], *, whole_sentences: bool = False) -> list[Unit]:
    """The passages' units, in the order `best_lines` takes a similarity for each."""
    return [u for n, p in enumerate(passages) for u in split_units(p.chunk.text, n, whole_sentences=whole_sentences)]


def unit_text(u: Unit) -> str:
    """What an embedder reads of a unit: its heading and table header row before its own text."""
    head = f"{u.heading}: " if u.heading else ""
    return f"{head}{u.header} {u.text}" if u.header else f"{head}{u.text}"


def best_lines(
    question: str,
    passages: list[Passage],
    *,
    count: int = 1,
    context: str | None = None,
    similarity: list[float] | None = None,
    whole_sentences: bool = False,
) -> list[tuple[int, str]]:
    """The passages' ``count`` units that bear most on the question, best first: each one's passage index and its
    text (a table row under its header row; a short unit with the one after it); a unit another passage repeats
    (overlapping chunks) is given once. Scored by words as `select_sentences` scores units; with ``similarity``
    (each `line_units` unit's cosine to the question, with the same ``whole_sentences``), by both
    (`LINE_SIMILARITY_WEIGHT`). Empty when no unit holds a word of the question: nothing in the passages is about
    it."""
    units = line_units(passages, whole_sentences=whole_sentences)
    if not units:
        return []
    _score(units, question, context)
    best = max(u.score for u in units)
    if best <= 0:
        return []
    if similarity is not None:
        if len(similarity) != len(units):
            raise ValueError(f"{len(similarity)} similarities for {len(units)} units")
        w = LINE_SIMILARITY_WEIGHT
        for u, cos in zip(units, similarity, strict=True):
            u.score = (1 - w) * u.score / best + w * max(0.0, cos)
    by_key = {(u.passage, u.order): u for u in units}
    found: list[tuple[int, str]] = []
    for top in sorted(units, key=lambda u: (-u.score, u.passage, u.order)):
        if len(found) == count:
            break
        if any(top.text in text for _, text in found):
            continue
        lines = [top.text]
        if top.header is not None:
            lines.insert(0, top.header)
        elif len(top.text) < 60:
            after = by_key.get((top.passage, top.order + 1))
            if after is not None and after.header is None:
                lines.append(after.text)
        # A short sentence reads on into the next one; a table row sits under its header, a line under a line.
        joiner = " " if whole_sentences and top.header is None and not top.code else "\n"
        found.append((top.passage, joiner.join(lines)))
    return found
