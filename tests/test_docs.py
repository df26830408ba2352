"""Every command shown in the docs runs as written, and every file, link and test they cite exists.

Scans README.md and docs/*.md (new pages are picked up automatically):

- shell commands in fenced code blocks that invoke the project's command lines
  (`python -m backend|connectors|admin|demo|bench ...`) are parsed by that command's own argparse
  parser (the real one, caught at `parse_args`), so an unknown subcommand, an unknown option or a
  missing required argument fails; each subcommand's `--help` is also run as a process;
- `make TARGET` must be a target of the Makefile (`make -n TARGET`);
- `scripts/NAME.sh WORD` must be an executable script, with a `WORD)` case when it dispatches on `$1`;
- relative markdown links must point to an existing file, and `#anchors` to a heading of it;
- test names cited (`test_...`) must be defined in tests/, cited test files must exist, and
  backquoted repository paths (`backend/emit.py`) must exist;
- the layering that docs/architecture.md describes holds: connectors/ and admin/ never import
  each other, backend/ imports neither, only backend/broker.py imports pika and only
  backend/store.py imports pymongo or mongomock.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLIS = {
    # module -> (module holding main, name of main)
    "backend": ("backend.cli", "main"),
    "connectors": ("connectors.cli", "main"),
    "admin": ("admin.cli", "main"),
    "demo": ("demo.cli", "main"),
    "bench": ("bench.cli", "main"),
}
CLI_RE = re.compile(r"(?:^|[\s;&|(`/])python3?\s+-m\s+(" + "|".join(CLIS) + r")\b(.*)$")
MAKE_RE = re.compile(r"(?:^|[\s;&|(`])make\s+(.*)$")
SCRIPT_RE = re.compile(r"(?:^|[\s;&|(`])(scripts/[\w.-]+\.sh)\b(.*)$")
FENCE_RE = re.compile(r"^(\s*)```(.*)$")
LINK_RE = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
TEST_NAME_RE = re.compile(r"\b(test_[A-Za-z0-9_]+)\b(?!\.py)")
TEST_FILE_RE = re.compile(r"\b(?:tests/)?(test_[A-Za-z0-9_]+)\.py\b")
PATH_RE = re.compile(
    r"`((?:backend|connectors|admin|demo|bench|tests|scripts|docs|docker)/[\w./-]*"
    r"|Dockerfile|docker-compose\.yml|Makefile|pyproject\.toml|\.env\.example|README\.md)`"
)
NOT_COMMANDS = {"mermaid", "python", "json", "text"}


def doc_files() -> list[Path]:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@dataclass(frozen=True)
class Line:
    doc: str
    number: int
    text: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.number}: {self.text.strip()}"


def code_lines(path: Path) -> list[Line]:
    """Lines of the fenced code blocks that may hold shell commands, continuations joined."""
    out: list[Line] = []
    in_block, lang, pending, start = False, "", "", 0
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = FENCE_RE.match(raw)
        if fence:
            in_block, lang = (not in_block), fence.group(2).strip().lower()
            pending = ""
            continue
        if not in_block or lang in NOT_COMMANDS:
            continue
        if not pending:
            start = n
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        out.append(Line(rel(path), start, pending + raw))
        pending = ""
    return out


def prose(path: Path) -> str:
    """The document without its fenced code blocks (links there are examples, not links)."""
    keep, in_block = [], False
    for raw in path.read_text(encoding="utf-8").splitlines():
        if FENCE_RE.match(raw):
            in_block = not in_block
            continue
        if not in_block:
            keep.append(raw)
    return "\n".join(keep)


def shell_words(rest: str) -> list[str]:
    """The arguments of one command: up to a comment, pipe, redirection, `;`, `&` or a closing
    backquote (a command quoted inside a code block)."""
    lex = shlex.shlex(rest.split("`", 1)[0], posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    words: list[str] = []
    try:
        for token in lex:
            if token and all(c in "();<>|&" for c in token):
                break
            words.append(token)
    except ValueError as exc:  # unbalanced quotes
        raise AssertionError(f"cannot split {rest!r}: {exc}") from None
    return words


@dataclass(frozen=True)
class CliCommand:
    line: Line
    module: str
    args: tuple[str, ...]


def cli_commands() -> list[CliCommand]:
    out = []
    for path in doc_files():
        for line in code_lines(path):
            m = CLI_RE.search(line.text)
            if m:
                out.append(CliCommand(line, m.group(1), tuple(shell_words(m.group(2)))))
    return out


def make_commands() -> list[tuple[Line, list[str]]]:
    out = []
    for path in doc_files():
        for line in code_lines(path):
            m = MAKE_RE.search(line.text)
            if m:
                targets = [w for w in shell_words(m.group(1)) if "=" not in w and not w.startswith("-")]
                out.append((line, targets))
    return out


class _Parsed(BaseException):
    """Raised instead of returning from parse_args: the command line was accepted."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__()
        self.namespace = namespace


