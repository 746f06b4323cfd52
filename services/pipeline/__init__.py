"""The answer path: the records it takes and gives, the clients it calls (retriever, workers, router), the
service that answers (route, cache, retrieve, generate, account) and the spans around its calls."""

from services.pipeline.records import Answer, AnswerRequest, Completion, StreamEvent
from services.pipeline.service import RagService, build_cache, build_local

__all__ = ["Answer", "AnswerRequest", "Completion", "RagService", "StreamEvent", "build_cache", "build_local"]
