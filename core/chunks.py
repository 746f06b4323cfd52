"""A retrieved text as a prompt holds it, with the namespace of the document it came from.

The chunk-KV caches key a chunk's stored KV by its namespace as well as its tokens: a request can only reuse
(or time) an entry computed for a chunk its caller could read, so one tenant's requests learn nothing of which
texts another tenant's documents hold. The shared namespace's chunks are shared by everyone."""

from __future__ import annotations

from typing import NamedTuple


class PromptChunk(NamedTuple):
    text: str
    namespace: str
    # False: a text made for this one prompt (a passage cut to the sentences its question asks about,
    # `retrieval.context: sentences`). The prompt's prefix before it is still reused where the engine stores
    # prefixes (llama.cpp), but its own KV is computed in place, never looked up, stored or queued.
    stored: bool = True
