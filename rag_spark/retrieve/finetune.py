"""The bi-encoder training loop of `train-retriever`, free of Spark: (anchor, positive, negatives...) rows in, a
fine-tuned sentence-transformers model out.

A plain torch loop around sentence-transformers' MultipleNegativesRankingLoss (in-batch negatives + the rows' hard
negatives), AdamW with linear warm-up and decay, gradient clipping at 1. On a GPU with bfloat16 support the forward
pass runs under bf16 autocast (`train.precision: auto`): the weights and the optimizer state stay fp32, so the saved
model is the same kind of folder as a CPU-trained one. The GPU machine this was measured on is named in the README
("GPUs"); `benchmarks/gpu_train.py` is the measurement.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from typing import Any

import numpy as np

from rag_spark.config import TrainConfig

log = logging.getLogger(__name__)

Triple = tuple[str, str, list[str]]


def resolve_precision(requested: str, device: str) -> str:
    """`auto` -> `bf16` on a CUDA device that supports it, else `fp32`.

    Raises:
        ValueError: `bf16` asked for on a CUDA device without bfloat16 support.
    """
    import torch

    if requested == "auto":
        return "bf16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "fp32"
    if requested == "bf16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise ValueError("train.precision=bf16 but this GPU does not support bfloat16 (use fp32 or auto)")
    return requested


def fit_bi_encoder(model: Any, rows: list[Triple], cfg: TrainConfig) -> tuple[list[float], str]:
    """Trains `model` in place on `rows` for `cfg.epochs`; returns (mean loss per epoch, precision used).

    Every row must carry the same number of negatives (they form the loss's extra columns). Batches of one row are
    skipped: in-batch negatives need company.
    """
    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    if len({len(r[2]) for r in rows}) > 1:
        raise ValueError("fit_bi_encoder: every row needs the same number of negatives")
    device = str(model.device)
    precision = resolve_precision(cfg.precision, device)
    autocast: Any = (
        torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    torch.manual_seed(cfg.seed)
    loss_fn = MultipleNegativesRankingLoss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = int(total * cfg.warmup_fraction)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )
    rnd = random.Random(cfg.seed)
    model.train()
    losses: list[float] = []
    for epoch in range(cfg.epochs):
        order = list(range(len(rows)))
        rnd.shuffle(order)
        seen: list[float] = []
        for start in range(0, len(order), cfg.batch_size):
            batch = [rows[i] for i in order[start : start + cfg.batch_size]]
            if len(batch) < 2:
                continue
            columns = [[b[0] for b in batch], [b[1] for b in batch]]
            columns += [[b[2][j] for b in batch] for j in range(len(batch[0][2]))]
            features = []
            for col in columns:
                f = model.preprocess(col)  # sentence-transformers 6: `tokenize` is deprecated
                features.append({k: v.to(model.device) if hasattr(v, "to") else v for k, v in f.items()})
            with autocast:
                loss = loss_fn(features, torch.empty(0))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            seen.append(float(loss.detach()))
            if len(seen) % 5 == 0:
                log.info("train: epoch %d, step %d/%d, loss %.4f", epoch + 1, len(seen), steps_per_epoch, seen[-1])
        losses.append(round(float(np.mean(seen)), 4) if seen else float("nan"))
        log.info("train: epoch %d/%d, mean loss %.4f (%s on %s)", epoch + 1, cfg.epochs, losses[-1], precision, device)
    model.eval()
    return losses, precision
