import math

import numpy as np
import pandas as pd
import pytest

from rag_spark.evaluate.answers import exact_match, is_abstention, normalize_answer, token_f1
from rag_spark.evaluate.retrieval import at_k_curve, latency_percentiles, per_query_metrics
from rag_spark.evaluate.run import effective_qrels

QRELS = pd.DataFrame({"query_id": ["q1", "q2", "q3"], "doc_id": ["d1", "d5", "d9"], "score": [1, 1, 1]})
RUN = pd.DataFrame(
    {
        "query_id": ["q1", "q1", "q1", "q2", "q2", "q2"],
        "doc_id": ["d1", "d2", "d3", "d4", "d6", "d5"],
        "rank": [1, 2, 3, 1, 2, 3],
    }
)


def test_per_query_metrics_by_hand() -> None:
    m = per_query_metrics(QRELS, RUN, [1, 3], 3).set_index("query_id")
    assert m.loc["q1", "mrr@3"] == 1.0
    assert m.loc["q2", "mrr@3"] == pytest.approx(1 / 3)
    assert m.loc["q3", "mrr@3"] == 0.0  # nothing retrieved still counts, as 0
    assert m.loc["q1", "recall@1"] == 1.0 and m.loc["q2", "recall@1"] == 0.0
    assert m.loc["q2", "recall@3"] == 1.0
    assert m.loc["q1", "precision@3"] == pytest.approx(1 / 3)
    assert m.loc["q2", "ndcg@3"] == pytest.approx(1 / math.log2(4))
    assert m["mrr@3"].mean() == pytest.approx((1 + 1 / 3 + 0) / 3)


def test_curve_is_monotone_in_recall() -> None:
    c = at_k_curve(QRELS, RUN, 3)
    assert list(c["k"]) == [1, 2, 3]
    assert list(c["recall"]) == pytest.approx([1 / 3, 1 / 3, 2 / 3])
    assert c["recall"].is_monotonic_increasing


def test_duplicates_carry_judgments() -> None:
    dups = pd.DataFrame({"doc_id": ["d5"], "duplicate_of": ["d4"]})
    q = effective_qrels(QRELS, dups)
    assert set(q[q.query_id == "q2"].doc_id) == {"d4", "d5"}


def test_answer_metrics() -> None:
    assert normalize_answer("L'Histoire de la « Debian » !") == "histoire debian"
    assert exact_match("Le projet Debian.", "projet debian") == 1.0
    assert token_f1("Debian est libre", "Debian est un système libre") == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert token_f1("rien", "Debian") == 0.0
    assert is_abstention("Je ne sais pas.") and not is_abstention("Je sais : Debian.")
    assert is_abstention("I don't know", "en")


def test_latency_percentiles() -> None:
    p = latency_percentiles(np.arange(1, 101, dtype=float))
    assert p["latency_ms_p50"] == pytest.approx(50.5)
    assert math.isnan(latency_percentiles(np.array([]))["latency_ms_p95"])
