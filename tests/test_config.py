from pathlib import Path

import pytest

from rag_spark.config import ConfigError, PipelineConfig, load_config, load_config_dict


def test_defaults_are_valid_and_hash_is_stable() -> None:
    a, b = PipelineConfig(), PipelineConfig()
    assert a.config_hash == b.config_hash
    assert len(a.config_hash) == 16


def test_unknown_field_is_named(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("embed:\n  modle: x\n")
    with pytest.raises(ConfigError, match=r"embed\.modle: unknown field"):
        load_config(p)


def test_bad_literal_lists_allowed_values() -> None:
    with pytest.raises(ConfigError) as err:
        load_config_dict({"index": {"metric": "cosine"}})
    assert "index.metric" in str(err.value)
    assert "'ip'" in str(err.value) and "'l2'" in str(err.value)


def test_overlap_must_be_below_size() -> None:
    with pytest.raises(ConfigError, match="overlap_tokens"):
        load_config_dict({"chunk": {"size_tokens": 64, "overlap_tokens": 64}})


def test_missing_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_stage_hash_follows_upstream_only() -> None:
    base = PipelineConfig()
    other_chunk = load_config_dict({"chunk": {"size_tokens": 128}})
    other_gen = load_config_dict({"generate": {"max_tokens": 10}})
    assert base.stage_hash("clean") == other_chunk.stage_hash("clean")
    assert base.stage_hash("embed") != other_chunk.stage_hash("embed")
    assert base.stage_hash("retrieve") == other_gen.stage_hash("retrieve")
    assert base.stage_hash("generate") != other_gen.stage_hash("generate")


def test_cache_locations_do_not_change_hashes(tmp_path: Path) -> None:
    a = load_config_dict({"generate": {"models_dir": str(tmp_path / "m1")}})
    b = load_config_dict({"generate": {"models_dir": str(tmp_path / "m2")}, "out": "elsewhere"})
    assert a.config_hash == b.config_hash
    assert a.stage_hash("generate") == b.stage_hash("generate")


def test_resolved_paths_are_absolute() -> None:
    cfg = load_config_dict({"dataset": "data/x", "out": "reports/y"}).resolved()
    assert Path(cfg.dataset).is_absolute() and Path(cfg.out).is_absolute()
    assert Path(cfg.lake_root).is_absolute()


def test_baseline_hash_depends_on_questions_and_generator_only() -> None:
    a = PipelineConfig()
    b = a.with_dotted({"retrieve.k": 5, "chunk.size_tokens": 128, "index.factory": "HNSW32"})
    assert a.baseline_hash == b.baseline_hash  # one set of baseline answers serves every retrieval variant
    assert a.baseline_hash != a.with_dotted({"generate.max_tokens": 32}).baseline_hash
    assert a.baseline_hash not in {a.stage_hash("generate"), a.baseline().stage_hash("generate")}
    assert a.baseline().generate.no_retrieval and not a.generate.no_retrieval
    # A field added later keeps old hashes while at its default, and changes them when set.
    from rag_spark.config import _section_payload

    assert "no_retrieval" not in _section_payload("generate", a.generate)
    assert _section_payload("generate", a.baseline().generate)["no_retrieval"] is True
    assert a.stage_hash("generate") != a.baseline().stage_hash("generate")


def test_dotted_overrides_are_validated() -> None:
    cfg = PipelineConfig().with_dotted({"retrieve.k": 3, "evaluate.bootstrap_samples": 200})
    assert cfg.retrieve.k == 3 and cfg.evaluate.bootstrap_samples == 200
    with pytest.raises(ConfigError, match=r"retrieve\.kk: unknown field"):
        PipelineConfig().with_dotted({"retrieve.kk": 3})
    with pytest.raises(ConfigError, match=r"nope\.k: unknown field 'nope'"):
        PipelineConfig().with_dotted({"nope.k": 3})
    with pytest.raises(ConfigError, match=r"evaluate\.bootstrap_samples"):
        PipelineConfig().with_dotted({"evaluate.bootstrap_samples": 5})


def test_cli_sweep_and_report_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rag_spark.cli import build_parser, main

    args = build_parser().parse_args(["report", "--run", "20261126T000000Z-abc123-0000", "--lake", "x"])
    assert args.run == "20261126T000000Z-abc123-0000" and args.lake == "x"
    bad = tmp_path / "sweep.yaml"
    bad.write_text("grid:\n  retrieve.k: []\n")
    assert main(["sweep", "--config", str(bad)]) == 2
    assert "grid keys need at least one value" in capsys.readouterr().err
    bad.write_text("grid:\n  generate.modle: [x]\n")
    assert main(["sweep", "--config", str(bad)]) == 2
    assert "generate.modle: unknown field" in capsys.readouterr().err
    assert main(["sweep", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_shipped_configs_are_valid_and_sections_fr_is_best_without_a_generator() -> None:
    configs = Path(__file__).resolve().parents[1] / "configs"
    loaded = {p.stem: load_config(p) for p in sorted(configs.glob("*.yaml")) if not p.stem.startswith("sweep-")}
    assert {"best", "demo", "tiny", "sections-fr"} <= set(loaded)
    best, sections = loaded["best"].model_dump(), loaded["sections-fr"].model_dump()
    assert sections["generate"].pop("backend") == "none"
    best["generate"].pop("backend")
    assert {k for k in best if best[k] != sections[k]} == {"dataset", "out"}
