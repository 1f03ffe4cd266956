"""Collect documents (files, JSONL records) and the QA set into DataFrames; bad records become quarantine rows."""
