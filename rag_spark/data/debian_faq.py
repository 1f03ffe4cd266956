"""The Debian FAQ (Debian packages ``debian-faq-fr``, French, and ``debian-faq``, English): fetch it offline and
split it into sections.

The FAQ ships as DocBook-generated XHTML, one file per chapter (``basic-defs.fr.html``, ...). Every section
(``h2``/``h3``/``h4`` heading carrying an ``<a id=...>`` anchor) becomes a :class:`FaqSection`; headings that are
questions give the demo's queries and their sections the relevant documents.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from bs4 import BeautifulSoup, XMLParsedAsHTMLWarning
from bs4.element import NavigableString, PageElement, Tag

from rag_spark.clean.text import BLOCK_TAGS

logger = logging.getLogger(__name__)

SHORT_ANSWER_MAX_CHARS = 400
SHORT_ANSWER_MIN_CHARS = 80

_SECTION_HEADINGS = ("h2", "h3", "h4")
_HEADING_NUMBER = re.compile(r"^\d+(?:\.\d+)*\.?\s*")
_COMPLETE_ENDINGS = (".", "!", "?", "…", ")", "»", '"')
_SENTENCE_END = re.compile(r"[.!?…](?=\s|$)")


@dataclass(frozen=True)
class FaqEdition:
    """One language's edition of the FAQ: the Debian package that ships it and how its files are named.

    Attributes:
        language: ISO 639-1 code, also the files' infix (``basic-defs.fr.html``).
        name: The language's English name ("French"), for notices.
        package: The Debian package.
        subdir: Where the HTML files lie in the package's file tree (and, installed, under ``/``).
        chapter_word: The word before a chapter's number in its ``h1`` ("Chapitre 1. ...").
    """

    language: str
    name: str
    package: str
    subdir: Path
    chapter_word: str

    @property
    def pattern(self) -> str:
        return f"*.{self.language}.html"

    @property
    def system_dir(self) -> Path:
        return Path("/") / self.subdir

    def chapter_prefix(self) -> re.Pattern[str]:
        return re.compile(rf"^{self.chapter_word}\s+(\d+)\.\s*")


EDITIONS = {
    "fr": FaqEdition("fr", "French", "debian-faq-fr", Path("usr/share/doc/debian/FAQ/fr"), "Chapitre"),
    "en": FaqEdition("en", "English", "debian-faq", Path("usr/share/doc/debian/FAQ"), "Chapter"),
}
FRENCH = EDITIONS["fr"]
PACKAGE = FRENCH.package


@dataclass(frozen=True)
class FaqSection:
    """One section of the FAQ.

    Attributes:
        anchor: The section's ``id`` (unique across the FAQ), e.g. ``"whatisdebian"``.
        chapter: Chapter title without its "Chapitre N." prefix.
        heading: Heading text without its number ("1.2."), whitespace-normalized.
        is_question: Whether the heading is a question (see :func:`is_question`).
        body_html: The section's own content: no heading, no nested subsections.
        body_text: Text of ``body_html``, whitespace-normalized.
        short_answer: First non-empty paragraph of the body, followed by the next blocks while it is shorter
            than 80 characters or does not end a sentence ("... :"), cut at a sentence end within 400 characters.
    """

    anchor: str
    chapter: str
    heading: str
    is_question: bool
    body_html: str
    body_text: str
    short_answer: str


def _faq_html_files(faq_dir: Path, edition: FaqEdition = FRENCH) -> list[Path]:
    return sorted(faq_dir.glob(edition.pattern))


def run_command(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    logger.info("running %s", " ".join(cmd))
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:  # apt-get / dpkg missing: not a Debian-like system.
        raise RuntimeError(f"`{' '.join(cmd)}` could not run: {exc}") from exc


def check_command(proc: subprocess.CompletedProcess[str], cmd: list[str]) -> None:
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}: {proc.stderr.strip()}")


def download_deb(cache_dir: Path, package: str = PACKAGE) -> Path:
    """The ``.deb`` of `package` in `cache_dir` (``apt-get download``ed there when missing; the package lists are
    refreshed once when the download fails)."""
    debs = sorted(cache_dir.glob(f"{package}_*.deb"))
    if debs:
        return debs[-1]
    cmd = ["apt-get", "download", package]
    proc = run_command(cmd, cwd=cache_dir)
    if proc.returncode != 0:
        # A fresh container often has empty package lists; refresh them once.
        logger.warning("apt-get download failed (%s); running apt-get update once", proc.stderr.strip())
        update = ["apt-get", "update", "-qq"]
        check_command(run_command(update), update)
        proc = run_command(cmd, cwd=cache_dir)
        check_command(proc, cmd)
    debs = sorted(cache_dir.glob(f"{package}_*.deb"))
    if not debs:
        raise RuntimeError(f"`{' '.join(cmd)}` succeeded but no {package}_*.deb appeared in {cache_dir}")
    return debs[-1]


def ensure_faq_dir(cache_dir: Path, edition: FaqEdition = FRENCH) -> Path:
    """Return the folder holding the edition's Debian FAQ HTML files (``*.fr.html`` for French).

    Uses the installed copy (``/usr/share/doc/debian/FAQ/fr`` for French) when it holds the HTML files (Docker
    images often exclude ``/usr/share/doc`` from packages), otherwise downloads the edition's package with
    ``apt-get download`` into ``cache_dir`` and extracts it with ``dpkg -x`` into ``cache_dir/root`` (French) or
    ``cache_dir/root-<language>``. A previous extraction is reused.

    Args:
        cache_dir: Folder for the downloaded ``.deb`` and its extracted tree; created if missing.
        edition: Which language's FAQ (:data:`EDITIONS`).

    Returns:
        The FAQ folder, e.g. ``cache_dir/root/usr/share/doc/debian/FAQ/fr``.

    Raises:
        RuntimeError: When ``apt-get`` or ``dpkg`` fails (the message names the command and its stderr) or the
            package does not contain the FAQ.
    """
    if _faq_html_files(edition.system_dir, edition):
        logger.info("using the installed Debian FAQ at %s", edition.system_dir)
        return edition.system_dir
    cache_dir = Path(cache_dir).resolve()
    root = cache_dir / ("root" if edition.language == "fr" else f"root-{edition.language}")
    faq_dir = root / edition.subdir
    if _faq_html_files(faq_dir, edition):
        logger.info("reusing the extracted Debian FAQ at %s", faq_dir)
        return faq_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    extract_deb(download_deb(cache_dir, edition.package), root, edition.subdir, edition.pattern)
    return faq_dir


def extract_deb(deb: Path, root: Path, inner: str | Path, pattern: str) -> None:
    """``dpkg -x`` of `deb` into `root`, which must then hold `inner`/`pattern` files. Extracted next to `root` and
    renamed, so an interrupted run never looks like a complete one.

    Raises:
        RuntimeError: ``dpkg`` failed, or the package holds no such file (`root` is then left as it was).
    """
    staging = root.with_name(root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = ["dpkg", "-x", str(deb), str(staging)]
    check_command(run_command(cmd), cmd)
    if not any((staging / inner).glob(pattern)):
        raise RuntimeError(f"{deb.name} holds no {inner}/{pattern}")
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)
    logger.info("extracted %s to %s", deb.name, root)


def faq_package_version(faq_dir: Path, edition: FaqEdition = FRENCH) -> str | None:
    """Return the version of the edition's package that provided ``faq_dir``, if it can be found.

    Args:
        faq_dir: A folder returned by :func:`ensure_faq_dir`.
        edition: The edition it was returned for.

    Returns:
        The Debian version string (e.g. ``"11.1"``), or None when neither the ``.deb`` nor dpkg's database
        knows it.
    """
    faq_dir = Path(faq_dir)
    if faq_dir == edition.system_dir:
        return _command_output(["dpkg-query", "-W", "-f=${Version}", edition.package])
    # faq_dir is <cache_dir>/<root>/<edition.subdir>; the .deb sits in <cache_dir>.
    depth = len(edition.subdir.parts)
    debs = sorted(faq_dir.parents[depth].glob(f"{edition.package}_*.deb")) if len(faq_dir.parents) > depth else []
    return deb_version(debs[-1]) if debs else None


def deb_version(deb: Path) -> str | None:
    """The ``Version`` field of a ``.deb`` file, or None when dpkg-deb is missing or cannot read it."""
    return _command_output(["dpkg-deb", "-f", str(deb), "Version"])


def _command_output(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return None
    version = proc.stdout.strip()
    return version if proc.returncode == 0 and version else None


def faq_copyright_text(faq_dir: Path, edition: FaqEdition = FRENCH) -> str | None:
    """Return the package's ``copyright`` file next to the FAQ (``usr/share/doc/debian-faq-fr/copyright``).

    Args:
        faq_dir: A folder returned by :func:`ensure_faq_dir`.
        edition: The edition it was returned for.

    Returns:
        The file's text, or None if it is missing.
    """
    # faq_dir is <root>/usr/share/doc/debian/FAQ[/fr]: usr/share/doc is `depth - 3` levels up.
    path = Path(faq_dir).parents[len(edition.subdir.parts) - 4] / edition.package / "copyright"
    return path.read_text(encoding="utf-8") if path.is_file() else None


def normalize_ws(text: str) -> str:
    """Collapse every run of whitespace (non-breaking spaces included) into one space and strip the ends."""
    return " ".join(text.split())


def html_to_text(html: str) -> str:
    """Return the whitespace-normalized text of an HTML fragment, keeping words apart across block elements.

    Args:
        html: An HTML fragment.

    Returns:
        Its text, one space between words.
    """
    return normalize_ws(_block_text(html))


def _block_text(node: Tag | str) -> str:
    # Parse a copy: inserting separators must not change the caller's tree.
    soup = BeautifulSoup(node if isinstance(node, str) else str(node), "lxml")
    for tag in soup.find_all(sorted(BLOCK_TAGS)):
        tag.insert_before(NavigableString("\n"))
        tag.insert_after(NavigableString("\n"))
    return soup.get_text()


def is_question(heading: str) -> bool:
    """Tell whether a section heading is a question.

    Args:
        heading: A whitespace-normalized heading.

    Returns:
        True if it ends with "?", or if a question is followed by a closing remark, as in "Pourquoi ... ? Je
        pensais que ce CD contenait seulement stable !".
    """
    return heading.endswith("?") or "? " in heading


def _cap_at_sentence(text: str, max_chars: int = SHORT_ANSWER_MAX_CHARS) -> str:
    if len(text) <= max_chars:
        return text
    ends = [m.end() for m in _SENTENCE_END.finditer(text, 0, max_chars + 1)]
    if ends:
        return text[: ends[-1]]
    # No sentence ends early enough: cut at a word boundary.
    cut = text.rfind(" ", 0, max_chars)
    return text[: cut if cut > 0 else max_chars].rstrip(" ,;:") + "…"


def _short_answer(body: list[PageElement], body_text: str) -> str:
    # The first paragraph, extended with the following blocks while it is only a lead-in ("Oui.",
    # "Lancer la commande :") or stops mid-sentence (DocBook splits a paragraph around a <pre>), since alone it
    # would make a poor reference answer.
    parts: list[str] = []
    for node in body:
        text = normalize_ws(_block_text(node) if isinstance(node, Tag) else str(node))
        if not text:
            continue
        parts.append(text)
        answer = " ".join(parts)
        complete = answer.endswith(_COMPLETE_ENDINGS) and len(answer) >= SHORT_ANSWER_MIN_CHARS
        if complete or len(answer) >= SHORT_ANSWER_MAX_CHARS:
            break
    return _cap_at_sentence(" ".join(parts) if parts else body_text)


def _has_class(node: object, name: str) -> bool:
    return isinstance(node, Tag) and name in (node.get("class") or [])


def _section_body(section: Tag, titlepage: Tag) -> list[PageElement]:
    # Nested <div class="section"> are sections of their own.
    return [
        child
        for child in section.children
        if child is not titlepage
        and not (isinstance(child, Tag) and child.name == "div" and _has_class(child, "section"))
    ]


def _chapter_title(soup: BeautifulSoup, edition: FaqEdition = FRENCH) -> tuple[int | None, str]:
    h1 = soup.find("h1")
    title = normalize_ws(h1.get_text()) if h1 is not None else ""
    match = edition.chapter_prefix().match(title)
    if match is None:
        return None, title
    return int(match.group(1)), title[match.end() :]


def parse_faq_file(path: Path, edition: FaqEdition = FRENCH) -> tuple[int | None, list[FaqSection]]:
    """Split one chapter file of the FAQ into sections.

    Args:
        path: A chapter file (``*.fr.html`` for French).
        edition: Its edition (the chapter heading's wording).

    Returns:
        The chapter number (None for files without "Chapitre N.", like the index) and its sections in
        document order, sections with an empty body left out.
    """
    with warnings.catch_warnings():
        # The files are XHTML with an XML declaration; the HTML parser reads them fine.
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        soup = BeautifulSoup(path.read_bytes(), "lxml")
    number, chapter = _chapter_title(soup, edition)
    sections: list[FaqSection] = []
    for heading_tag in soup.find_all(_SECTION_HEADINGS):
        anchor_tag = heading_tag.find("a", id=True)
        if anchor_tag is None:
            continue
        section = heading_tag.find_parent(lambda t: t.name == "div" and _has_class(t, "section"))
        titlepage = heading_tag.find_parent(lambda t: t.name == "div" and _has_class(t, "titlepage"))
        if section is None or titlepage is None:
            logger.warning("%s: heading %r is not in a DocBook section; skipped", path.name, anchor_tag["id"])
            continue
        raw_heading = normalize_ws(heading_tag.get_text())
        heading = _HEADING_NUMBER.sub("", raw_heading, count=1)
        body = _section_body(section, titlepage)
        body_html = "".join(str(node) for node in body).strip()
        body_text = html_to_text(body_html)
        if not body_text:
            logger.debug("%s#%s has no text of its own; skipped", path.name, anchor_tag["id"])
            continue
        sections.append(
            FaqSection(
                anchor=str(anchor_tag["id"]),
                chapter=chapter,
                heading=heading,
                is_question=is_question(heading),
                body_html=body_html,
                body_text=body_text,
                short_answer=_short_answer(body, body_text),
            )
        )
    return number, sections


def parse_faq(faq_dir: Path, edition: FaqEdition = FRENCH) -> list[FaqSection]:
    """Parse every chapter of the FAQ into sections, in chapter order.

    Args:
        faq_dir: A folder of the edition's files (``*.fr.html``), as returned by :func:`ensure_faq_dir`.
        edition: Which language's FAQ.

    Returns:
        All sections with a non-empty body, ordered by chapter number then document order.

    Raises:
        ValueError: If the folder holds no FAQ HTML or two sections share an anchor.
    """
    files = _faq_html_files(Path(faq_dir), edition)
    if not files:
        raise ValueError(f"no {edition.pattern} files in {faq_dir}")
    chapters = []
    for path in files:
        number, sections = parse_faq_file(path, edition)
        chapters.append((number if number is not None else 10**6, path.name, sections))
    out = [s for _, _, sections in sorted(chapters, key=lambda c: (c[0], c[1])) for s in sections]
    seen: set[str] = set()
    for s in out:
        if s.anchor in seen:
            raise ValueError(f"duplicate section anchor {s.anchor!r} in {faq_dir}")
        seen.add(s.anchor)
    logger.info(
        "parsed %d FAQ sections (%d questions) from %d files",
        len(out),
        sum(s.is_question for s in out),
        len(files),
    )
    return out
