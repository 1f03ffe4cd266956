"""Cleaning: text normalization, exact dedup and chunking — pure DataFrame -> DataFrame functions."""
