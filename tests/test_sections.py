"""Section pairs for train-retriever (rag_spark.retrieve.sections): headings over their own text, from HTML
(DocBook's nested divs, Sphinx's <section>) and Markdown."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from rag_spark.cli import main as cli_main
from rag_spark.data.section_qa import prepare_section_dataset
from rag_spark.retrieve.sections import clean_heading, read_sections, shingles

LONG = "Ce paragraphe explique en détail la configuration du système et les fichiers concernés. "

DOCBOOK = f"""<?xml version="1.0" encoding="UTF-8"?>
<html><head><title>Chapitre 5. Réseau</title><style>h2 {{ color: red }}</style></head><body>
<div class="navheader"><h3>Navigation</h3></div>
<div class="chapter"><h2 class="title">Chapitre 5. Configuration du réseau</h2>
<p>Ce chapitre décrit la configuration du réseau sous Debian, pas à pas, avec les outils habituels.</p>
<div class="section"><h3 class="title">5.1. Les interfaces réseau</h3>
<div class="para">Le fichier <code>/etc/network/interfaces</code> décrit les interfaces. {LONG}</div>
<ul><li><p>auto eth0</p></li><li><p>iface eth0 inet dhcp</p></li></ul>
<div class="section"><h4 class="title">5.1.1. Adresse statique</h4><p>{LONG}Une adresse fixe se déclare avec
<em>address</em> et <em>netmask</em>.</p></div>
</div></div>
<div class="navfooter"><h3>Navigation</h3></div>
<script>var h = "<h2>pas un titre</h2>";</script>
</body></html>"""

SPHINX = f"""<!DOCTYPE html><html lang="fr"><head><meta charset="utf-8"></head><body>
<section id="paquets"><h1>5. Gestion des paquets<a class="headerlink" href="#paquets">¶</a></h1>
<p>Ce chapitre contient des informations relatives à la création et à la maintenance des paquets Debian.</p>
<section id="nouveaux"><h2>5.1. Nouveaux paquets<a class="headerlink" href="#nouveaux">¶</a></h2>
<p>{LONG}Envoyez un rapport ITP contre le pseudo-paquet wnpp avant de commencer.</p></section>
<section id="intro-a"><h2>Introduction</h2><p>{LONG}Première introduction, sur les envois.</p></section>
<section id="intro-b"><h2>Introduction</h2><p>{LONG}Seconde introduction, sur les traductions.</p></section>
<section id="court"><h2>Trop court</h2><p>Rien.</p></section>
</section></body></html>"""

MARKDOWN = f"""# Guide de mise à jour

Intro du guide, assez longue pour compter comme une section : {LONG}

## Mettre à jour vers la version stable

{LONG}Utilisez apt full-upgrade après avoir changé sources.list.

```sh
# ceci est un commentaire, pas un titre
apt update
```

## Revenir en arrière ##

