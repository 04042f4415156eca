"""The README and docs/ stay true to the code: their commands parse and their links resolve.

Every ```bash block of README.md, docs/*.md and datasets/README.md is split into commands, and so is every inline code
span that starts with ``python -m`` and passes arguments (a span of the module name alone names the
module, it is not a command, but that module must exist). Each one that runs a module of this project
(``python -m training.… | service.… | benchmarks.…``) goes through that module's own
``main()``, which builds its real argparse parser; parsing is stopped right after it succeeds, so
nothing is trained, served or downloaded. A renamed or removed flag, a wrong choice or a missing
argument makes its test fail. Values that name files are the one thing not checked: a path that
does not exist here (a placeholder such as RUN/best.pt, or a folder of the reader's own photos)
is created empty in a temporary folder first, so ``--checkpoint RUN/best.pt`` parses.

Every relative link and image of those pages must point to a file in
the repository, and every ``#anchor`` to a heading of the page it names.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import runpy
import shlex
import sys
from pathlib import Path
from unittest import mock

import pytest

from gesture_core.cli import CommandParser
from tests.helpers import REPO

pytestmark = pytest.mark.filterwarnings("ignore:.*found in sys.modules.*:RuntimeWarning")  # runpy, for modules the test imported before

COMMAND_PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "datasets" / "README.md"]
LINK_PAGES = COMMAND_PAGES
PROJECT_PACKAGES = ("training", "service", "benchmarks")
RUNS_PROJECT_MODULE = re.compile(rf"-m\s+((?:{'|'.join(PROJECT_PACKAGES)})(?:\.\w+)*)")
SHELL_SEPARATORS = {"&&", "||", "|", ";", "&"}
FENCED_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`([^`]+)`")
# What runs a module with -m: python (any path or version), or torchrun for distributed training.
LAUNCHER = re.compile(r"(?:\S*/)?(?:python(?:3(?:\.\d+)?)?|torchrun)")
RUNS_A_MODULE = re.compile(rf"(?:^|\s){LAUNCHER.pattern}\s(?:.*\s)?-m\s")


def fenced_blocks(text: str, language: str) -> list[tuple[int, str]]:
    """(line number of the block's first line, body) of every fenced block in LANGUAGE."""
    return [(text.count("\n", 0, m.start(2)) + 1, m.group(2)) for m in FENCED_BLOCK.finditer(text) if m.group(1) == language]


def without_fenced_blocks(text: str) -> str:
    """TEXT with each fenced block blanked to as many empty lines, so line numbers stay right."""
    return FENCED_BLOCK.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def inline_commands(text: str) -> list[tuple[int, str]]:
    """(line number, text) of every inline code span outside fenced blocks that runs ``python -m``."""
    prose = without_fenced_blocks(text)
    return [(prose.count("\n", 0, m.start()) + 1, m.group(1).replace("\n", " "))
            for m in INLINE_CODE.finditer(prose) if LAUNCHER.match(m.group(1)) and RUNS_A_MODULE.search(m.group(1))]  # fmt: skip


def logical_lines(block: str) -> list[tuple[int, str]]:
    """(line offset, text) of each shell line of BLOCK, with its continuation lines joined to it."""
    joined, parts, start = [], [], 0
    for offset, line in enumerate(block.split("\n")):
        start = offset if not parts else start
        parts.append(line.removesuffix("\\"))
        if not line.endswith("\\"):
            joined.append((start, " ".join(parts)))
            parts = []
    return joined


def shell_commands(block: str) -> list[tuple[int, list[str]]]:
    """(line offset, words) of every command of a bash block that runs a module with -m."""
    commands = []
    for offset, line in logical_lines(block):
        if not RUNS_A_MODULE.search(line):
            continue  # output shown beside the commands (JSON, tables) is not shell
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for word in [*lexer, ";"]:
            if word not in SHELL_SEPARATORS:
                command.append(word)
                continue
            if command:
                commands.append((offset, command))
            command = []
    return commands


def project_invocation(words: list[str]) -> tuple[str, list[str]] | None:
    """(module, argv) when WORDS run ``python|torchrun [OPTIONS] -m <one of this project's modules> ARGS``."""
    for i, word in enumerate(words):
        if LAUNCHER.fullmatch(word) and "-m" in words[i + 1 :]:
            module_at = words.index("-m", i + 1) + 1
            if module_at < len(words) and words[module_at].split(".")[0] in PROJECT_PACKAGES:
                return words[module_at], words[module_at + 1 :]
            return None
    return None


def documented_commands() -> list[pytest.param]:
    params = []
    for page in COMMAND_PAGES:
        text = page.read_text()
        snippets = [(line, block, False) for line, block in fenced_blocks(text, "bash")]
        snippets += [(line, span, True) for line, span in inline_commands(text)]
        for first_line, snippet, inline in snippets:
            for offset, words in shell_commands(snippet):
                found = project_invocation(words)
                if found and (found[1] or not inline):
                    where = f"{page.relative_to(REPO)}:{first_line + offset}"
                    params.append(pytest.param(*found, id=f"{where} {found[0]}"))
    return params


COMMANDS = documented_commands()


def looks_like_path(value: str) -> bool:
    if value.startswith("-") or "://" in value:
        return False
    return "/" in value or re.fullmatch(r"\.[A-Za-z][A-Za-z0-9]*", Path(value).suffix) is not None


OUTPUT_FLAGS = ("--out", "--output", "--jsonl", "--snapshot-dir", "--json")


def with_placeholders(argv: list[str], scratch: Path) -> list[str]:
    """ARGV with the paths that exist in the repository made absolute, and empty stand-ins in SCRATCH
    (the working directory) for the relative ones that do not."""
    resolved = []
    for flag, value in zip(["", *argv], argv, strict=False):
        if flag in OUTPUT_FLAGS:  # made by the command: a stand-in would be in its way
            resolved.append(value)
            continue
        if looks_like_path(value) and (REPO / value).exists():
            value = str(REPO / value)
        elif looks_like_path(value) and not Path(value).is_absolute() and ".." not in Path(value).parts:
            stand_in = scratch / value
            if value.endswith("/"):
                stand_in.mkdir(parents=True, exist_ok=True)
            else:
                stand_in.parent.mkdir(parents=True, exist_ok=True)
                stand_in.touch()
        resolved.append(value)
    return resolved


class _Parsed(BaseException):
    """Raised right after a successful parse_args, so main() does no work (BaseException: no handler catches it)."""


class _Refused(BaseException):
    """What argparse's error() would have printed before exiting with status 2."""


def parse_errors(module_name: str, argv: list[str]) -> str | None:
    """None when `python -m MODULE ARGV` parses its arguments, else argparse's message. The module runs
    as `python -m` runs it (a package through its __main__), stopped right after parsing."""
    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, args=None, namespace=None):
        raise _Parsed(parse_args(parser, args, namespace))

    def refuse(parser, message):
        raise _Refused(message)

    with (mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop), mock.patch.object(argparse.ArgumentParser, "error", refuse),
          mock.patch.object(CommandParser, "error", refuse)):
        try:
            with mock.patch.object(sys, "argv", [module_name, *argv]):
                runpy.run_module(module_name, run_name="__main__", alter_sys=True)
        except _Parsed:
            return None
        except _Refused as refused:
            return str(refused)
        except SystemExit as stop:  # --help and --version exit with 0 once they have printed
            return None if stop.code in (0, None) else f"exited with {stop.code}"
    raise AssertionError(f"python -m {module_name} returned without calling parse_args")


