"""The README and docs/ as the project promises them: a README of at most 12 KB, links that
lead to files the repository has, and CI running exactly the README's test command."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_the_readme_stays_under_12_kb():
    assert (REPO / "README.md").stat().st_size <= 12_000


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_leads_to_a_file_of_the_repository(page):
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
    local = [t for t in targets if not re.match(r"[a-z]+:", t)]
    missing = [t for t in local if not (page.parent / t).exists()]
    assert not missing, f"{page.name} links to {missing}"


def test_ci_runs_the_readmes_test_command():
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    readme = (REPO / "README.md").read_text()
    assert ci == "python -m pytest -q"
    assert re.search(r"^python -m pytest -q\s+#", readme, re.M), "the README's test command changed"
