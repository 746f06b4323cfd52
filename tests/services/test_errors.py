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
