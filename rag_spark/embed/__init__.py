"""Embedding: encoders behind one Protocol, and the Ray actor callable that applies one to chunk batches."""
