"""Every command shown in the docs runs as written, and every file, link and test they cite exists.

Scans README.md and docs/*.md (new pages are picked up automatically):

- shell commands, in fenced code blocks and inline in the prose (a backquoted span such as
  `python -m backend status`), that invoke the project's command lines
  (`python -m backend|connectors|admin|demo|bench ...`, also as `.venv/bin/python -m ...`, and the
  `fifoq ...` console script) are parsed by that command's own click command (the real one, caught
  as it is about to run the command), so an unknown subcommand, an unknown option, a bad value or a
  missing required argument fails, and bench's benchmark names must be real; each subcommand's
  `--help` is also run as a process. Inline spans
  may use usage notation: `[optional parts]` and `...` are dropped before parsing. A span that
  names a subcommand without `python -m` (`bench queues`) fails: it would not run as written;
- every `BENCH_ARGS=...` value shown (docs and the Makefile's help) is accepted by bench's parser;
- `python -m OTHER` (pytest...) must name an importable module, `.venv/bin/NAME` an installed
  program, and the files and `file::test` ids given to pytest must exist;
- `make TARGET` must be a target of the Makefile (`make -n TARGET`);
- `docker compose SUBCOMMAND ... SERVICE` must use a real subcommand and a service of the compose
  files (`docker-compose*.yml`);
- `scripts/NAME.sh WORD` (also `bash scripts/...`) must be an executable script, with a `WORD)`
  case when it dispatches on `$1`;
- every token that looks like a commit hash (7-12 or 40 hex digits, or any hex run right after
  the word "commit") is a commit of this repository (`git cat-file -e HASH^{commit}`);
- relative markdown links must point to an existing file, and `#anchors` to a heading of it;
- test names cited (`test_...`) must be defined in tests/, cited test files must exist, and
  backquoted repository paths (`backend/emit.py`) must exist;
- the layering that docs/architecture.md describes holds: connectors/ and admin/ never import
  each other, backend/ imports neither, only backend/broker.py imports pika and only
  backend/store.py imports pymongo or mongomock.
"""
from __future__ import annotations

import ast
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest

from backend import logs

ROOT = Path(__file__).resolve().parent.parent
CLIS = {
    # module -> module holding its click command `cli`
    "backend": "backend.cli",
    "connectors": "connectors.cli",
    "admin": "admin.cli",
    "demo": "demo.cli",
    "bench": "bench.cli",
    "fifoq": "fifoq.cli",
    "admin.deployment": "admin.deployment",  # `make compose`
}
# `fifoq ...` counts as a command where a command starts: at the start of a line or span, after
# `$ `, `;`, `&&`, `|` or `(` (elsewhere the word is the product's name)
CLI_RE = re.compile(r"(?:(?:^|[\s;&|(`/])python3?\s+-m\s+(" + "|".join(map(re.escape, CLIS)) + r")(?![\w.])"
                    r"|(?:^|[;&|(`]\s*|^\$\s+)(fifoq)(?=\s+-|\s+[a-z-]+(?:\s|$)|$))(.*)$")
MAKE_RE = re.compile(r"(?:^|[\s;&|(`])make\s+(.*)$")
SCRIPT_RE = re.compile(r"(?:^|[\s;&|(`])(scripts/[\w.-]+\.sh)\b(.*)$")
FENCE_RE = re.compile(r"^(\s*)```(.*)$")
INLINE_RE = re.compile(r"(`+)(.+?)\1", re.S)  # a backquoted span of the prose
PYMOD_RE = re.compile(r"(?:^|[\s;&|(`/])python3?\s+-m\s+([A-Za-z_][\w.]*)(.*)$")
VENV_BIN_RE = re.compile(r"(?:^|[\s;&|(`])\.venv/bin/([\w.+-]+)")
# `fifoq status` runs as written (the console script); `backend status` does not
BARE_CLI_RE = re.compile(r"^(" + "|".join(re.escape(c) for c in CLIS if c != "fifoq") + r")\s+([\w-]+)")
BENCH_ARGS_RE = re.compile(r"\bBENCH_ARGS=(\"[^\"]*\"|'[^']*'|[^\s`\"';)]+)")
# a commit hash as people write one: an abbreviation (7-12) or a full hash (40), or any hex run
# right after the word "commit"; pure digits (1000000) are numbers, not hashes
HASH_RE = re.compile(r"(?<![\w/.#-])([0-9a-f]{7,40})(?![\w/-])")
AFTER_COMMIT_RE = re.compile(r"\bcommits?\W{1,3}$", re.I)
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


