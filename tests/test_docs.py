"""The manual: every relative link in README.md and docs/ points at a file that exists, every page is reachable
from the README, and (where MkDocs is installed) the site builds strictly."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _links(markdown: str) -> list[str]:
    """The targets of the inline links and images of a Markdown text, code blocks and code spans left out."""
    prose = re.sub(r"^(```|~~~).*?^\1", "", markdown, flags=re.S | re.M)
    prose = re.sub(r"(`+)[^`]*?\1", "", prose)
    return LINK.findall(prose)


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def test_link_extraction_skips_code():
    text = "see [a](a.md) and ![b](img/b.png \"title\")\n```\n[c](c.md)\n```\n`[d](d.md)` [e](https://x.org)"
    assert _links(text) == ["a.md", "img/b.png", "https://x.org"]


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files(page: Path):
    broken = []
    for target in _links(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor on the same page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to missing files: {broken}"


def test_every_page_is_on_the_readme_map():
    readme = set(_links((ROOT / "README.md").read_text(encoding="utf-8")))
    named = {target.split("#", 1)[0] for target in readme}
    skip = {"index.md", "results.md"}  # the site's home is the README's twin; results.md is benchmarks/RESULTS.md
    missing = [f"docs/{p.relative_to(DOCS).as_posix()}" for p in sorted(DOCS.rglob("*.md"))
               if p.name not in skip and f"docs/{p.relative_to(DOCS).as_posix()}" not in named]
    assert not missing, f"add these pages to README.md's manual table: {missing}"


def test_results_page_is_the_benchmarks_file():
    assert (DOCS / "results.md").resolve() == (ROOT / "benchmarks" / "RESULTS.md").resolve()


def test_site_builds_strictly(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.skip("MkDocs is not installed: `make docs` installs the docs extra (pip install -e '.[docs]')")
    done = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    api = (tmp_path / "site" / "api.html").read_text(encoding="utf-8")
    assert "from_pretrained" in api and "load_model_dir" in api and "ModelDirError" in api


def test_site_home_shows_the_readme_tour():
    def tour(text: str) -> str:
        return text.split("## A ten-line tour", 1)[1].split("```")[1]

    readme, home = (ROOT / "README.md").read_text(encoding="utf-8"), (DOCS / "index.md").read_text(encoding="utf-8")
    assert tour(readme) == tour(home), "docs/index.md's tour differs from README.md's: copy one to the other"
    assert readme.split("```")[1] == home.split("```")[1], "the two commands differ between README.md and docs/index.md"
