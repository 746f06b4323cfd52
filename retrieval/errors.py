"""Errors of the retrieval package."""

from __future__ import annotations

from core.errors import RagyardError


class RetrievalError(RagyardError):
    """Root of the retrieval package's errors (under the project's root, `core.errors.RagyardError`)."""


class DocumentFormatError(RetrievalError):
    """A document's content cannot be parsed in the format it claims."""


class UnsupportedDocumentTypeError(RetrievalError):
    """The document type is not one the ingester reads."""


class UnknownPolicyError(RetrievalError):
    """No retrieval policy is registered under that name."""


class IndexStateError(RetrievalError):
    """The persisted index cannot be read or does not match the embedder."""


class DocumentOwnershipError(RetrievalError):
    """The document is readable but not the caller's to change (a tenant removing a shared document)."""


class AmbiguousDocumentError(RetrievalError):
    """An id several namespaces hold, asked for without saying which (an operator's removal)."""


class DocumentNotFoundError(RetrievalError):
    """No document with that id is visible to the caller."""


class IndexLockedError(IndexStateError):
    """Another process holds the index directory's writer lock."""


class IndexWriteError(RetrievalError):
    """A snapshot could not be written (the disk is full or read-only); the previous one stays current."""


class CorpusLogError(RetrievalError):
    """The corpus log is misconfigured or holds an entry this replica cannot read."""


class CorpusLogUnavailableError(RetrievalError):
    """The corpus log (Redis) did not answer: a write is not acknowledged, a catch-up did not happen."""


class CorpusBusyError(RetrievalError):
    """Other writers kept moving the corpus log while this write was checked against it; try again."""


class GenerationAheadError(RetrievalError):
    """A request asked for a corpus generation the log has not reached (no write ever returned it)."""


class GenerationLagError(RetrievalError):
    """This replica could not catch up to the generation a request asked for in time."""


class OutputFormatError(RetrievalError):
    """The final answer does not meet the ``response_format`` its generation was constrained to: an engine's
    constraint gave up part way. The request ends with this error, never with a 200 holding broken JSON."""
