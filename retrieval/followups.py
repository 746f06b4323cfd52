"""Follow-ups that retrieve: a question that leans on the conversation before it ("and how many dimensions does
it have?", "what did she do later?") names nothing a search can find on its own. Before the policy retrieves,
such a question is made standalone, in one of two ways (`retrieval.followup`):

- ``history``: the previous question and the start of its answer are joined to it, when it looks like a
  follow-up (a pronoun or a demonstrative, an opening "and"/"what about", or almost no words of its own). No
  model call. The answer matters: "who portrayed Corliss Archer?" → "Shirley Temple" → "what position did she
  hold later?" is about Shirley Temple, a name only the answer holds.
- ``model``: the answering model rewrites it as one standalone question from the last turns (one short call).

The prompt the model answers from keeps the question and the conversation as they are: only the search changes.
`ragyard bench docsqa --followups` measures the modes on two-turn conversations (README: Follow-ups)."""

from __future__ import annotations

import re
from typing import Literal

from retrieval.generation import ChatMessage

FollowupMode = Literal["off", "history", "model"]

# Words that point back at something said before. Hand-written: a small closed class of English words, the
# cue Adaptive-RAG-style query rewriting papers use too; no library offers it as such.
_REFERRING = {
    "it", "its", "it's", "they", "them", "their", "theirs", "he", "him", "his", "she", "her", "hers",
    "this", "that", "these", "those", "there", "one", "ones", "same", "former", "latter", "else", "other",
}  # fmt: skip
_OPENERS = ("and ", "also ", "what about ", "how about ", "and what", "and how", "and which", "then ")
_STOP = {
    "a", "an", "the", "is", "are", "was", "were", "be", "do", "does", "did", "what", "which", "who", "whom",
    "how", "when", "where", "why", "of", "in", "on", "at", "to", "for", "by", "with", "from", "can", "could",
    "i", "me", "my", "you", "your", "we", "our", "any", "there", "many", "much", "about", "as", "into", "so",
}  # fmt: skip
_WORD = re.compile(r"[A-Za-z0-9_./:-]+")

REWRITE_SYSTEM = (
    "Rewrite the user's last question as one standalone question that names what it refers to, using the "
    "conversation before it. Reply with the rewritten question only."
)
REWRITE_TOKENS = 48
CONTEXT_CHARS = 400  # of each earlier turn, in the rewrite prompt
ANSWER_CHARS = 300  # of the previous answer, in a ``history`` query


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def is_followup(question: str) -> bool:
    """Whether a question leans on what came before it: it refers back, opens as a continuation, or has at
    most two words of its own."""
    low = question.strip().lower()
    ws = words(low)
    if any(w in _REFERRING for w in ws) or low.startswith(_OPENERS):
        return True
    return len([w for w in ws if w not in _STOP]) <= 2


def last_user_turn(history: list[ChatMessage]) -> str | None:
    return next((m.content for m in reversed(history) if m.role == "user" and m.content.strip()), None)


def last_answer(history: list[ChatMessage]) -> str:
    return next((m.content for m in reversed(history) if m.role == "assistant" and m.content.strip()), "")


def with_history(question: str, history: list[ChatMessage]) -> str | None:
    """``history`` mode: the previous question, the start of its answer and this question as one query, when
    this one is a follow-up (None: it stands on its own, or there is nothing before it)."""
    before = last_user_turn(history)
    if before is None or not is_followup(question):
        return None
    answer = last_answer(history).strip()[:ANSWER_CHARS]
    return " ".join(part for part in (before.strip(), answer, question.strip()) if part)


def rewrite_messages(question: str, history: list[ChatMessage]) -> list[ChatMessage]:
    """The ``model`` mode's prompt: the last turns, then the question to make standalone."""
    turns = [m for m in history if m.role in ("user", "assistant")][-4:]
    convo = "\n".join(f"{m.role.capitalize()}: {m.content.strip()[:CONTEXT_CHARS]}" for m in turns)
    user = f"Conversation:\n{convo}\n\nLast question: {question.strip()}\nStandalone question:"
    return [ChatMessage(role="system", content=REWRITE_SYSTEM), ChatMessage(role="user", content=user)]


def clean_rewrite(text: str, question: str) -> str | None:
    """The model's rewrite as a query: its first line, unquoted; None when it gave nothing usable."""
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"^(standalone question|question)\s*:\s*", "", line, flags=re.IGNORECASE).strip().strip('"')
    if len(line) < 3 or line.lower() == question.strip().lower():
        return None
    return line
