"""A langchain-core ``BaseRetriever`` over Ragyard's retriever, for chains built with langchain."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LCDocument
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field


class RagyardRetriever(BaseRetriever):
    """``retriever.invoke("question")`` returns langchain Documents with citation metadata."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: Any = Field(description="A retrieval.retriever.Retriever.")
    k: int = Field(4, gt=0, description="Passages to return.")

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[LCDocument]:
        return [
            LCDocument(
                page_content=p.chunk.text,
                metadata={
                    "document_id": p.chunk.doc_id,
                    "title": p.chunk.title,
                    "section": p.chunk.section,
                    "chunk": p.chunk.chunk_index,
                    "score": p.score,
                    "source": p.chunk.source,
                },
            )
            for p in self.retriever.search(query, self.k)
        ]
