"""Collect documents (files, JSONL records) and the QA set into DataFrames; bad records become quarantine rows."""


class IngestError(RuntimeError):
    """A whole source (database, API) could not be read; the message names it and the reason.

    Raised rather than quarantined: merging a run that silently lost a source would delete its documents.
    """
