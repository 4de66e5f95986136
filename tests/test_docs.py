"""The README and the docs pages: every relative link leads to a file (and its anchor to a heading there), and
the README's two commands are the ones CI and the set-up script run."""

from __future__ import annotations

import re
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
PAGES = [REPOSITORY / "README.md", *sorted((REPOSITORY / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
README_LINES = 150


def relative_links(text: str) -> list[str]:
    """The targets of a page's markdown links and images that stay inside the repository, outside code blocks."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return [target for target in LINK.findall(prose) if not re.match(r"[a-z]+:", target)]


def anchors(text: str) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    headings = re.findall(r"^#+ (.+)$", prose, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def broken_links(page: Path) -> list[str]:
    """Each relative link of `page` whose file, or whose anchor in that file, does not exist."""
    broken = []
    for target in relative_links(page.read_text()):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in anchors(file.read_text())):
            broken.append(target)
    return broken


def test_every_relative_link_of_the_readme_and_the_docs_resolves():
    assert all(page.exists() for page in PAGES) and len(PAGES) > 5
    assert {page.name: broken_links(page) for page in PAGES} == {page.name: [] for page in PAGES}
    assert relative_links((REPOSITORY / "README.md").read_text())  # the README does link to the docs


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "there.md").write_text("# A heading, with punctuation\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[fine](there.md) [anchor](there.md#a-heading-with-punctuation) [gone](missing.md) "
        "[no such heading](there.md#elsewhere) [web](https://example.org/x.md)\n```\n[in code](nowhere.md)\n```\n"
    )
    assert broken_links(page) == ["missing.md", "there.md#elsewhere"]


def test_the_readme_is_short_and_its_two_commands_are_the_ones_ci_and_setup_run():
    readme = (REPOSITORY / "README.md").read_text()
    assert len(readme.splitlines()) <= README_LINES
    first_block = re.search(r"```bash\n(.*?)```", readme, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["bash scripts/setup.sh && .venv/bin/locdiff run", "bash scripts/test.sh"]
    ci = (REPOSITORY / ".ci" / "run").read_text()
    assert "bash scripts/setup.sh" in ci and re.search(r"^exec bash scripts/test\.sh$", ci, flags=re.M)
    assert re.search(r'^locdiff = "locdiff_pipeline\.cli:main"$', (REPOSITORY / "pyproject.toml").read_text(), re.M)
    test_script = (REPOSITORY / "scripts" / "test.sh").read_text()
    assert "scripts/setup.sh" in test_script and "pytest" in test_script  # sets up where needed, then the suite
