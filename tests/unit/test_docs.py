"""The manual stays true to the code: every flag it mentions exists, every column of the results table is
described, and every page is reachable from the README."""

import argparse
import glob
import os
import re

import pytest

from cracknet.cli import build_parser
from cracknet.table import runs, schema

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
# Flags of other tools the pages show in use (ray job submit, ray start, ray get-auth-token).
OTHER_TOOLS = {"--address", "--working-dir", "--runtime-env-json", "--no-wait", "--head", "--generate"}


def cracknet_flags() -> set[str]:
    found = set()

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            found.update(o for o in action.option_strings if o.startswith("--"))
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(build_parser())
    # The benchmark scripts and the generator have parsers of their own.
    for script in glob.glob(os.path.join(ROOT, "bench", "*.py")) + [os.path.join(ROOT, "cracknet", "demo", "synthetic.py")]:
        found.update(re.findall(r"add_argument\(\s*\"(--[a-z0-9-]+)\"", open(script).read()))
    return found


@pytest.mark.parametrize("page", PAGES, ids=os.path.basename)
def test_every_flag_the_docs_mention_exists(page):
    mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", open(page).read()))
    unknown = mentioned - cracknet_flags() - OTHER_TOOLS
    assert not unknown, f"{os.path.basename(page)} mentions flags nothing defines: {sorted(unknown)}"


def test_every_column_of_the_results_and_runs_tables_is_described():
    page = open(os.path.join(ROOT, "docs", "results.md")).read()
    missing = [f.name for f in list(schema.SCHEMA) + list(runs.SCHEMA) if f"`{f.name}`" not in page]
    assert not missing, f"docs/results.md does not describe: {missing}"


def test_every_docs_page_is_linked_from_the_readme_and_every_link_resolves():
    readme = open(PAGES[0]).read()
    assert len(readme.splitlines()) <= 250
    for page in PAGES[1:]:
        assert f"(docs/{os.path.basename(page)})" in readme, page
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", open(page).read()):
            assert os.path.exists(os.path.join(os.path.dirname(page), target)), (page, target)
