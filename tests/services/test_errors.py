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


def test_every_packages_error_root_is_the_projects() -> None:
    from cache.errors import CacheError
    from core.errors import RagyardError
    from retrieval.errors import RetrievalError
    from router.errors import RouterError
    from services.errors import InvalidRequestError, ServiceUnavailableError

    for root in (CacheError, RetrievalError, RouterError, InvalidRequestError, ServiceUnavailableError):
        assert issubclass(root, RagyardError), root


def test_a_lower_error_the_table_does_not_convert_is_an_opaque_500() -> None:
    from retrieval.errors import CorpusLogError, DocumentNotFoundError
    from services.http.errors import to_ragyard

    hidden = to_ragyard(CorpusLogError("entry 7 of the log is unreadable"))
    assert (hidden.status_code, hidden.code) == (500, "internal_error") and "entry 7" not in hidden.message
    shown = to_ragyard(DocumentNotFoundError("no document 'x'"))
    assert (shown.status_code, shown.code, shown.param) == (404, "document_not_found", "id")


def test_lower_errors_cross_a_process_boundary_with_their_fields() -> None:
    import pickle

    from retrieval.errors import DocumentNotFoundError
    from router.errors import OverloadedError

    shed = pickle.loads(pickle.dumps(OverloadedError("shed", param="x-sla-tier", retry_after=3)))
    assert (type(shed), shed.message, shed.param, shed.retry_after) == (OverloadedError, "shed", "x-sla-tier", 3)
    gone = pickle.loads(pickle.dumps(DocumentNotFoundError("no document 'x'")))
    assert type(gone) is DocumentNotFoundError and gone.message == "no document 'x'"