def inline_lines(path: Path) -> list[Line]:
    """Backquoted spans of the prose (outside fenced blocks), each as a one-line command with
    usage notation removed: `[optional parts]` and `...` (so `python -m connectors run [ACTOR ...]`
    is checked as `python -m connectors run`)."""
    text = path.read_text(encoding="utf-8").splitlines()
    blanked, in_block = [], False
    for raw in text:  # fenced lines blanked, so that offsets keep their line numbers
        if FENCE_RE.match(raw):
            in_block = not in_block
            blanked.append("")
            continue
        blanked.append("" if in_block else raw)
    joined = "\n".join(blanked)
    out = []
    for m in INLINE_RE.finditer(joined):
        span = " ".join(m.group(2).split())
        span = re.sub(r"\[[^\[\]]*\]", "", span)
        span = re.sub(r"(?<!\S)\.\.\.(?!\S)", "", span)
        out.append(Line(rel(path), joined.count("\n", 0, m.start()) + 1, span.strip()))
    return out


def command_lines(path: Path) -> list[Line]:
    """Every place of a document that may show a command: fenced lines, then inline spans."""
    return code_lines(path) + inline_lines(path)


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
        for line in command_lines(path):
            m = CLI_RE.search(line.text)
            if m:
                out.append(CliCommand(line, m.group(1) or m.group(2), tuple(shell_words(m.group(3)))))
    return out


def make_commands() -> list[tuple[Line, list[str]]]:
    out = []
    for path in doc_files():
        for line in command_lines(path):
            m = MAKE_RE.search(line.text)
            if m:
                targets = [w for w in shell_words(m.group(1)) if "=" not in w and not w.startswith("-")]
                out.append((line, targets))
    return out


class _Parsed(BaseException):
    """Raised instead of running a command: the command line was accepted."""

    def __init__(self, ctx: click.Context) -> None:
        super().__init__()
        self.ctx = ctx


def project_command(module: str) -> click.Command:
    return importlib.import_module(CLIS[module]).cli  # type: ignore[no-any-return]


def parse_with_project_parser(module: str, args: Sequence[str], monkeypatch: pytest.MonkeyPatch) -> click.Context:
    """Run the CLI until its command (not a group) is about to run; fail with click's message."""
    real = click.Command.invoke

    def invoke(self: click.Command, ctx: click.Context) -> Any:
        if isinstance(self, click.Group):
            return real(self, ctx)  # the group's callback, then the resolution of its subcommand
        raise _Parsed(ctx)

    with monkeypatch.context() as m:
        m.setattr(click.Command, "invoke", invoke)
        m.setattr(logs, "configure", lambda *a, **k: None)  # a group's set-up: not this test's business
        try:
            project_command(module).main(list(args), prog_name=module, standalone_mode=False)
        except _Parsed as parsed:
            return parsed.ctx
        except click.ClickException as exc:
            raise AssertionError(f"refused: {exc.format_message()}") from None
    raise AssertionError("accepted, but no command would run")


def check_bench_names(ctx: click.Context) -> None:
    """bench's command checks its benchmark names when it runs, where the parse above stops."""
    from bench.cli import BENCHMARKS

    unknown = [w for w in ctx.params["which"] if w not in BENCHMARKS]
    if unknown:
        raise AssertionError(f"unknown benchmark(s) {unknown}: bench has {sorted(BENCHMARKS)}")


def subcommands(module: str) -> set[str]:
    """Words that may follow `python -m MODULE`: its subcommands, or bench's benchmark names."""
    if module == "bench":
        from bench.cli import BENCHMARKS

        return set(BENCHMARKS)
    command = project_command(module)
    if isinstance(command, click.Group):
        return set(command.list_commands(click.Context(command)))
    return set()