def test_commands_are_found_behind_variables_wrappers_and_launchers():
    block = "# train\nOMP_NUM_THREADS=1 time .venv/bin/python -m training.finetune --data d \\\n    --epochs 3 && echo done\n"
    block += "torchrun --standalone --nproc-per-node 2 -m training.finetune --data d\n.venv/bin/python -m pytest -q\n"
    found = [(offset, project_invocation(words)) for offset, words in shell_commands(block)]
    assert found == [
        (1, ("training.finetune", ["--data", "d", "--epochs", "3"])),
        (1, None),  # echo done
        (3, ("training.finetune", ["--data", "d"])),
        (4, None),  # not one of this project's modules
    ]


def test_the_docs_show_commands_of_every_part():
    modules = {param.values[0].split(".")[0] for param in COMMANDS}
    assert modules == set(PROJECT_PACKAGES), f"commands found for {sorted(modules)} only: is the extraction broken?"
    assert any(param.values[0] == "training.finetune" and "README.md" in param.id for param in COMMANDS)


def test_every_module_the_pages_run_exists():
    """datasets/README.md told users to record with `python -m service.capture`, a module that had moved to
    service.webcam.capture; a command with no arguments in running text is found by no other test."""
    named = {(str(page.relative_to(REPO)), m.group(1)) for page in COMMAND_PAGES for m in RUNS_PROJECT_MODULE.finditer(page.read_text())}
    assert len(named) > 20 and [f"{page}: {module}" for page, module in sorted(named) if importlib.util.find_spec(module) is None] == []


