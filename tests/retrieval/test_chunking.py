"""The headings each chunk sits under (retrieval/chunking.py): found outside fenced code, the chunk's own opening
heading and the document's title left out. The retriever's side (the section in search and prompts, a document cut
again when the chunking changed) is in tests/retrieval/test_retriever.py."""

from __future__ import annotations

import pytest

from retrieval.chunking import section_at, section_trails
from retrieval.documents import Chunk

pytestmark = pytest.mark.unit

DOC = """# Ragyard

Intro text.

## Quick start

Two commands.

### Tests

```bash
# not a heading: a comment in fenced code
make test
```

The suite runs.

## API
Routes.
"""


def at(offset: int, text: str) -> str:
    trails = section_trails(DOC)
    return section_at(trails, [p for p, _ in trails], offset, text, "Ragyard")


def test_headings_nest_by_level_and_fenced_code_holds_none() -> None:
    trails = section_trails(DOC)
    assert [names for _, names in trails] == [
        ["Ragyard"],
        ["Ragyard", "Quick start"],
        ["Ragyard", "Quick start", "Tests"],
        ["Ragyard", "API"],
    ]
    assert all(DOC[pos] == "#" for pos, _ in trails)


def test_a_chunk_sits_under_the_headings_before_it_less_the_title_and_its_own_opening_heading() -> None:
    inside = DOC.index("The suite runs.")
    assert at(inside, "The suite runs.") == "Quick start › Tests"
    assert at(DOC.index("# not a heading"), "# not a heading: a comment") == "Quick start › Tests"
    # A chunk that opens with its heading shows it in its text: the section is the heading's parents.
    assert at(DOC.index("### Tests"), "### Tests\n\n```bash") == "Quick start"
    assert at(DOC.index("## API"), "## API\nRoutes.") == ""
    assert at(DOC.index("Intro"), "Intro text.") == ""
    assert at(0, "# Ragyard\n\nIntro text.") == ""
    assert section_trails("No headings at all.\n#hashtag is not one") == []


def test_the_heading_shows_title_and_section() -> None:
    chunk = Chunk(0, "d", "Ragyard", "Two commands.", 0, 0, section="Quick start")
    assert chunk.heading == "Ragyard › Quick start"
    assert Chunk(0, "d", "Ragyard", "x", 0, 0).heading == "Ragyard"
    assert Chunk(0, "d", "", "x", 0, 0, section="API").heading == "API"
