"""A retrieval test set from any documentation folder, without labels: each heading is a query, the section it heads
the one relevant document.

Documentation is written as headings over the text that answers them, so a folder of HTML or Markdown pages is an
evaluation set for the pages' own search: `rag-spark data sections --docs DIR --out PATH`, then
`rag-spark run --config configs/best.yaml --dataset PATH --out DIR` (with `generate.backend: none`: there are no
reference answers) or `benchmarks/retrieval.py`. Sections are `rag_spark.retrieve.sections.read_sections`' (the
train-retriever's section pairs, same rules: numbering cleaned off headings, a section repeated verbatim counted once,
a heading over two different texts dropped as ambiguous, sections under `min_chars` dropped), here with their whole
text. The heading is not in its document, so a query has to be matched by what the section says, as a user's question
would be; headings are topics ("Configurer le clavier") rather than questions, which makes this a test of short
keyword queries, where the demo's FAQ tests full questions.

Layout (BEIR-style, what `dataset` reads)::

    <out>/corpus.jsonl     {"_id": "section:<hash>", "title": "", "text": <the section's text>}
    <out>/queries.jsonl    {"_id": "q/section:<hash>", "text": <its heading>}
    <out>/qrels/test.tsv   query-id, corpus-id, score (1)
    <out>/dataset.json     the folder read, counts, and the sha256 of every file above

Written next to its final place and renamed, so a crash leaves the previous folder or none. An existing `--out` is
replaced only when this command wrote it (its `dataset.json`); any other non-empty folder is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from rag_spark.retrieve.sections import read_sections

logger = logging.getLogger(__name__)


FORMAT = "BEIR-style corpus/queries/qrels: headings as queries over their sections (no answers)"


def _format(folder: Path) -> str | None:
    """The `format` of the `dataset.json` in `folder`, or None."""
    try:
        return json.loads((folder / "dataset.json").read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def query_id(section_id: str) -> str:
    return f"q/{section_id}"


def prepare_section_dataset(docs_dir: str | Path, out_dir: str | Path, min_chars: int = 80) -> dict[str, Any]:
    """Writes the folder described in the module docstring; returns its `dataset.json` content.

    Raises:
        ValueError: `docs_dir` is not a folder, holds no HTML / Markdown file, or no section with a distinct heading;
            `out_dir` is a non-empty folder this function did not write.
    """
    sections = read_sections(docs_dir, min_chars=min_chars, max_chars=10**9, what="data sections --docs")
    if not sections:
        raise ValueError(
            f"data sections --docs: no section with a distinct heading and >= {min_chars} characters in {docs_dir}"
        )
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and _format(out) != FORMAT:
        raise ValueError(f"data sections --out: {out} exists and is not a folder this command wrote; choose another")
    files = {
        "corpus.jsonl": "".join(
            json.dumps({"_id": s.section_id, "title": "", "text": s.text}, ensure_ascii=False) + "\n" for s in sections
        ),
        "queries.jsonl": "".join(
            json.dumps({"_id": query_id(s.section_id), "text": s.heading}, ensure_ascii=False) + "\n" for s in sections
        ),
        "qrels/test.tsv": "query-id\tcorpus-id\tscore\n"
        + "".join(f"{query_id(s.section_id)}\t{s.section_id}\t1\n" for s in sections),
    }
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for rel, text in files.items():
        path = staging / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    info = {
        "format": FORMAT,
        "source": str(Path(docs_dir).resolve()),
        "counts": {
            "sections": len(sections),
            "files": len({s.source for s in sections}),
            "characters": sum(len(s.text) for s in sections),
        },
        "sha256": {rel: hashlib.sha256(text.encode("utf-8")).hexdigest() for rel, text in files.items()},
    }
    (staging / "dataset.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    logger.info("data sections: %d queries over their sections from %s -> %s", len(sections), docs_dir, out)
    return info
