"""Sharded FAISS indexes: train once, add per shard with explicit int64 ids, publish by an atomic manifest switch."""
