from __future__ import annotations

import pytest

from cache.backends import open_backend
from cache.chunk_kv import ChunkKVStore, CorruptEntryError
from cache.chunk_state import ChunkState, StateCodec

pytestmark = pytest.mark.unit


def _entry(model: str = "fp-a") -> ChunkState:
    return ChunkState("ckv:v1:k1", model, [5, 6, 7], 40, b"\x01\x02" * 100, 0.25)


def test_codec_round_trip() -> None:
    codec = StateCodec()
    e = _entry()
    back = codec.decode(codec.encode(e), key=e.key, model=e.model, token_ids=e.token_ids)
    assert back == e and back.nbytes == 200


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"model": "fp-b"}, "another key or model"),
        ({"key": "ckv:v1:other"}, "another key or model"),
        ({"token_ids": [5, 6, 8]}, "token ids differ"),
    ],
)
def test_codec_refuses_another_model_key_or_tokens(change: dict[str, object], expect: str) -> None:
    codec = StateCodec()
    e = _entry()
    want = {"key": e.key, "model": e.model, "token_ids": e.token_ids, **change}
    with pytest.raises(CorruptEntryError, match=expect):
        codec.decode(codec.encode(e), **want)  # type: ignore[arg-type]


def test_codec_refuses_damaged_blobs() -> None:
    codec = StateCodec()
    e = _entry()
    blob = codec.encode(e)
    for broken in (
        blob[:4],
        blob[:-1],
        blob[:-1] + b"\x00",
        b"\xff" * 8 + blob[8:],
        blob.replace(b"format", b"formax"),
    ):
        with pytest.raises(CorruptEntryError):
            codec.decode(broken, key=e.key, model=e.model, token_ids=e.token_ids)


def test_a_store_of_states_shares_through_its_backend() -> None:
    backend = open_backend("memory://")
    writer = ChunkKVStore(model="fp-a", memory_bytes=1 << 20, backend=backend, codec=StateCodec())
    reader = ChunkKVStore(model="fp-a", memory_bytes=1 << 20, backend=backend, codec=StateCodec())
    other = ChunkKVStore(model="fp-b", memory_bytes=1 << 20, backend=backend, codec=StateCodec())
    e = _entry()
    assert writer.put(e) > 0
    found = reader.get(e.key, e.token_ids)
    assert found.tier == "redis" and found.entry == e  # the second tier, whatever its backend
    # Another engine build or model (another fingerprint) never gets it, even under the same key.
    assert other.get(e.key, e.token_ids).entry is None


def test_a_tensor_store_still_needs_its_shape() -> None:
    with pytest.raises(ValueError, match="shape and dtype"):
        ChunkKVStore(model="fp", memory_bytes=10)
