"""Retrieval: dense search over the sharded index, collapsed from chunks to documents."""
