"""What the torch engine does to one step's logits beyond sampling: OpenAI's frequency and presence
penalties, a structured-output constraint (``response_format``), and the log-probabilities a request
asked for.

The constraint is lm-format-enforcer's: its ``TokenEnforcer`` walks a character-level JSON (Schema) parser
over the tokenizer's prefix tree and says which token ids may come next. Writing that by hand would mean
a JSON Schema parser and a token trie of our own; the library is small, pure Python and already what
vLLM once shipped as a backend. Its per-tokenizer table takes a few seconds to build, so an engine builds
it once, on the first constrained request.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING, Any

from retrieval.generation import ResponseFormat, SamplingParams, TokenLogprob
from services.errors import InvalidRequestError

if TYPE_CHECKING:
    import torch


class EnforcerTables:
    """lm-format-enforcer's tokenizer data for one tokenizer, built on first use (thread-safe)."""

    def __init__(self, tokenizer: Any, eos_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = sorted(eos_ids)
        self._data: Any = None
        self._lock = threading.Lock()

    def data(self) -> Any:
        with self._lock:
            if self._data is None:
                from lmformatenforcer import TokenEnforcerTokenizerData

                vocab = len(self.tokenizer)
                zero = self.tokenizer.encode("0", add_special_tokens=False)[-1]
                special = set(self.tokenizer.all_special_ids)
                regular = []
                for idx in range(vocab):
                    if idx in special or idx in self.eos_ids:
                        continue
                    # Decoded after "0" keeps a word-start token's leading space, which decoding alone drops.
                    after_zero = self.tokenizer.decode([zero, idx])[1:]
                    alone = self.tokenizer.decode([idx])
                    regular.append((idx, after_zero, len(after_zero) > len(alone)))

                def decode(ids: list[int]) -> str:
                    return str(self.tokenizer.decode(ids)).rstrip("\ufffd")

                self._data = TokenEnforcerTokenizerData(regular, decode, self.eos_ids, False, vocab)
            return self._data


def enforcer(tables: EnforcerTables, fmt: ResponseFormat) -> Any:
    """A TokenEnforcer for ``fmt`` (a schema lm-format-enforcer cannot follow is the client's mistake)."""
    from lmformatenforcer import JsonSchemaParser, TokenEnforcer

    try:
        # json_object is any JSON object (a bare parser would take any JSON value, "1.1" included).
        parser = JsonSchemaParser(fmt.json_schema if fmt.type == "json_schema" else {"type": "object"})
    except Exception as exc:  # noqa: BLE001 - the library raises plain exceptions for schemas it cannot use
        raise InvalidRequestError(
            f"response_format.json_schema cannot be followed: {exc}", param="response_format"
        ) from exc
    return TokenEnforcer(tables.data(), parser)


class OutputShaper:
    """One request's logits processing: ``process`` before sampling, ``observe`` after it."""

    def __init__(
        self, params: SamplingParams, tokenizer: Any, tables: EnforcerTables | None, eos_ids: set[int] | None = None
    ) -> None:
        self.params = params
        self.eos_ids = eos_ids or set()
        self.tokenizer = tokenizer
        self.counts: Counter[int] = Counter()
        self.generated: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self._texts: dict[int, str] = {}  # token id -> text, for this request's logprobs
        self._enforcer = None
        if params.response_format is not None:
            if tables is None:
                raise InvalidRequestError("this engine cannot constrain its output", param="response_format")
            self._enforcer = enforcer(tables, params.response_format)

    @staticmethod
    def needed(params: SamplingParams) -> bool:
        return params.penalised or params.shapes_output

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        out = logits.float()
        if self.params.penalised and self.counts:
            ids = torch.tensor(list(self.counts), dtype=torch.long)
            counts = torch.tensor([self.counts[i] for i in self.counts], dtype=out.dtype)
            out = out.clone()
            out[ids] -= counts * self.params.frequency_penalty + self.params.presence_penalty
        if self._enforcer is not None:
            allowed = self._enforcer.get_allowed_tokens(self.generated).allowed_tokens
            mask = torch.full_like(out, float("-inf"))
            mask[torch.tensor(allowed, dtype=torch.long)] = 0.0
            out = out + mask
        return out

    def observe(self, token: int, raw_logits: torch.Tensor) -> None:
        """Count the token and, when asked, record its log-probability under the model's own distribution
        (before penalties and the constraint: what vLLM reports by default)."""
        self.counts[token] += 1
        self.generated.append(token)
        if self.params.logprobs is None or token in self.eos_ids:  # the end of turn is not part of the answer
            return
        import torch

        logp = torch.log_softmax(raw_logits.float(), dim=-1)
        top: list[tuple[str, float]] = []
        if self.params.logprobs > 0:
            values, ids = torch.topk(logp, self.params.logprobs)
            top = [(self._text(int(i)), float(v)) for v, i in zip(values, ids, strict=True)]
        self.logprobs.append(TokenLogprob(self._text(token), float(logp[token]), top))

    def _text(self, token: int) -> str:
        text = self._texts.get(token)
        if text is None:
            text = self._texts[token] = str(self.tokenizer.decode([token]))
        return text

    def take(self) -> list[TokenLogprob] | None:
        """The log-probabilities recorded since the last call (None when none were asked for)."""
        if self.params.logprobs is None:
            return None
        out, self.logprobs = self.logprobs, []
        return out
