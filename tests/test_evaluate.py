import math

import numpy as np
import pandas as pd
import pytest

from rag_spark.evaluate.answers import (
    citation_correct,
    exact_match,
    groundedness,
    is_abstention,
    normalize_answer,
    rouge_l,
    token_f1,
)
from rag_spark.evaluate.retrieval import at_k_curve, latency_percentiles, per_query_metrics
from rag_spark.evaluate.run import effective_qrels, metric_rows, score_answers
from rag_spark.evaluate.stats import bootstrap_ci, paired_comparison

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
    assert m.loc["q1", "hit_rate@1"] == 1.0 and m.loc["q2", "hit_rate@1"] == 0.0
    assert m.loc["q2", "hit_rate@3"] == 1.0 and m.loc["q3", "hit_rate@3"] == 0.0
    assert m["mrr@3"].mean() == pytest.approx((1 + 1 / 3 + 0) / 3)


def test_per_query_rows_and_their_interval_do_not_depend_on_read_order() -> None:
    """Tables read back from Delta come in any order; the rows (and so a seeded bootstrap over them) do not."""
    shuffled = per_query_metrics(QRELS.iloc[::-1], RUN.sample(frac=1.0, random_state=1), [1, 3], 3)
    plain = per_query_metrics(QRELS, RUN, [1, 3], 3)
    assert list(shuffled["query_id"]) == ["q1", "q2", "q3"]
    pd.testing.assert_frame_equal(shuffled, plain)
    assert bootstrap_ci(shuffled["mrr@3"].to_numpy(), seed=0) == bootstrap_ci(plain["mrr@3"].to_numpy(), seed=0)


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


def test_metrics_on_a_graded_ranking() -> None:
    # One question, two relevant documents (grades 2 and 1) at ranks 2 and 4 of 5.
    qrels = pd.DataFrame({"query_id": ["q"] * 2, "doc_id": ["a", "b"], "score": [2, 1]})
    run = pd.DataFrame({"query_id": ["q"] * 5, "doc_id": ["x", "a", "y", "b", "z"], "rank": [1, 2, 3, 4, 5]})
    m = per_query_metrics(qrels, run, [1, 5], 5).set_index("query_id").loc["q"]
    assert m["mrr@5"] == pytest.approx(0.5)
    assert m["precision@5"] == pytest.approx(2 / 5) and m["recall@5"] == 1.0 and m["recall@1"] == 0.0
    assert m["hit_rate@1"] == 0.0 and m["hit_rate@5"] == 1.0
    # trec_eval's nDCG uses the grade as gain: (2/log2(3) + 1/log2(5)) / (2/log2(2) + 1/log2(3))
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    assert m["ndcg@5"] == pytest.approx((2 / math.log2(3) + 1 / math.log2(5)) / ideal)


def test_rouge_l_keeps_french_accents() -> None:
    # LCS of "debian est libre" in "debian est système libre": P 3/4, R 1.
    assert rouge_l("Debian est un système libre", "Debian est libre") == pytest.approx(2 * 0.75 / 1.75)
    # rouge-score's own tokenizer would drop "é" and match "r" + "seau" pieces; ours keeps whole words.
    assert rouge_l("réseau", "rseau") == 0.0
    assert rouge_l("", "Debian") == 0.0 and rouge_l("Le réseau.", "réseau") == 1.0


def test_groundedness_and_citations() -> None:
    ctx = ["Le système Debian est libre et gratuit."]
    assert groundedness("Debian est libre [1].", ctx) == 1.0
    assert groundedness("Debian est payant", ctx) == pytest.approx(2 / 3)
    assert math.isnan(groundedness("Je ne sais pas.", ctx))
    assert citation_correct(["d1#0"], ["d1#0", "d2#0"], {"d1#0"}) == 1.0
    assert citation_correct(["d2#0"], ["d1#0", "d2#0"], {"d1#0"}) == 0.0  # retrieved but not gold
    assert citation_correct(["d9#0"], ["d1#0"], {"d9#0"}) == 0.0  # not retrieved
    assert math.isnan(citation_correct([], ["d1#0"], {"d1#0"}))


