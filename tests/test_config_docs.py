"""Every environment variable the code and the set-up scripts read is documented, with its
default, in README.md (Configuration) and in .env.example, so that the two never drift again.

The variables are found in the source, not in a list kept by hand:
- Python (backend, admin, connectors, demo, bench): names read through `os.environ`,
  `os.getenv` or an `env` mapping (`env.get("X")`, `environ["X"]`), and every string literal
  that is a variable name of the project's families (AMQP_*, FIFOQ_*, ADMIN_*...), which covers
  the helpers that take the name as an argument (`_int(env, "ADMIN_PORT", ...)`, `num(...)`);
  an f-string such as f"PROVISION_CONNECTOR_{actor}_PASSWORD" is documented as
  PROVISION_CONNECTOR_<ACTOR>_PASSWORD.
- Shell (scripts/*.sh): `${NAME:-default}`, `${NAME-...}`, `${NAME:?...}`, `${NAME:=...}`.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("backend", "admin", "connectors", "demo", "bench")
FAMILIES = re.compile(r"^(AMQP|RABBITMQ|MONGODB|FIFOQ|ADMIN|DEMO|BENCH|PROVISION|LOG)_[A-Z0-9_]*[A-Z0-9]$")
NAME = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)+$")
SHELL_READ = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?[-?=]")
ENV_OBJECTS = {"env", "environ", "os.environ", "environment"}


def _python_reads(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and FAMILIES.match(node.value):
            found.add(node.value)
        elif isinstance(node, ast.JoinedStr):
            # f"PROVISION_CONNECTOR_{...}_PASSWORD": a family of variables, one per value
            parts = [v.value if isinstance(v, ast.Constant) else "<X>" for v in node.values]
            text = "".join(str(p) for p in parts)
            if FAMILIES.match(text.replace("<X>", "X")):
                found.add(text)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = ast.unparse(node.func)
            target = func.rsplit(".", 1)[0] if "." in func else ""
            name = node.args[0].value
            if not isinstance(name, str) or not NAME.match(name):
                continue
            if func in ("os.getenv", "getenv") or (func.endswith(".get") and target in ENV_OBJECTS):
                found.add(name)
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) in ENV_OBJECTS:
            key = node.slice
            if isinstance(key, ast.Constant) and isinstance(key.value, str) and NAME.match(key.value):
                found.add(key.value)
    return found


def code_variables() -> dict[str, set[str]]:
    """{variable: files reading it} for the Python packages and scripts/*.sh."""
    out: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in _python_reads(ast.parse(path.read_text(), str(path))):
                out.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    for path in sorted((ROOT / "scripts").glob("*.sh")):
        for name in SHELL_READ.findall(path.read_text()):
            out.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return out


def _documented_as(name: str) -> str:
    """How a variable family appears in the docs: PROVISION_CONNECTOR_<ACTOR>_PASSWORD."""
    return name.replace("<X>", "<ACTOR>")


def test_config_docs_scanner_finds_the_known_readers() -> None:
    """The scanner itself: variables read in each of the ways the code uses."""
    found = code_variables()
    expected = {
        "AMQP_URL", "AMQP_CA_FILE", "AMQP_KEY_FILE", "FIFOQ_DECLARE", "FIFOQ_VHOST",  # env.get, a tuple of names
        "ADMIN_LOGIN_LIMITS", "ADMIN_PORT", "FIFOQ_GAP_GRACE",                        # helpers taking the name
        "FIFOQ_LEDGER_KEY_FILE", "BENCH_TAG", "LOG_LEVEL",                            # constants, os.environ.get
        "PROVISION_CONNECTOR_<X>_PASSWORD",                                           # an f-string family
        "CLUSTER_BOOT_TIMEOUT", "CERT_DAYS", "CERT_EXTRA_SANS", "TLS_AMQPS_PORT",     # shell ${VAR:-default}
    }
    assert expected <= set(found), sorted(expected - set(found))


def test_config_docs_readme_documents_every_variable_the_code_reads() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    missing = sorted(f"{name} (read by {', '.join(sorted(files))})" for name, files in code_variables().items()
                     if f"`{_documented_as(name)}`" not in section)
    assert not missing, "README.md's Configuration section lacks:\n" + "\n".join(missing)
    # and each documented row of the main table has a default column
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert len(cells) >= 3 and cells[1], f"no default for {cells[0]}"


def test_config_docs_env_example_lists_every_variable_the_code_reads() -> None:
    example = (ROOT / ".env.example").read_text()
    missing = []
    for name, files in sorted(code_variables().items()):
        pattern = re.escape(_documented_as(name))
        if "<X>" in name:  # a family: each member listed, or the family named in a comment
            members = name.replace("<X>", "[A-Z0-9_]+")
            found = re.search(rf"^{members}=", example, re.M) or re.search(pattern, example)
        else:
            # an assignment (NAME=default), or a commented one for what only the scripts read
            found = re.search(rf"^(# )?{pattern}=", example, re.M)
        if not found:
            missing.append(f"{name} (read by {', '.join(sorted(files))})")
    assert not missing, ".env.example lacks:\n" + "\n".join(missing)


def settings_groups() -> list[type]:
    """Every settings group of the project (subclasses of backend.settings.EnvSettings)."""
    import importlib

    from backend.settings import EnvSettings

    for module in ("admin.alerts", "admin.config", "admin.notify_settings", "admin.releases", "admin.server", "admin.throttle",
                   "backend.ledger_server", "bench.common", "demo.cli"):
        importlib.import_module(module)  # they define groups

    out, todo = [], list(EnvSettings.__subclasses__())
    while todo:
        group = todo.pop()
        out.append(group)
        todo.extend(group.__subclasses__())
    return out


def _shown(default: object) -> str:
    """A default as .env.example writes it."""
    if isinstance(default, bool):
        return str(int(default))
    if isinstance(default, tuple):
        return ",".join(str(v) for v in default)
    return str(getattr(default, "value", default))


# RABBITMQ_API_CA's default is True (the system's trust store), written as an empty value.
EMPTY_MEANS_DEFAULT = {"RABBITMQ_API_CA"}


def test_config_docs_settings_groups_are_all_found() -> None:
    names = {group.__name__ for group in settings_groups()}
    assert {"Settings", "LogSettings", "AdminConfig", "AlertRules", "ThrottleConfig", "ServerConfig",
            "ReleaseSettings", "LedgerClientSettings", "DemoSettings", "NotifySettings"} <= names, names


def test_config_docs_env_example_defaults_match_the_settings_defaults() -> None:
    """The value shown in .env.example is the default the code applies, for every setting of
    every group (a setting added with one line of code is checked here without more work)."""
    example = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", (ROOT / ".env.example").read_text(), re.M))
    failures, checked = [], 0
    for group in settings_groups():
        for name, field in group.model_fields.items():
            variable = str(field.validation_alias)
            if field.default is None or variable not in example:
                continue  # None: the entry point decides (LOG_LEVEL); not in the example: see the tests above
            shown, default = example[variable], _shown(field.default)
            checked += 1
            if variable in EMPTY_MEANS_DEFAULT and shown == "":
                continue
            if isinstance(field.default, (int, float)) and not isinstance(field.default, bool):
                same = shown.strip() != "" and float(shown) == float(field.default)
            else:
                same = shown == default
            if not same:
                failures.append(f"{variable}: .env.example shows {shown!r}, {group.__name__}.{name} defaults to {default!r}")
    assert checked >= 40, checked
    assert not failures, "\n".join(failures)