{LONG}Il est difficile de revenir à une version précédente.
"""


@pytest.fixture()
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "ref").mkdir(parents=True)
    (root / "ref" / "network.fr.html").write_text(DOCBOOK, encoding="utf-8")
    (root / "ref" / "single-page.fr.html").write_text(DOCBOOK, encoding="utf-8")  # the same sections again
    (root / "pkgs.html").write_bytes(SPHINX.encode("utf-8"))
    (root / "upgrade.md").write_text(MARKDOWN, encoding="utf-8")
    (root / "empty.html").write_bytes(b"")
    # No declared encoding: UTF-8 bytes, and Latin-1 bytes (decoded as the ingest stage does).
    (root / "utf8.html").write_bytes(f"<h2>Tâches planifiées</h2><p>{LONG}crontab -e</p>".encode())
    (root / "latin1.htm").write_bytes(f"<h2>Écran de connexion</h2><p>{LONG}gdm3, sddm</p>".encode("latin-1"))
    (root / "notes.txt").write_text("# pas lu\n" + LONG)
    return root


def test_sections_from_html_and_markdown(docs: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        found = read_sections(docs)
    by_heading = {s.heading: s for s in found}
    assert sorted(by_heading) == [
        "Adresse statique",
        "Configuration du réseau",
        "Gestion des paquets",
        "Guide de mise à jour",
        "Les interfaces réseau",
        "Mettre à jour vers la version stable",
        "Nouveaux paquets",
        "Revenir en arrière",
        "Tâches planifiées",
        "Écran de connexion",
    ]
    # A section holds its own text, not its subsections'; lists and inline markup are kept, scripts are not.
    net = by_heading["Les interfaces réseau"]
    assert "/etc/network/interfaces" in net.text and "iface eth0 inet dhcp" in net.text
    assert "address" not in net.text and "pas un titre" not in by_heading["Adresse statique"].text
    assert by_heading["Configuration du réseau"].text.startswith("Ce chapitre décrit la configuration du réseau")
    # The verbatim copy counts once; "Introduction" heads two different texts (ambiguous), "Trop court" is short.
    assert len(found) == len(by_heading)
    assert by_heading["Les interfaces réseau"].source == "ref/network.fr.html"
    # Markdown: a `#` inside a fenced block is not a heading; closing #'s are dropped.
    assert "apt update" in by_heading["Mettre à jour vers la version stable"].text
    assert by_heading["Guide de mise à jour"].text.startswith("Intro du guide")
    assert {s.root for s in found} == {str(docs.resolve())}
    assert len({s.section_id for s in found}) == len(found)
    assert "gdm3" in by_heading["Écran de connexion"].text
    assert "empty.html" in caplog.text  # an unparseable file is named and skipped, the others are read
    assert read_sections(docs) == found  # deterministic


def test_clean_heading() -> None:
    assert clean_heading("5.1.1. Adresse statique") == "Adresse statique"
    assert clean_heading("Chapitre 3. Le système") == "Le système"
    assert clean_heading("B.2.2. Le répertoire personnel") == "Le répertoire personnel"
    assert clean_heading("cme¶") == "cme"
    assert clean_heading("  Vcs-*  ") == "Vcs-*"
    assert clean_heading("Debian") == "Debian"


def test_bad_section_folders(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"train.section_docs: .*absent is not a folder"):
        read_sections(tmp_path / "absent")
    (tmp_path / "only.txt").write_text("texte")
    with pytest.raises(ValueError, match=r"no HTML or Markdown file under"):
        read_sections(tmp_path)


def test_shingles_find_shared_text() -> None:
    a = "Debian GNU/Linux est une distribution spécifique du système d'exploitation Linux disposant de nombreux paquets"
    assert shingles(a) & shingles("Préambule. " + a.upper() + " Fin.")
    assert not shingles(a) & shingles(
        "Debian GNU/Linux est une distribution libre, complète et maintenue par des bénévoles"
    )


def test_debian_docs_folder(tmp_path: Path) -> None:
    """The demo's section docs: four Debian packages' French pages (apt-get download + dpkg -x, cached in .cache),
    written once; read_sections finds their headings."""
    from rag_spark.data.debian_docs import PACKAGES, prepare_debian_docs

    cache = Path(__file__).resolve().parent.parent / ".cache"
    out = tmp_path / "debian-docs-fr"
    info = prepare_debian_docs(out, cache)
    assert sorted(info["versions"]) == sorted(PACKAGES) and all(info["versions"].values())
    assert {p.name for p in out.iterdir()} == {*PACKAGES, "COPYRIGHT.txt", "docs.json"}
    assert info["counts"]["pages"] == len(info["files"]) - 1 > 100
    assert "debian-handbook/sect.apt-get.html" in info["files"]
    assert not any(name.startswith("debian-handbook/") and "en-US" in name for name in info["files"])
    stamp = (out / "docs.json").stat().st_mtime_ns
    assert prepare_debian_docs(out, cache) == info and (out / "docs.json").stat().st_mtime_ns == stamp  # kept
    found = read_sections(out)
    assert len(found) > 1000
    assert {"debian-reference-fr", "debian-handbook", "maint-guide-fr", "developers-reference-fr"} == {
        s.source.split("/")[0] for s in found
    }
    assert any(s.heading == "Configurer le clavier" for s in found)


def test_usable_sections_guard_the_heldout_split(tmp_path: Path) -> None:
    """Sections copying a held-out answer or headed by a held-out question are not trained on; the sample is
    seeded; too few sections for the hard negatives is a clear error."""
    import pandas as pd

    from rag_spark.config import TrainConfig
    from rag_spark.retrieve.train import _usable_sections

    answer = "Debian GNU/Linux est une distribution spécifique du système d'exploitation Linux disposant de paquets"
    (tmp_path / "doc.md").write_text(
        f"# Configurer le clavier\n\n{LONG}\n\n# Planifier des tâches\n\n{LONG} crontab\n\n"
        f"# Une copie\n\nAvant. {answer} Après, {LONG}\n\n# Qu'est-ce que Debian ?\n\n{LONG} autre texte\n"
    )
    heldout_chunks = pd.DataFrame({"text": [answer]})
    cfg = TrainConfig(section_docs=str(tmp_path))
    kept = _usable_sections(cfg, heldout_chunks, {"Qu'est-ce que Debian ?"})
    assert [s.heading for s in kept] == ["Configurer le clavier", "Planifier des tâches"]
    unguarded = _usable_sections(cfg.model_copy(update={"exclude_heldout_docs": False}), heldout_chunks, set())
    assert len(unguarded) == 4
    sample = _usable_sections(
        cfg.model_copy(update={"section_pairs": 2, "exclude_heldout_docs": False}), heldout_chunks, set()
    )
    assert len(sample) == 2 and sample == _usable_sections(
        cfg.model_copy(update={"section_pairs": 2, "exclude_heldout_docs": False}), heldout_chunks, set()
    )
    with pytest.raises(ValueError, match=r"train.section_docs: 2 usable sections .*hard_negatives=2"):
        _usable_sections(cfg.model_copy(update={"hard_negatives": 2}), heldout_chunks, {"Qu'est-ce que Debian ?"})


def test_section_negatives_are_other_sections_the_model_ranks_high() -> None:
    from sentence_transformers import SentenceTransformer

    from rag_spark.config import PACKAGED_MINILM, TrainConfig
    from rag_spark.embed.models import resolve_encoder
    from rag_spark.retrieve.sections import Section
    from rag_spark.retrieve.train import _section_negatives

    texts = {
        "Install a package": "Use apt install NAME to install a package and its dependencies from the archive.",
        "Remove a package": "Use apt remove NAME to remove a package; apt purge also deletes its configuration.",
        "Keyboard layout": "Run dpkg-reconfigure keyboard-configuration to choose the console keyboard layout.",
        "Printer setup": "CUPS manages printers; its web interface listens on port 631 of the local machine.",
    }
    sections = [Section(f"s{i}", "/docs", "a.md", h, t) for i, (h, t) in enumerate(texts.items())]
    model = SentenceTransformer(resolve_encoder(PACKAGED_MINILM), device="cpu")
    cfg = TrainConfig(hard_negatives=1, negatives_skip=0)
    negs = _section_negatives(model, "", "", sections, cfg)
    assert all(len(n) == 1 and i not in n for i, n in enumerate(negs))
    assert negs[0] == [1]  # installing is closest to removing a package, not to printers
    three = cfg.model_copy(update={"hard_negatives": 3})
    assert _section_negatives(model, "", "", sections, three) == _section_negatives(model, "", "", sections, three)
    assert all(
        sorted(n) == sorted(set(range(4)) - {i})
        for i, n in enumerate(_section_negatives(model, "", "", sections, cfg.model_copy(update={"hard_negatives": 3})))
    )


def test_section_dataset_is_a_beir_folder_of_headings_over_sections(docs: Path, tmp_path: Path) -> None:
    out = tmp_path / "sections"
    (out / "mine.txt").parent.mkdir(parents=True)
    (out / "mine.txt").write_text("not a dataset")
    with pytest.raises(ValueError, match=r"sections exists and is not a folder this command wrote"):
        prepare_section_dataset(docs, out)  # a folder it did not write is never replaced
    assert (out / "mine.txt").read_text() == "not a dataset"
    (out / "mine.txt").unlink()
    prepare_section_dataset(docs, out)
    (out / "stale").mkdir()
    info = prepare_section_dataset(docs, out)  # a folder it wrote is replaced whole
    corpus = [json.loads(line) for line in (out / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    queries = [json.loads(line) for line in (out / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
    qrels = (out / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()
    assert qrels[0] == "query-id\tcorpus-id\tscore" and len(qrels) == len(queries) + 1
    text_of = {d["_id"]: d["text"] for d in corpus}
    heading_of = {q["_id"]: q["text"] for q in queries}
    gold = dict(line.split("\t")[:2] for line in qrels[1:])
    sections = {s.heading: s for s in read_sections(docs)}
    # Each heading is one query whose one relevant document is its own section, whole, without the heading.
    assert sorted(heading_of.values()) == sorted(sections) and len(corpus) == len(sections)
    for qid, heading in heading_of.items():
        assert text_of[gold[qid]] == sections[heading].text and heading not in text_of[gold[qid]]
    assert all(line.endswith("\t1") for line in qrels[1:])
    assert info["counts"] == {"sections": len(sections), "files": 5, "characters": sum(map(len, text_of.values()))}
    assert sorted(p.name for p in out.iterdir()) == ["corpus.jsonl", "dataset.json", "qrels", "queries.jsonl"]
    assert not (tmp_path / "sections.partial").exists()
    assert (
        json.loads((out / "dataset.json").read_text())["sha256"]["corpus.jsonl"]
        == hashlib.sha256((out / "corpus.jsonl").read_bytes()).hexdigest()
    )


def test_section_dataset_cli_names_a_bad_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["data", "sections", "--docs", str(tmp_path / "absent"), "--out", str(tmp_path / "o")]) == 2
    assert "data sections --docs: " in capsys.readouterr().err and not (tmp_path / "o").exists()
