"""The repository's own documents: every document its text cites is in it, and the docs' links work.

A reader who follows a citation (``docs/reliability.md``, a module docstring's "see README.md")
must find the file in a clone. A planning document that lives outside the repository, cited from a
docstring, is a dead end for every reader but its authors. So:

- every path ending in ``.md`` named in a text file of the repository (Markdown, Python, TOML,
  YAML, shell scripts, Dockerfiles; not the recorded results in ``bench/results/``) names a file in
  the repository, read from the repository root or from the citing file's folder;
- every relative Markdown link ``[text](path)`` or image ``![text](path)`` in a Markdown file
  points at a file or folder in the repository, and its ``#anchor``, if any, at a heading of the
  Markdown file it names (GitHub's anchor rule).

The files are those a clone holds: what git tracks, plus new files git does not ignore (so a doc
being written is checked before its commit), less tracked files deleted in the checkout. Plain
file reading, no network; well under a second.
"""

from __future__ import annotations

import os
import posixpath
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
THIS_FILE = Path(__file__).resolve().relative_to(ROOT).as_posix()

TEXT_SUFFIXES = (".md", ".py", ".toml", ".yaml", ".yml", ".sh", ".cfg", ".ini", ".txt")
SKIPPED_FOLDERS = ("bench/results/",)  # what a benchmark wrote, not prose
# Files of other public repositories, named in provenance notes together with their repository
# (the path, then the "owner/name" that must stand within a few lines before it).
ELSEWHERE = {"warpio-docs/ai-docs/model_cards/qwen3:4b.md": "akougkas/warpio-cli"}

URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s)>\]\"'`]+")
# A path of one or more segments ending in ".md" (':' allowed inside a segment: "qwen3:4b.md").
DOC_PATH = re.compile(r"(?<![\w./:@+-])((?:[\w.:@+-]+/)*[\w.:@+-]*\w\.md)(?![\w/])")
FENCE = re.compile(r"^( {0,3})(```|~~~).*?^\1\2[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)


def repository_files() -> list[str]:
    """What a clone of the checkout holds: tracked and new unignored files that exist."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    names = {os.fsdecode(raw) for raw in listed.split(b"\0") if raw}
    return sorted(n for n in names if (ROOT / n).is_file())


def is_text_source(name: str) -> bool:
    if name.startswith(SKIPPED_FOLDERS):
        return False
    base = posixpath.basename(name)
    if base.startswith("Dockerfile") or name.endswith(TEXT_SUFFIXES):
        return True
    if "." in base:
        return False
    with open(ROOT / name, "rb") as f:  # an extension-less shell script (.ci/run)
        first = f.readline(200)
    return first.startswith(b"#!") and b"sh" in first


def folders_of(files: list[str]) -> set[str]:
    return {posixpath.dirname(n) for n in files} | {
        "/".join(n.split("/")[:i]) for n in files for i in range(1, n.count("/") + 1)
    }


def resolve(reference: str, citing: str, present: set[str]) -> str | None:
    """The repository path ``reference`` names, from the root or from ``citing``'s folder."""
    reference = reference.split("#", 1)[0]
    bases = [""] if reference.startswith("/") else ["", posixpath.dirname(citing)]
    for base in bases:
        candidate = posixpath.normpath(posixpath.join(base, reference.lstrip("/")))
        if candidate in present:
            return candidate
    return None


def line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def test_every_cited_document_is_in_the_repository() -> None:
    files = repository_files()
    present = set(files)
    missing = []
    for name in filter(is_text_source, files):
        if name == THIS_FILE:  # its examples above are not citations
            continue
        text = (ROOT / name).read_text(encoding="utf-8", errors="replace")
        text = URL.sub(lambda m: " " * len(m.group()), text)  # keep offsets: line numbers stay true
        for match in DOC_PATH.finditer(text):
            reference = match.group(1)
            if (
                reference in ELSEWHERE
                and ELSEWHERE[reference] in text[max(0, match.start() - 300) : match.start()]
            ):
                continue
            if resolve(reference, name, present) is None:
                missing.append(f"{name}:{line_of(text, match.start())}: {reference}")
    assert not missing, "documents cited but not in the repository:\n" + "\n".join(missing)


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to '-', repeats numbered."""
    seen: Counter[str] = Counter()
    found = set()
    for heading in HEADING.findall(FENCE.sub("", markdown)):
        plain = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", plain.strip().lower()).replace(" ", "-")
        found.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return found


def test_markdown_links_resolve() -> None:
    files = repository_files()
    present = set(files) | folders_of(files)
    markdown = {n: (ROOT / n).read_text(encoding="utf-8") for n in files if n.endswith(".md")}
    broken = []
    for name, raw in markdown.items():
        text = INLINE_CODE.sub(
            lambda m: " " * len(m.group()), FENCE.sub(lambda m: "\n" * m.group().count("\n"), raw)
        )
        for match in LINK.finditer(text):
            target = match.group(1)
            if URL.match(target) or target.startswith("mailto:"):
                continue
            where = f"{name}:{line_of(text, match.start())}: ({target})"
            path, _, fragment = target.partition("#")
            found = resolve(path, name, present) if path else name
            if found is None:
                broken.append(f"{where}: no such file or folder")
            elif fragment and found in markdown and fragment not in anchors(markdown[found]):
                broken.append(f"{where}: no heading #{fragment} in {found}")
    assert not broken, "broken links:\n" + "\n".join(broken)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see docs/a.md, and B.md.", ["docs/a.md", "B.md"]),
        ('(tmp / "C.md")', ["C.md"]),
        ("[x](../d.md#part) and ./e/f.md", ["../d.md", "./e/f.md"]),
        ("their model_cards/qwen3:4b.md shows", ["model_cards/qwen3:4b.md"]),
        ("README.md:135, not .md files, *.md, a.mdx, docs/, x.md5", ["README.md"]),
    ],
)
def test_document_paths_found_in_text(text: str, expected: list[str]) -> None:
    assert [m.group(1) for m in DOC_PATH.finditer(text)] == expected


def test_links_found_in_markdown() -> None:
    text = '[a](docs/a.md) ![b](b.png "title") [c](#using-it) [d](<e f.md>) [g]: h'
    assert [m.group(1) for m in LINK.finditer(text)] == ["docs/a.md", "b.png", "#using-it"]


def test_anchors_follow_githubs_rule() -> None:
    markdown = "# Title\n## Using it\n### `sentiment report`\n## Using it\n```\n# not a heading\n```\n"
    assert anchors(markdown) == {"title", "using-it", "sentiment-report", "using-it-1"}
