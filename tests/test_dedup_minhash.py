"""Near-duplicate removal on a small planted set through the real Spark job, and the standalone `dedup` command."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from delta.tables import DeltaTable

from rag_spark.clean.dedup_minhash import (
    connected_components,
    dedup_near,
    minhash_signatures,
    normalize_for_dedup,
    shingle_hashes,
)
from rag_spark.config import ConfigError, NearDedupConfig, load_config_dict

# Real text (French Wikipedia lead sections, as in the demo corpus).
BASES = [
    "Julie Andrews est une actrice, chanteuse, conteuse et écrivaine britannique, née le 1er octobre 1935 à "
    "Walton-on-Thames dans le Surrey. Elle est connue pour ses rôles dans Mary Poppins et La Mélodie du bonheur, "
    "deux films musicaux qui ont marqué les années soixante.",
    "Betty Joan Perske, dite Lauren Bacall, est une actrice américaine, née le 16 septembre 1924 à New York, où "
    "elle est morte le 12 août 2014, connue pour sa voix grave et son regard sensuel pour lequel elle est "
    "surnommée The Look.",
    "Amitabh Bachchan, né le 11 octobre 1942 à Allahabad, est un acteur, producteur et animateur de télévision "
    "indien. Il est considéré comme l'un des acteurs les plus influents de l'histoire du cinéma indien et a joué "
    "dans plus de deux cents films.",
    "La tour Eiffel est une tour de fer puddlé de trois cent trente mètres de hauteur située à Paris, à "
    "l'extrémité nord-ouest du parc du Champ-de-Mars en bordure de la Seine dans le septième arrondissement. "
    "Construite par Gustave Eiffel pour l'Exposition universelle de 1889, elle est devenue le symbole de la "
    "capitale française.",
]


def _edit(text: str, rng: random.Random, n_edits: int) -> str:
    words = text.split()
    for _ in range(n_edits):
        i = rng.randrange(len(words))
        op = rng.choice(("delete", "substitute", "insert"))
        if op == "delete":
            del words[i]
        elif op == "substitute":
            words[i] = "remplacé"
        else:
            words.insert(i, "ajouté")
    return " ".join(words)


def planted() -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Rows (id, text) and the expected cluster of each id (its source's id)."""
    rng = random.Random(7)
    rows, truth = [], {}
    for i, base in enumerate(BASES):
        src = f"s{i}"
        rows.append((src, base))
        truth[src] = src
        variants = [
            _edit(base, rng, 1),
            _edit(base, rng, 2).upper(),
            "  ".join(_edit(base, rng, 2).replace("é", "e").replace("è", "e").split(" ")),
        ]
        for j, v in enumerate(variants):
            rows.append((f"v{i}{j}", v))
            truth[f"v{i}{j}"] = src
    # Hard negatives: the first half of a source, the second half of another one.
    for i in range(len(BASES)):
        a, b = BASES[i].split(), BASES[(i + 1) % len(BASES)].split()
        hn = f"h{i}"
        rows.append((hn, " ".join(a[: len(a) // 2] + b[len(b) // 2 :])))
        truth[hn] = hn
    return rows, truth


def test_normalize_for_dedup(spark) -> None:  # type: ignore[no-untyped-def]
    df = spark.createDataFrame([("L'Été  À Paris—déjà!\n Ça",)], "t string")
    assert df.select(normalize_for_dedup(df.t).alias("n")).first().n == "l ete a paris deja ca"


def test_shingles_and_signature_estimate_jaccard() -> None:
    texts = ["le chat est sur le tapis rouge du salon", "le chat est sur le tapis bleu du salon", "", "ab"]
    arr = pa.array(texts, pa.large_string())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[: len(texts) + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[: offsets[-1]]
    doc, h = shingle_hashes(data, offsets, "char", 5)
    sets = [set(h[doc == i].tolist()) for i in range(len(texts))]
    expected = [{t[i : i + 5] for i in range(len(t) - 4)} for t in texts[:2]]
    assert [len(s) for s in sets] == [len(expected[0]), len(expected[1]), 0, 1]  # short text: one shingle
    exact = len(sets[0] & sets[1]) / len(sets[0] | sets[1])
    for method in ("one_permutation", "permutations"):
        sig = minhash_signatures(doc, h, len(texts), 512, 1, method)
        assert abs((sig[0] == sig[1]).mean() - exact) < 0.08, method
        assert (sig[2] == 0xFFFFFFFF).all() and (sig[3] != 0xFFFFFFFF).all()  # no shingle: sentinel; one: filled
    wdoc, _ = shingle_hashes(data, offsets, "word", 2)
    assert np.bincount(wdoc, minlength=4).tolist() == [8, 8, 0, 1]


def test_bbit_signatures_estimate_like_full_ones(spark) -> None:  # type: ignore[no-untyped-def]
    """8-bit values agree by chance 1 time in 256: unrelated signatures estimate ~0 once corrected; related ones
    estimate what the full 32-bit values do; the Spark job ships num_perm bytes a document."""
    from rag_spark.clean.dedup_minhash import _binary_rows, _rows_of_binary, bbit_similarity, low_bits, signatures

    rng = np.random.default_rng(0)
    unrelated = rng.integers(0, 2**32, size=(2, 20_000, 128), dtype=np.uint64).astype(np.uint32)
    raw = (low_bits(unrelated[0], 8) == low_bits(unrelated[1], 8)).mean(axis=1)
    assert abs(raw.mean() - 1 / 256) < 5e-4 and bbit_similarity(np.array([1 / 256, 1.0]), 8).tolist() == [0, 1]
    assert np.quantile(bbit_similarity(raw, 8), 0.999) < 0.03  # far below any threshold
    # Pairs at known similarity: a fraction j of the 128 values shared, the rest independent.
    for j in (0.3, 0.6, 0.9):
        b = unrelated[1].copy()
        b[:, : int(j * 128)] = unrelated[0][:, : int(j * 128)]
        full = (unrelated[0] == b).mean(axis=1)
        eight = bbit_similarity((low_bits(unrelated[0], 8) == low_bits(b, 8)).mean(axis=1), 8)
        assert abs(eight.mean() - full.mean()) < 2e-3 and np.abs(eight - full).max() < 0.05
    for bits in (8, 16, 32):
        values = low_bits(unrelated[0][:5], bits)
        assert np.array_equal(_rows_of_binary(_binary_rows(values), 128, bits), values)
    df = spark.createDataFrame([("a", BASES[0]), ("b", BASES[1])], "doc_id string, text string")
    for bits in (8, 32):
        rows = signatures(df, NearDedupConfig(signature_bits=bits)).collect()
        assert [len(r.sig) for r in rows] == [128 * bits // 8] * 2


def test_connected_components_min_label(spark) -> None:  # type: ignore[no-untyped-def]
    # A chain whose smallest id sits at one end takes several rounds; a separate pair.
    edges = spark.createDataFrame([("e", "d"), ("d", "c"), ("c", "b"), ("b", "a"), ("x", "y")], "a string, b string")
    labels = {r.id: r.label for r in connected_components(edges).collect()}
    assert labels == {"a": "a", "b": "a", "c": "a", "d": "a", "e": "a", "x": "x", "y": "x"}


@pytest.mark.parametrize("local_max", [200_000, 0], ids=["driver", "spark"])
def test_near_dedup_clusters_planted_set(spark, local_max: int) -> None:  # type: ignore[no-untyped-def]
    rows, truth = planted()
    df = spark.createDataFrame(rows, "doc_id string, text string")
    kept, dups = dedup_near(df, NearDedupConfig(local_max_documents=local_max), "r1")
    got = {r.doc_id: (r.duplicate_of, r.similarity, r.method) for r in dups.collect()}
    expected = {doc: src for doc, src in truth.items() if doc != src}
    assert {d: v[0] for d, v in got.items()} == expected  # every planted copy, no hard negative
    assert all(v[2] == "near" and 0.5 <= v[1] <= 1.0 for v in got.values())
    assert sorted(r.doc_id for r in kept.collect()) == sorted(set(truth.values()))


def test_near_dedup_config_validation() -> None:
    with pytest.raises(ConfigError, match="num_perm"):
        load_config_dict({"clean": {"near_dedup": {"num_perm": 100, "bands": 32}}})
    with pytest.raises(ConfigError, match=r"clean\.near_dedup\.shingle"):
        load_config_dict({"clean": {"near_dedup": {"shingle": "sentence"}}})


def _write_jsonl(path: Path) -> dict[str, str]:
    rows, truth = planted()
    lines = [json.dumps({"id": i, "text": t}, ensure_ascii=False) for i, t in rows]
    lines.append(json.dumps({"id": "x1", "text": BASES[0]}, ensure_ascii=False))  # exact copy of s0
    truth["x1"] = "s0"
    lines += ['{"id": "broken", "text": ', json.dumps({"text": "no id here"}), json.dumps({"id": "no-text"}), ""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return truth


def test_dedup_cli_standalone(spark, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from rag_spark import cli
    from rag_spark.dedup import dedup_jsonl

    src = tmp_path / "docs.jsonl"
    truth = _write_jsonl(src)
    out = tmp_path / "out"
    # The CLI path (it reuses the session the fixture started: getOrCreate).
    assert cli.main(["dedup", "--input", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "quarantined       3" in printed and "malformed JSON line" in printed

    with (out / "clusters.tsv").open(encoding="utf-8") as fh:
        clusters = {r["id"]: r["representative_id"] for r in csv.DictReader(fh, delimiter="\t")}
    assert clusters == truth  # every accepted row; singletons and representatives map to themselves
    dups = spark.read.format("delta").load(str(out / "duplicates"))
    assert {r.doc_id: r.method for r in dups.collect()}["x1"] == "exact"
    reasons = {r.reason for r in spark.read.format("delta").load(str(out / "quarantine")).collect()}
    assert reasons == {"malformed JSON line", "missing id field 'id'", "missing or empty text field 'text'"}

    # Rerun: same rows, no row inserted or deleted anywhere.
    before = {t: spark.read.format("delta").load(str(out / t)).count() for t in ("silver", "duplicates", "quarantine")}
    s = dedup_jsonl(spark, str(src), str(out), NearDedupConfig())
    assert (s.kept, s.exact_duplicates, s.near_duplicates, s.quarantined) == (8, 1, 12, 3)
    assert s.lines == s.kept + s.exact_duplicates + s.near_duplicates + s.quarantined
    for table, n in before.items():
        assert spark.read.format("delta").load(str(out / table)).count() == n
        metrics = DeltaTable.forPath(spark, str(out / table)).history(1).first().operationMetrics
        assert int(metrics.get("numTargetRowsInserted", 0)) == 0
        assert int(metrics.get("numTargetRowsDeleted", 0)) == 0


def test_dedup_missing_input(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from rag_spark.dedup import dedup_jsonl

    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        dedup_jsonl(spark, str(tmp_path / "nope.jsonl"), str(tmp_path / "out"), NearDedupConfig())


def test_candidate_pairs_all_pairs_or_star(spark) -> None:  # type: ignore[no-untyped-def]
    from rag_spark.clean.dedup_minhash import candidate_pairs, signatures

    df = spark.createDataFrame([(i, BASES[0]) for i in "dcba"] + [("e", BASES[1])], "doc_id string, text string")
    sigs = signatures(df, NearDedupConfig())
    pairs = {(r.a, r.b) for r in candidate_pairs(sigs, NearDedupConfig()).collect()}
    assert pairs == {("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d")}
    star = {(r.a, r.b) for r in candidate_pairs(sigs, NearDedupConfig(max_bucket_size=3)).collect()}
    assert star == {("a", "b"), ("a", "c"), ("a", "d")}


def test_driver_and_spark_steps_give_the_same_duplicates(spark) -> None:  # type: ignore[no-untyped-def]
    """The numpy steps on the driver (small inputs) and the Spark steps: the same rows, similarities included, with
    a bucket over max_bucket_size (star pairs), documents without shingles, ids in non-ASCII order, a low threshold
    that links chains of pairs."""
    from rag_spark.clean.dedup_minhash import near_duplicates

    rows, _ = planted()
    rows += [("z-empty", ""), ("z-short", "ab"), ("é1", BASES[3]), ("Z2", BASES[3].upper())]
    rows += [(f"w{i}", _edit(BASES[0], random.Random(i), 1)) for i in range(6)]
    df = spark.createDataFrame(rows, "doc_id string, text string")
    for cfg in (NearDedupConfig(max_bucket_size=3), NearDedupConfig(threshold=0.3)):
        driver, on_spark = (
            sorted((r.doc_id, r.duplicate_of, round(r.similarity, 12)) for r in near_duplicates(df, c).collect())
            for c in (
                cfg.model_copy(update={"local_max_documents": 1000}),
                cfg.model_copy(update={"local_max_documents": 0}),
            )
        )
        assert driver == on_spark and len(driver) >= 20
