"""`core.loading.load_object`: every registry's "module:Class" targets."""

from __future__ import annotations

import pytest

from core.loading import LoadError, load_object

pytestmark = pytest.mark.unit


def test_a_target_loads_its_attribute() -> None:
    from core.scoring import score

    assert load_object("core.scoring:score") is score


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("core.scoring", 'is not "module:Class"'),
        ("core.scoring:", 'is not "module:Class"'),
        (":score", 'is not "module:Class"'),
        ("core.nowhere:score", "cannot load"),
        ("core.scoring:nothing_here", "cannot load"),
    ],
)
def test_a_bad_target_is_a_load_error_naming_it(target: str, says: str) -> None:
    with pytest.raises(LoadError, match=says) as err:
        load_object(target)
    assert repr(target) in str(err.value)
