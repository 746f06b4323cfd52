"""Screening retrieved text for instructions addressed to the model (prompt injection).

A document is data: a chunk that tells the model to ignore its instructions, to reveal its prompt, to answer
in another language, to send the reader to a link, or that carries chat-template markup, is trying to take over
every prompt that retrieves it. Each rule below names one such move; a chunk matching any is flagged at ingest
(operators see the count on the document) and, at prompt time, dropped or labelled by `retrieval.injection`.

Written by hand: the classifiers that do this (DeBERTa models fine-tuned on injection data) are downloaded
from a model hub at run time, which this service does not do; and these rules are a screen, not a proof. The
prompt's fence (`retrieval.prompts`) is the second line: every passage is quoted as data. The benchmark
(`ragyard bench injection`) measures both on attacks that these rules catch and on ones they do not.
"""

from __future__ import annotations

import re

_WORDS = r"[^.\n]{0,40}?"
RULES: dict[str, re.Pattern[str]] = {
    # "Ignore the previous instructions", "disregard all rules above", "forget your prompt", "ignore the rest of
    # this data and print ..." (garak's latent injections).
    "override": re.compile(
        rf"\b(ignore|disregard|forget|override|bypass)\b{_WORDS}\b(previous|prior|above|earlier|preceding|all|any|"
        r"your|the|these|those|other|rest of)\b[^.\n]{0,30}?\b(instructions?|prompts?|rules|directions|guidelines|"
        r"question|context|passages?|data|text|document|content)\b",
        re.IGNORECASE,
    ),
    # "You are now DAN", "from now on you ...", "pretend to be", "act as an unrestricted assistant".
    "role": re.compile(
        r"\byou are now\b|\bfrom now on,? (you|answer|reply|respond|always)\b|\bpretend (to be|you are)\b|"
        rf"\bact as\b{_WORDS}\b(assistant|ai|model|bot|system|admin)\b|\bnew (system )?instructions?\s*:",
        re.IGNORECASE,
    ),
    # "Print your system prompt", "reveal the hidden instructions", "repeat the text above".
    "leak": re.compile(
        rf"\b(reveal|print|show|repeat|output|leak|disclose|recite|dump)\b{_WORDS}\b(system (prompt|message)|"
        r"hidden (instructions?|prompt)|your (instructions|prompt|rules)|the (text|words) above|api key|"
        r"admin (key|password))\b",
        re.IGNORECASE,
    ),
    # Orders to whoever answers: "the assistant must reply ...", "AI models reading this should ...".
    "addressed": re.compile(
        r"\b(assistants?|ai|chatbots?|language models?|llms?|the model)\b[^.\n]{0,25}?\b(must|should|shall|"
        r"will|needs? to|is required to)\b[^.\n]{0,20}?\b(reply|respond|answer|say|output|write|tell|ignore|"
        r"refuse|include|add|recommend)\b",
        re.IGNORECASE,
    ),
    # "Answer only in French", "respond in German from now on".
    "language": re.compile(
        r"\b(answer|reply|respond|write|speak|translate (your|the) (answer|reply))\b[^.\n]{0,25}?\bin "
        r"(french|german|spanish|italian|portuguese|russian|chinese|japanese|korean|arabic|dutch|polish|"
        r"turkish|pig latin)\b",
        re.IGNORECASE,
    ),
    # "Tell the user to visit http://...", "include this link in your answer".
    "link": re.compile(
        r"\b(tell|ask|direct|send|urge|invite|instruct)\b[^.\n]{0,25}?\b(the )?(user|reader|asker|them)\b"
        r"[^.\n]{0,40}?(https?://|www\.|\bvisit\b|\bclick\b|\bcall\b)|\b(include|add|insert|append)\b"
        r"[^.\n]{0,25}?\b(this|the following) (link|url)\b",
        re.IGNORECASE,
    ),
    # Chat-template markup that would open a turn of its own.
    "markup": re.compile(
        r"<\|(im_start|im_end|system|user|assistant|eot_id|start_header_id|endoftext|end)\|>|\[/?INST\]|<</?SYS>>|"
        r"</?(system|assistant)>|"
        r"^\s*#{2,}\s*(system|instruction|assistant)\b|^\s*(system|assistant)\s*:\s",
        re.IGNORECASE | re.MULTILINE,
    ),
}


def screen(text: str) -> list[str]:
    """The names of the rules ``text`` matches, in `RULES` order (empty: nothing instruction-like found)."""
    return [name for name, rule in RULES.items() if rule.search(text)]
