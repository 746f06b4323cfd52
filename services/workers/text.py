"""What every engine does with text the same way: the chat template, token counts, the prompt check."""

from __future__ import annotations

from typing import Any

from retrieval.generation import ChatMessage, SamplingParams
from services.errors import InvalidRequestError


class TokenizerMixin:
    """Needs ``self.tokenizer`` (a HF tokenizer) and ``self.max_model_len``."""

    tokenizer: Any
    max_model_len: int

    def end_ids(self, generation_eos: Any = None) -> set[int]:
        """Token ids that end an answer: the generation config's and tokenizer's EOS, and ``<|im_end|>``."""
        ids: set[int] = set()
        for value in (generation_eos, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(v for v in value if isinstance(v, int))
        end_turn = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(end_turn, int) and end_turn != self.tokenizer.unk_token_id:
            ids.add(end_turn)
        return ids

    def render_chat(self, messages: list[ChatMessage]) -> str:
        rendered = self.tokenizer.apply_chat_template(
            [m.model_dump() for m in messages], tokenize=False, add_generation_prompt=True
        )
        return str(rendered)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def _check_prompt(self, prompt_ids: list[int], params: SamplingParams) -> int:
        """Tokens the completion may have; a prompt that leaves no room is the client's mistake."""
        if not prompt_ids:
            raise InvalidRequestError("the prompt is empty", param="messages")
        room = self.max_model_len - len(prompt_ids)
        if room <= 0:
            raise InvalidRequestError(
                f"the prompt is {len(prompt_ids)} tokens; this model takes at most "
                f"{self.max_model_len - 1} prompt tokens",
                param="messages",
                code="context_length_exceeded",
            )
        return min(params.max_tokens, room)
