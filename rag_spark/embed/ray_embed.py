"""The embedding callable that Ray Data runs in an actor pool (one model per actor).

It does not import Ray: the same object runs directly in a unit test and under `map_batches` on a cluster.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from rag_spark.config import EmbedConfig
from rag_spark.embed.encoders import Encoder, build_encoder, passage_text


class EmbedBatch:
    """`{chunk_id, chunk_key, title, text, text_hash}` batches -> rows of the `embeddings` table (Arrow)."""

    def __init__(self, cfg: EmbedConfig, run_id: str) -> None:
        self.cfg = cfg
        self.run_id = run_id
        self._encoder: Encoder | None = None

    def setup(self) -> Encoder:
        if self._encoder is None:
            self._encoder = build_encoder(self.cfg)
        return self._encoder

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        enc = self.setup()
        titles = batch["title"]
        texts = [passage_text(t if isinstance(t, str) else None, x) for t, x in zip(titles, batch["text"], strict=True)]
        vecs = enc.encode_passages(texts)
        n = len(texts)
        # A plain list<float> column (not Ray's tensor extension type) so Spark reads it as array<float>.
        offsets = pa.array(np.arange(0, (n + 1) * enc.dim, enc.dim, dtype=np.int32))
        vectors = pa.ListArray.from_arrays(offsets, pa.array(vecs.reshape(-1), type=pa.float32()))
        return pa.table(
            {
                "chunk_id": pa.array(batch["chunk_id"].tolist(), pa.string()),
                "chunk_key": pa.array(batch["chunk_key"].astype(np.int64)),
                "model_id": pa.array([enc.model_id] * n, pa.string()),
                "text_hash": pa.array(batch["text_hash"].tolist(), pa.string()),
                "vector": vectors,
                "dim": pa.array(np.full(n, enc.dim, dtype=np.int32)),
                "normalized": pa.array(np.full(n, enc.normalized, dtype=bool)),
                "run_id": pa.array([self.run_id] * n, pa.string()),
            }
        )