def parse_with_project_parser(module: str, args: Sequence[str], monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> argparse.Namespace:
    """Run the CLI's main() until its parser has parsed `args`; fail with argparse's message."""
    mod_name, func = CLIS[module]
    main: Callable[..., Any] = getattr(importlib.import_module(mod_name), func)
    real = argparse.ArgumentParser.parse_args

    def parse_args(self: argparse.ArgumentParser, argv: Any = None, namespace: Any = None) -> Any:
        raise _Parsed(real(self, argv, namespace))

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", parse_args)
        try:
            code = main(list(args))
        except _Parsed as parsed:
            return parsed.namespace
        except SystemExit as exc:
            code = exc.code
    err = capsys.readouterr().err.strip().splitlines()  # admin's main turns argparse's exit into a return
    raise AssertionError(f"refused (exit {code}): {err[-1] if err else ''}")


# -- the tests --------------------------------------------------------------------------------
def test_docs_show_commands_of_every_cli() -> None:
    """The extraction itself works: the docs do show commands of each command line and make."""
    modules = {c.module for c in cli_commands()}
    assert {"backend", "connectors", "admin", "demo"} <= modules, modules
    assert any(targets for _, targets in make_commands())


def test_docs_cli_commands_are_accepted_by_the_project_parsers(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    failures = []
    for cmd in cli_commands():
        if "-h" in cmd.args or "--help" in cmd.args:
            continue
        if not cmd.args and cmd.module != "demo":
            continue  # `python -m backend` named as a whole: its --help is checked below
        try:
            parse_with_project_parser(cmd.module, cmd.args, monkeypatch, capsys)
        except AssertionError as exc:
            failures.append(f"{cmd.line}\n    python -m {cmd.module} {shlex.join(cmd.args)}: {exc}")
    assert not failures, "commands in the docs that the project's parsers refuse:\n" + "\n".join(failures)


def test_docs_cli_subcommands_have_a_help_that_runs() -> None:
    seen: dict[tuple[str, ...], Line] = {}
    for cmd in cli_commands():
        head = [a for a in cmd.args[:1] if not a.startswith("-")]
        # demo's first positional is a choice (run/emit), not a sub-parser: its help is the top one
        key = (cmd.module,) + (tuple(head) if cmd.module in ("backend", "connectors", "admin") else ())
        seen.setdefault(key, cmd.line)
    failures = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for key, line in sorted(seen.items()):
        proc = subprocess.run([sys.executable, "-m", *key, "--help"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)
        if proc.returncode != 0 or "usage:" not in proc.stdout:
            failures.append(f"{line}: `python -m {' '.join(key)} --help` exit {proc.returncode}: {proc.stderr[-300:]}")
    assert not failures, "\n".join(failures)


def test_docs_make_targets_exist() -> None:
    make = shutil.which("make")
    assert make, "make is not installed"
    failures = []
    for line, targets in make_commands():
        for target in targets:
            proc = subprocess.run([make, "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
            if proc.returncode != 0:
                failures.append(f"{line}: make {target}: {proc.stderr.strip()[-200:]}")
    assert not failures, "\n".join(failures)


def test_docs_scripts_exist_with_their_subcommands() -> None:
    failures = []
    for path in doc_files():
        for line in code_lines(path):
            for m in SCRIPT_RE.finditer(line.text):
                script = ROOT / m.group(1)
                if not script.is_file() or not os.access(script, os.X_OK):
                    failures.append(f"{line}: {m.group(1)} is not an executable file")
                    continue
                words = shell_words(m.group(2))
                text = script.read_text(encoding="utf-8")
                # a script that dispatches on its first argument (`case "${1:-}" in`) has subcommands
                has_cases = re.search(r'^\s*case\s+"?\$\{?1\b', text, re.M) is not None
                if words and has_cases and not words[0].startswith("-"):
                    if not re.search(rf"^\s*{re.escape(words[0])}\)", text, re.M):
                        failures.append(f"{line}: {m.group(1)} has no subcommand {words[0]!r}")
    assert not failures, "\n".join(failures)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    out: set[str] = set()
    counts: dict[str, int] = {}
    for raw in prose(path).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", raw)
        if m:
            slug = github_slug(m.group(1))
            n = counts.get(slug, 0)
            counts[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_docs_relative_links_point_to_existing_files_and_headings() -> None:
    failures = []
    for path in doc_files():
        for m in LINK_RE.finditer(prose(path)):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = path if not file_part else (path.parent / file_part).resolve()
            if not dest.exists():
                failures.append(f"{rel(path)}: link to {target}: no such file")
                continue
            if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                failures.append(f"{rel(path)}: link to {target}: no heading #{anchor} in {rel(dest)}")
    assert not failures, "\n".join(failures)


def defined_tests() -> set[str]:
    names: set[str] = set()
    for f in (ROOT / "tests").glob("*.py"):
        names |= set(re.findall(r"^\s*(?:async\s+)?def\s+(test_\w+)", f.read_text(encoding="utf-8"), re.M))
    return names


def test_docs_cited_tests_and_test_files_exist() -> None:
    defined = defined_tests()
    failures = []
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        for name in sorted(set(TEST_NAME_RE.findall(text))):
            if name not in defined:
                failures.append(f"{rel(path)}: cites {name}, which no file in tests/ defines")
        for name in sorted(set(TEST_FILE_RE.findall(text))):
            if not (ROOT / "tests" / f"{name}.py").is_file():
                failures.append(f"{rel(path)}: cites tests/{name}.py, which does not exist")
    assert not failures, "\n".join(failures)


def test_docs_cited_repository_paths_exist() -> None:
    failures = []
    for path in doc_files():
        for m in PATH_RE.finditer(prose(path)):
            cited = m.group(1)
            if any(c in cited for c in "*<>{}") or cited.endswith("."):
                continue
            if not ((ROOT / cited).exists() or (path.parent / cited).exists()):
                failures.append(f"{rel(path)}: cites `{cited}`, which does not exist")
    assert not failures, "\n".join(failures)


# -- the layering docs/architecture.md describes ------------------------------------------------
def imports_of(package: str) -> dict[str, set[str]]:
    """{file: top-level modules it imports} for every .py file of a package."""
    out: dict[str, set[str]] = {}
    for f in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), str(f))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        out[rel(f)] = names
    return out


def test_docs_architecture_layering_holds() -> None:
    forbidden = {
        "backend": {"connectors", "admin", "demo", "bench"},
        "connectors": {"admin", "demo", "bench"},
        "admin": {"connectors", "demo", "bench"},
    }
    failures = []
    for package, banned in forbidden.items():
        for f, names in imports_of(package).items():
            if names & banned:
                failures.append(f"{f} imports {sorted(names & banned)}")
    owners = {"pika": {"backend/broker.py"}, "pymongo": {"backend/store.py"}, "mongomock": {"backend/store.py"}}
    for package in ("backend", "connectors", "admin", "demo"):
        for f, names in imports_of(package).items():
            for lib, allowed in owners.items():
                if lib in names and f not in allowed:
                    failures.append(f"{f} imports {lib} (only {sorted(allowed)} may)")
    assert not failures, "\n".join(failures)