def test_score_answers_per_question() -> None:
    gold = pd.DataFrame({"query_id": ["q1", "q2"], "answer": ["Debian est libre", "apt update"]})
    answers = pd.DataFrame(
        {
            "query_id": ["q1", "q2", "q3"],
            "answer": ["Debian est libre [1]", "Je ne sais pas.", "Peut-être"],
            "cited_chunk_ids": [["d1#0"], [], []],
            "context_chunk_ids": [["d1#0"], ["d2#0"], []],
        }
    )
    contexts = pd.DataFrame(
        {
            "query_id": ["q1", "q2"],
            "chunk_id": ["d1#0", "d2#0"],
            "doc_id": ["d1", "d2"],
            "text": ["Debian est libre."] * 2,
        }
    )
    s = score_answers(gold, answers, contexts, {"q1": {"d1"}}, {"q1": ["d1#0"]}, "fr").set_index("query_id")
    assert s.loc["q1", "f1"] == 1.0 and s.loc["q1", "citation_correct"] == 1.0 and s.loc["q1", "groundedness"] == 1.0
    assert s.loc["q2", "abstained"] == 1.0 and math.isnan(s.loc["q2", "citation_correct"])
    assert math.isnan(s.loc["q3", "f1"])  # no gold answer: not scored, still answered
    assert s.loc["q3", "groundedness"] == 0.0  # nothing of it is in a (missing) context


def test_bootstrap_interval_is_seeded_contains_the_mean_and_shrinks() -> None:
    rng = np.random.default_rng(3)
    small = rng.binomial(1, 0.4, size=40).astype(float)
    big = rng.binomial(1, 0.4, size=1000).astype(float)
    a = bootstrap_ci(small, samples=1000, seed=1)
    assert a == bootstrap_ci(small, samples=1000, seed=1)  # deterministic
    assert a != bootstrap_ci(small, samples=1000, seed=2)
    assert a[0] <= small.mean() <= a[1]
    b = bootstrap_ci(big, samples=1000, seed=1)
    assert b[0] <= big.mean() <= b[1]
    assert (b[1] - b[0]) < (a[1] - a[0]) / 3  # width ~ 1/sqrt(n): 5x more data here
    # The 95% interval of a Bernoulli(0.4) mean over 1000 draws is about +-0.03.
    assert 0.04 < b[1] - b[0] < 0.08
    assert bootstrap_ci([0.5, np.nan, 0.5]) == (0.5, 0.5)
    assert all(math.isnan(x) for x in bootstrap_ci([]))


def test_paired_comparison() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, size=200)
    better = np.clip(base + 0.1 + rng.normal(0, 0.05, size=200), 0, None)
    c = paired_comparison(better, base, samples=1000, seed=0)
    assert c.n == 200 and c.diff == pytest.approx(float((better - base).mean()))
    assert 0 < c.ci95[0] <= c.diff <= c.ci95[1]
    assert c.p < 0.01 and c.wins > c.losses
    noise = paired_comparison(base + rng.normal(0, 0.05, size=200), base, samples=1000, seed=0)
    assert noise.ci95[0] < 0 < noise.ci95[1] and noise.p > 0.05
    assert paired_comparison(base, base).p == 1.0
    with pytest.raises(ValueError, match="aligned"):
        paired_comparison([1.0], [1.0, 2.0])


def test_metric_rows_split_intervals_and_comparisons() -> None:
    summary = {
        "retrieval": {"mrr@10": 0.5, "mrr@10_ci95": [0.4, 0.6]},
        "answers": {"f1": None},
        "counts": {"queries": 3},
        "timings_s": {},
        "comparisons": {"f1: a - b": {"diff": 0.1, "ci95": [0.0, 0.2], "p": 0.04}},
    }
    rows = {(r[2], r[3]): r[4] for r in metric_rows("run", "h", summary)}
    assert rows[("retrieval", "mrr@10_ci95_low")] == 0.4 and rows[("retrieval", "mrr@10_ci95_high")] == 0.6
    assert rows[("answers", "f1")] is None and rows[("counts", "queries")] == 3.0
    assert rows[("comparisons", "f1: a - b:ci95_high")] == 0.2 and rows[("comparisons", "f1: a - b:p")] == 0.04
