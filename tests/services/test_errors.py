from __future__ import annotations

import pickle

import pytest

from services.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("cls", [InvalidRequestError, NotFoundError, PayloadTooLargeError])
def test_errors_pickle_with_their_fields(cls: type[InvalidRequestError]) -> None:
    err = cls("bad thing", param="max_tokens", code="custom")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert (back.message, back.param, back.code, back.status_code) == (
        "bad thing",
        "max_tokens",
        "custom",
        err.status_code,
    )


@pytest.mark.unit
def test_a_model_without_a_worker_is_a_503_not_a_key_error() -> None:
    import asyncio

    from retrieval.policies.base import Question
    from services.config import load_config
    from services.errors import ServiceUnavailableError
    from services.pipeline import AnswerRequest, RagService

    service = RagService(load_config({}), retriever=None, workers={})  # type: ignore[arg-type]
    req = AnswerRequest(question=Question(text="Is water wet?"), policy="none", model="smollm2-135m-instruct")
    with pytest.raises(ServiceUnavailableError, match="has no worker here"):
        asyncio.run(service.answer(req))