@pytest.mark.parametrize(("module_name", "argv"), COMMANDS)
def test_documented_command_parses(module_name: str, argv: list[str], tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if missing := [v for v in argv if v.startswith("../shared/data/") and not (REPO / v).exists()]:
        pytest.skip(f"{missing[0]} not present (real data lives in ../shared/data)")
    error = parse_errors(module_name, with_placeholders(argv, tmp_path))
    assert error is None, f"python -m {module_name} {shlex.join(argv)}\n  -> {error}"


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", without_fenced_blocks(text), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def relative_links(text: str) -> list[str]:
    targets = re.findall(r"\]\(([^)\s]+)(?: \"[^\"]*\")?\)", without_fenced_blocks(text))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # http:, https:, mailto: …


@pytest.mark.parametrize("page", LINK_PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path):
    broken = []
    for link in relative_links(page.read_text()):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no file {target.relative_to(REPO.resolve()) if target.is_relative_to(REPO.resolve()) else target}")
        elif anchor and (target.suffix != ".md" or anchor not in heading_anchors(target.read_text())):
            broken.append(f"{link}: no heading with anchor #{anchor} in {target.name}")
    assert not broken, "\n".join(broken)


TABLE_RULE = re.compile(r"\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")


def broken_table_rows(text: str) -> list[str]:
    """Rows a table lost: one after a blank line that ended the table, and a row's text carried on to the next line."""
    lines, broken, in_table, just_ended = text.splitlines(), [], False, False
    for n, line in enumerate(lines):
        starts_table = line.startswith("|") and n + 1 < len(lines) and bool(TABLE_RULE.match(lines[n + 1]))
        if in_table and not line.startswith("|") and line.strip() and not line.startswith("<!--"):
            broken.append(f"line {n + 1}: a row's text on a line of its own: {line[:60]}")
        elif not in_table and just_ended and line.startswith("|") and not starts_table:
            broken.append(f"line {n + 1}: a row after a blank line that ended its table: {line[:60]}")
        just_ended = in_table and not line.strip()
        in_table = starts_table or (in_table and line.startswith("|"))
    return broken


def test_broken_table_rows_are_found():
    table = "| a | b |\n| --- | --- |\n| 1 | 2 |\n"
    assert broken_table_rows(table + "\ntext, then |value| in prose\n") == []
    assert broken_table_rows(table + "\n| 3 | 4 |\n") == ["line 5: a row after a blank line that ended its table: | 3 | 4 |"]
    assert broken_table_rows(table + "| 3 | 4,\nand more |\n") == ["line 5: a row's text on a line of its own: and more |"]


@pytest.mark.parametrize("page", LINK_PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_tables_are_not_cut_by_a_blank_line(page: Path):
    """A blank line inside a table ends it: the rows after it showed as lines of pipes (serving.md's last setting);
    a row's text carried on to the next line becomes a row of its own."""
    assert not (broken := broken_table_rows(without_fenced_blocks(page.read_text()))), "\n".join(broken)
