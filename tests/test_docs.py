"""The documentation cannot rot: code blocks marked ``<!-- runnable -->`` in README.md and docs/*.md are
executed, and the option lists name every option value the code accepts."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = re.compile(r"^<!-- runnable -->\n```python\n(.*?)^```", flags=re.S | re.M)


def runnable_blocks():
    return [(f"{p.relative_to(ROOT)}#{i}", code) for p in DOCS for i, code in enumerate(RUNNABLE.findall(p.read_text()))]


def test_readme_and_guide_have_runnable_examples():
    files = {name.split("#")[0] for name, _ in runnable_blocks()}
    assert {"README.md", "docs/guide.md"} <= files


@pytest.mark.parametrize("name,code", runnable_blocks(), ids=[n for n, _ in runnable_blocks()])
def test_runnable_block_executes(name, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    exec(compile(code, name, "exec"), {"__name__": "__doc_example__"})


def test_guide_lists_every_step_rule():
    from mmdguidance.guidance import STEP_RULES

    row = next(line for line in (ROOT / "docs" / "guide.md").read_text().splitlines() if line.startswith("| `step_rule`"))
    for rule in STEP_RULES:
        assert f"`'{rule}'`" in row, f"docs/guide.md's step_rule row does not list {rule!r}"