# -- the tests --------------------------------------------------------------------------------
def test_docs_show_commands_of_every_cli() -> None:
    """The extraction itself works: the docs do show commands of each command line and make."""
    modules = {c.module for c in cli_commands()}
    assert {"backend", "connectors", "admin", "demo"} <= modules, modules
    assert any(targets for _, targets in make_commands())


def test_docs_cli_commands_are_accepted_by_the_project_parsers(monkeypatch: pytest.MonkeyPatch) -> None:
    failures = []
    for cmd in cli_commands():
        if "-h" in cmd.args or "--help" in cmd.args:
            continue
        if not cmd.args and cmd.module not in ("demo", "bench"):
            continue  # `python -m backend` named as a whole: its --help is checked below
        try:
            ctx = parse_with_project_parser(cmd.module, cmd.args, monkeypatch)
            if cmd.module == "bench":
                check_bench_names(ctx)
        except AssertionError as exc:
            failures.append(f"{cmd.line}\n    {cmd.module} {shlex.join(cmd.args)}: {exc}")
    assert not failures, "commands in the docs that the project's parsers refuse:\n" + "\n".join(failures)


def test_docs_cli_subcommands_have_a_help_that_runs() -> None:
    seen: dict[tuple[str, ...], Line] = {}
    for cmd in cli_commands():
        known = subcommands(cmd.module) if cmd.module != "bench" else set()
        words = [a for a in cmd.args[:2] if not a.startswith("-")]
        head = words[:1] if words[:1] and words[0] in known else []
        if cmd.module == "fifoq" and head and head[0] in ("connectors", "admin", "demo") and words[1:]:
            head = words[:2]  # `fifoq admin serve`: the sub-subcommand's help
        seen.setdefault((cmd.module, *head), cmd.line)
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def run(key: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", *key, "--help"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)

    keys = sorted(seen)
    with ThreadPoolExecutor(max_workers=4) as pool:  # each is a Python start-up: run a few at once
        procs = list(pool.map(run, keys))
    failures = [f"{seen[key]}: `python -m {' '.join(key)} --help` exit {proc.returncode}: {proc.stderr[-300:]}"
                for key, proc in zip(keys, procs, strict=True) if proc.returncode != 0 or "usage:" not in proc.stdout.lower()]
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
        for line in command_lines(path):
            for m in SCRIPT_RE.finditer(line.text):
                script = ROOT / m.group(1)
                if not script.is_file() or not os.access(script, os.X_OK):
                    failures.append(f"{line}: {m.group(1)} is not an executable file")
                    continue
                words = shell_words(m.group(2))
                text = script.read_text(encoding="utf-8")
                # a script that dispatches on its first argument (`case "${1:-}" in`) has subcommands
                has_cases = re.search(r'^\s*case\s+"?\$\{?1\b', text, re.M) is not None
                if (words and has_cases and not words[0].startswith("-")
                        and not re.search(rf"^\s*{re.escape(words[0])}\)", text, re.M)):
                    failures.append(f"{line}: {m.group(1)} has no subcommand {words[0]!r}")
    assert not failures, "\n".join(failures)


def bench_args_values() -> list[tuple[str, list[str]]]:
    """Every `BENCH_ARGS=VALUE` of the docs (fenced or not) and of the Makefile, as bench's argv."""
    out = []
    for path in doc_files() + [ROOT / "Makefile"]:
        for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in BENCH_ARGS_RE.finditer(raw):
                value = shlex.split(m.group(1))
                out.append((f"{rel(path)}:{n}: {raw.strip()}", shlex.split(value[0]) if value else []))
    return out


def test_docs_inline_commands_and_bench_args_are_extracted() -> None:
    """The extraction itself works: the prose does show inline commands and BENCH_ARGS values."""
    inline = [line for path in doc_files() for line in inline_lines(path)]
    assert any(CLI_RE.search(line.text) for line in inline)
    assert any(MAKE_RE.search(line.text) for line in inline)
    assert bench_args_values()


def test_docs_bench_args_values_are_accepted_by_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    failures = []
    for where, args in bench_args_values():
        try:
            check_bench_names(parse_with_project_parser("bench", args, monkeypatch))
        except AssertionError as exc:
            failures.append(f"{where}\n    python -m bench {shlex.join(args)}: {exc}")
    assert not failures, "BENCH_ARGS values that bench refuses:\n" + "\n".join(failures)


def test_docs_inline_subcommands_are_written_as_runnable_commands() -> None:
    """`bench queues console --actors 1000` in the prose does not run: `python -m bench ...` does."""
    known = {module: subcommands(module) for module in CLIS}
    failures = []
    for path in doc_files():
        for line in inline_lines(path):
            m = BARE_CLI_RE.match(line.text)
            if m and m.group(2) in known[m.group(1)]:
                failures.append(f"{line}: write it as `python -m {line.text}`")
    assert not failures, "\n".join(failures)


def pytest_ids_missing(args: Sequence[str]) -> list[str]:
    """The files and `file::test` ids of a pytest command line that do not exist."""
    missing = []
    for word in args:
        if word.startswith("-") or not ("/" in word or "::" in word or word.endswith(".py")):
            continue
        file_part, *names = word.split("::")
        target = ROOT / file_part
        if not target.exists():
            missing.append(word)
        elif names and target.is_file():
            text = target.read_text(encoding="utf-8")
            if not re.search(rf"^\s*(?:async\s+)?(?:def|class)\s+{re.escape(names[-1].split('[')[0])}\b", text, re.M):
                missing.append(word)
    return missing


def test_docs_other_python_modules_and_venv_programs_exist() -> None:
    import importlib.util

    bins = {Path(sys.executable).parent, ROOT / ".venv" / "bin"}
    failures = []
    for path in doc_files():
        for line in command_lines(path):
            for m in VENV_BIN_RE.finditer(line.text):
                if not any((b / m.group(1)).exists() for b in bins):
                    failures.append(f"{line}: .venv/bin/{m.group(1)} is not installed by `make venv`")
            m = PYMOD_RE.search(line.text)
            if not m or m.group(1) in CLIS:
                continue
            module = m.group(1)
            if importlib.util.find_spec(module) is None:
                failures.append(f"{line}: python -m {module}: no such module")
            elif module == "pytest":
                failures += [f"{line}: pytest {w}: no such test file or test" for w in pytest_ids_missing(shell_words(m.group(2)))]
    assert not failures, "\n".join(failures)


COMPOSE_RE = re.compile(r"(?:^|[\s;&|(`])docker\s+compose\s+")
COMPOSE_SUBCOMMANDS = {"attach", "build", "config", "cp", "create", "down", "events", "exec", "images", "kill",
                       "logs", "ls", "pause", "port", "ps", "pull", "push", "restart", "rm", "run", "scale", "start",
                       "stats", "stop", "top", "unpause", "up", "version", "wait", "watch"}
COMPOSE_GLOBAL_VALUED = {"-f", "--file", "-p", "--project-name", "--profile", "--env-file", "--project-directory",
                         "--ansi", "--parallel"}
COMPOSE_VALUED = {"--tail", "-e", "--env", "-u", "--user", "-w", "--workdir", "--index", "-t", "--timeout",
                  "--scale", "--name", "--entrypoint", "--publish", "-v", "--volume", "-l", "--label", "--since",
                  "--until", "--signal", "-s", "--pull", "--wait-timeout"}
COMPOSE_NAMING_SERVICES = {"build", "create", "exec", "kill", "logs", "pause", "port", "ps", "pull", "push", "restart",
                           "rm", "run", "start", "stop", "top", "unpause", "up", "wait"}


def compose_services() -> set[str]:
    import yaml  # the test extra's pyyaml: missing, this fails rather than skips

    names: set[str] = set()
    for f in sorted(ROOT.glob("docker-compose*.yml")):
        names |= set((yaml.safe_load(f.read_text(encoding="utf-8")) or {}).get("services") or {})
    return names


def compose_problems(words: Sequence[str], services: set[str]) -> list[str]:
    """What is wrong with one `docker compose WORDS...` command line (empty when nothing)."""
    i = 0
    while i < len(words) and words[i].startswith("-"):
        i += 2 if words[i] in COMPOSE_GLOBAL_VALUED else 1
    if i >= len(words):
        return []
    sub, rest = words[i], words[i + 1:]
    if sub not in COMPOSE_SUBCOMMANDS:
        return [f"docker compose has no subcommand {sub!r}"]
    if sub not in COMPOSE_NAMING_SERVICES:
        return []
    named, j = [], 0
    while j < len(rest):
        word = rest[j]
        if word.startswith("-"):
            j += 2 if word in COMPOSE_VALUED else 1
            continue
        named.append(word)
        if sub in ("exec", "run"):
            break  # then the command to run in it
        j += 1
    return [f"no service {name!r} in the compose files" for name in named
            if not name.startswith("$") and name not in services]


def test_docs_compose_commands_name_real_services() -> None:
    services = compose_services()
    assert {"admin", "mongo1", "rabbitmq1"} <= services, services
    failures = []
    for path in doc_files():
        for line in command_lines(path):
            for m in COMPOSE_RE.finditer(line.text):
                failures += [f"{line}: {p}" for p in compose_problems(shell_words(line.text[m.end():]), services)]
    assert not failures, "\n".join(failures)


def cited_hashes() -> list[tuple[str, str]]:
    """(where, hash) for every token of the docs that looks like a commit reference."""
    out = []
    for path in doc_files():
        for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in HASH_RE.finditer(raw):
                token = m.group(1)
                if token.isdigit() or not re.search(r"\d", token):
                    continue
                if len(token) <= 12 or len(token) == 40 or AFTER_COMMIT_RE.search(raw[:m.start()]):
                    out.append((f"{rel(path)}:{n}", token))
    return out


def test_docs_cited_commits_exist_in_the_repository() -> None:
    """A commit cited as evidence must be one a reader can check out: `git cat-file -e HASH^{commit}`.
    A clean clone is a git checkout, so no skip: outside one, this fails."""
    git = shutil.which("git")
    assert git, "git is not installed"
    inside = subprocess.run([git, "rev-parse", "--is-inside-work-tree"], cwd=ROOT, capture_output=True, text=True)
    assert inside.returncode == 0 and inside.stdout.strip() == "true", f"{ROOT} is not a git checkout"
    failures = []
    for where, token in cited_hashes():
        proc = subprocess.run([git, "cat-file", "-e", f"{token}^{{commit}}"], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            failures.append(f"{where}: {token} is not a commit of this repository")
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


RUNBOOK_SECTIONS = {
    # heading of docs/operations.md -> commands the section must show
    "A blocked actor": ["python -m backend status", "python -m backend show", "python -m backend replay",
                        "python -m backend cancel", "python -m backend edit"],
    "A poisoned message": ["python -m backend show", "rabbitmqctl"],
    "A lost node": ["rabbitmqctl cluster_status", "rabbitmq-queues", "make cluster-up", "mongosh"],
    "A full disk or a memory alarm": ["rabbitmq-diagnostics alarms"],
    "Credential rotation": ["python -m admin provision", "--rotate"],
    "Backup and restore of the ledger": ["mongodump", "mongorestore", "replicaSet=rs0"],
}


def test_docs_operations_runbook_covers_the_incidents() -> None:
    """The runbook has a section per incident of the issue, each showing the commands it needs."""
    sections: dict[str, str] = {}
    current = None
    for raw in (ROOT / "docs" / "operations.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^##\s+(.*?)\s*$", raw)
        if m:
            current = m.group(1)
            sections[current] = ""
        elif current:
            sections[current] += raw + "\n"
    failures = []
    for heading, commands in RUNBOOK_SECTIONS.items():
        if heading not in sections:
            failures.append(f"docs/operations.md has no section '## {heading}'")
            continue
        body = " ".join(sections[heading].split())
        failures += [f"docs/operations.md '## {heading}' shows no `{c}`" for c in commands if c not in body]
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
