"""The README's quick start, run as written, and every relative link of the documentation, followed.

The shell blocks of the README's "Quick start" are parsed, not copied: each
``python -m scripts...`` command runs in a fresh interpreter from the repository
root, with a temporary ``--runs-dir`` and at most `SMALL_STEPS` steps, and must
exit 0; the folders it writes must hold the files and fields the README's
"Outputs" section lists.  ``make`` targets must exist in the Makefile, and the
data step must put the corpus where the commands read it.  A command of any
other kind fails the test until the test learns it, so the quick start cannot
drift from what the code does.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.figures import figure_names
from tests.conftest import CORPUS_CANDIDATES

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
CORPUS = "data/tinyshakespeare.txt"
SMALL_STEPS = 2000
WRITES_RUNS = {("scripts.run_m1", "run"), ("scripts.sweep_m1", None), ("scripts.sweep_m1_grid", None),
               ("thermospec", "run"), ("thermospec", "sweep"), ("thermospec", "grid")}
RUN_COMMANDS = (["scripts.run_m1", "run"], ["thermospec", "run"])  # the checkout's and the installed package's


def section(text: str, title: str) -> str:
    """The body of the ``## title`` section (down to the next level-2 heading)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def fenced(text: str, languages: tuple[str, ...]) -> list[str]:
    """The bodies of the fenced code blocks in one of `languages`."""
    pattern = r"^```(" + "|".join(languages) + r")\n(.*?)^```"
    return [m.group(2) for m in re.finditer(pattern, text, flags=re.S | re.M)]


def shell_commands(block: str) -> list[list[str]]:
    """Each command of a shell block as words: continuations joined, comments and prompts dropped."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line.removeprefix("$ "), comments=True)
        if words:
            commands.append(words)
    return commands


def table_column(text: str, header: str) -> list[list[str]]:
    """The backticked names in the first cell of each row of the Markdown table whose header starts `header`."""
    start = text.index(header)
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append(re.findall(r"`([^`]+)`", line.split(" | ")[0]))
    return rows


def corpus_path() -> Path | None:
    return next((p for p in CORPUS_CANDIDATES if p.is_file()), None)


def prepared(words: list[str], runs: Path, last_run: Path | None) -> list[str] | None:
    """The argument list to run for one README command, or None to skip it (no corpus here)."""
    module, args = words[2], words[3:]
    sub = args[0] if args and not args[0].startswith("-") else None
    out = []
    for i, word in enumerate(args):
        previous = args[i - 1] if i else ""
        if previous == "--steps":
            word = str(min(int(word), SMALL_STEPS))
        elif word == CORPUS:
            found = corpus_path()
            if found is None:
                return None
            word = str(found)
        elif word.startswith("runs/<"):
            assert last_run is not None, f"{shlex.join(words)}: no run folder made before it"
            word = str(last_run)
        out.append(word)
    if (module, sub) in WRITES_RUNS:
        out += ["--runs-dir", str(runs), "--quiet"]
        if "--steps" not in out and sub == "run":
            out += ["--steps", str(SMALL_STEPS)]
    return [sys.executable, "-m", module, *out]


def test_quick_start_commands_run_as_written(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    quick = section(text, "Quick start")
    outputs = section(text, "Outputs")
    makefile = (REPO / "Makefile").read_text()
    ran: list[str] = []
    last_run: Path | None = None
    for block in fenced(quick, ("bash", "sh", "console")):
        for words in shell_commands(block):
            line = shlex.join(words)
            if words[0] == "thermospec":  # the installed command; here the same package, as python -m thermospec
                words = ["python", "-m", *words]
            if words[0] == "make":
                assert re.search(rf"^{re.escape(words[1])}:", makefile, flags=re.M), f"{line}: no such target"
            elif words[:2] == ["mkdir", "-p"]:
                assert words[2] == Path(CORPUS).parent.as_posix(), line
            elif words[0] == "curl":
                assert words[words.index("-o") + 1] == CORPUS and words[-1].startswith("https://"), line
            elif words[:3] == ["pip", "install", "."]:
                assert len(words) == 3, f"{line}: the quick start installs this checkout and nothing else"
            elif words[:2] == ["python", "-m"]:
                assert words[2].startswith("scripts.") or words[2] == "thermospec", f"{line}: not the project's"
                runs = tmp_path / f"runs{len(ran)}"
                argv = prepared(words, runs, last_run)
                if argv is None:
                    continue
                done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
                assert done.returncode == 0, f"{line} exited with {done.returncode}:\n{done.stderr[-2000:]}"
                ran.append(line)
                if runs.is_dir():
                    (folder,) = runs.iterdir()
                    check_outputs(words, folder, outputs)
                    if words[2:4] in RUN_COMMANDS:
                        last_run = folder
            else:
                pytest.fail(f"README quick start: '{line}' is a command this test does not know how to check")
    assert any("run_m1 run" in c for c in ran) and any("run_m1 check" in c for c in ran), ran


def check_outputs(words: list[str], folder: Path, outputs: str) -> None:
    """The files a quick-start command wrote hold the fields the README's Outputs section lists."""
    if words[2:4] in RUN_COMMANDS:
        record = json.loads((folder / "m1_metrics.jsonl").open(encoding="utf-8").readline())
        fields = [name for cell in table_column(outputs, "| field |") for name in cell]
        assert fields == list(record), "README's m1_metrics.jsonl fields are not the file's, in order"
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        listed = {name for cell in table_column(outputs, "| fields |") for name in cell}
        assert listed <= set(summary), f"README lists summary fields that are not there: {listed - set(summary)}"
        assert set(summary["checklist"]) <= set(re.findall(r"`([A-Za-z0-9_.]+)`", outputs)), "checklist keys"
    for line in outputs.splitlines():
        if line.startswith("| `m1_") and line.endswith("|"):
            name_cell, _, columns_cell = line.strip("| ").split(" | ", 2)
            name, columns = name_cell.strip("`"), re.findall(r"`([^`]+)`", columns_cell)[0]
            if (folder / name).is_file():
                with (folder / name).open(newline="") as f:
                    assert next(csv.reader(f)) == columns.split(", "), f"README's {name} columns are not the file's"


def test_quick_start_python_block_runs() -> None:
    for block in fenced(README.read_text(encoding="utf-8"), ("python",)):
        exec(compile(block, "README.md", "exec"), {})


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[`*_\[\]()]", "", heading.strip().lower())
    text = "".join(c for c in text if c.isalnum() or c in " -")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


DOC_FILES = [README, *DOCS]


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_point_at_existing_files(path: Path) -> None:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        assert resolved.exists(), f"{path.name}: link to {target}, which does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{path.name}: link to {target}, which has no such heading"


def test_every_figure_is_regenerated_shown_and_beside_its_command() -> None:
    on_disk = sorted(p.name for p in (REPO / "docs").glob("*.png"))
    assert on_disk == figure_names(), "docs/*.png and scripts/figures.py (make figures) disagree"
    shown = set()
    for path in DOC_FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", line):
                shown.add(Path(image).name)
                before = "\n".join(lines[max(0, number - 12):number])
                assert "python -m scripts." in before, f"{path.name}: {image} has no command beside it"
    assert set(on_disk) <= shown, f"figures no page shows: {set(on_disk) - shown}"
