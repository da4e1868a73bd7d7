"""Every role against every client, operator and admin command of ``sluice``.

Each command runs through ``streams.cli.main`` with a single-role ``--token``
against the running stack, its stdout and stderr captured: the same code
path as the ``sluice`` executable without a Python start-up per case (the
matrix is about a hundred runs, on small shared machines). An allowed role
gets exit 0; any other gets exit 4 (403) and a refusal on stderr. A few runs
of the real executable close the module.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.cli import EXIT_FORBIDDEN, EXIT_OK, main
from streams.config import Settings
from streams.permissions import CLI_COMMANDS, MATRIX, Action
from streams.service_keys import ServiceKeyStore

from .conftest import ROLES, AccessWorld, run_sluice


@dataclass(frozen=True)
class Setup:
    """What a command's arguments may refer to, made before any run."""

    world: AccessWorld
    folder: Path
    keys: ServiceKeyStore

    def file(self, role: str) -> str:
        path = self.folder / f"upload-{role}.txt"
        path.write_bytes(f"uploaded by the {role} token\n".encode())
        return str(path)

    def key(self) -> str:
        return self.keys.create(self.world.tenant, ["uploader"]).key.key_id


@dataclass(frozen=True)
class Command:
    name: str  # as in permissions.CLI_COMMANDS
    action: Action
    argv: Callable[[Setup, str], list[str]]
    label: str = ""

    @property
    def id(self) -> str:
        return self.label or self.name.replace(" ", "-")


COMMANDS = (
    Command("upload", Action.UPLOAD_CREATE, lambda s, role: ["upload", s.file(role)]),
    Command(
        "status",
        Action.UPLOAD_READ,
        lambda s, role: ["status", s.world.upload_id, "--json"],
    ),
    Command(
        "query",
        Action.RESULTS_READ,
        lambda s, role: ["query", "SELECT count() FROM sluice.file_results FINAL"],
        "query-results",
    ),
    Command(
        "query",
        Action.DATASETS_READ,
        lambda s, role: [
            "query",
            f"SELECT count() FROM datasets.{s.world.tenant}__data",
        ],
        "query-datasets",
    ),
    Command(
        "query",
        Action.AUDIT_READ,
        lambda s, role: ["query", "SELECT count() FROM sluice.audit_log"],
        "query-audit",
    ),
    Command(
        "query",
        Action.DEADLETTERS_READ,
        lambda s, role: ["query", "SELECT count() FROM sluice.dead_letters"],
        "query-dead-letters",
    ),
    Command("dlq list", Action.DEADLETTERS_READ, lambda s, role: ["dlq", "list"]),
    Command(
        "dlq show",
        Action.DEADLETTERS_READ,
        lambda s, role: ["dlq", "show", s.world.dead_letter],
    ),
    Command(
        "staging sweep",
        Action.STAGING_SWEEP,
        # Nothing is that old: the sweep runs for real and removes nothing.
        lambda s, role: ["staging", "sweep", "--older-than", "1e9"],
    ),
    Command(
        "dlq replay",
        Action.DEADLETTERS_REPLAY,
        lambda s, role: ["dlq", "replay", "no-such-letter"],
    ),
    Command(
        "quarantine list",
        Action.QUARANTINE_READ,
        lambda s, role: ["quarantine", "list", "--tenant", s.world.tenant],
    ),
    Command(
        "quarantine release",
        Action.QUARANTINE_RELEASE,
        lambda s, role: [
            "quarantine",
            "release",
            s.world.quarantined[2],
            "--tenant",
            s.world.tenant,
        ],
    ),
    Command(
        "quarantine delete",
        Action.QUARANTINE_DELETE,
        lambda s, role: [
            "quarantine",
            "delete",
            s.world.quarantined[3],
            "--tenant",
            s.world.tenant,
        ],
    ),
    Command("topics list", Action.TOPICS_READ, lambda s, role: ["topics", "list"]),
    Command("topics apply", Action.TOPICS_APPLY, lambda s, role: ["topics", "apply"]),
    Command("health", Action.HEALTH_READ, lambda s, role: ["health"]),
    Command("tenants list", Action.TENANTS_READ, lambda s, role: ["tenants", "list"]),
    Command("keys list", Action.KEYS_READ, lambda s, role: ["keys", "list"]),
    Command(
        "keys create",
        Action.KEYS_CREATE,
        lambda s, role: [
            "keys",
            "create",
            "--tenant",
            s.world.tenant,
            "--role",
            "reader",
        ],
    ),
    Command(
        "keys revoke", Action.KEYS_REVOKE, lambda s, role: ["keys", "revoke", s.key()]
    ),
    Command(
        "keys rotate",
        Action.KEYS_ROTATE,
        lambda s, role: ["keys", "rotate", s.key(), "--grace", "60"],
    ),
)


def test_every_command_has_a_case() -> None:
    assert {c.name for c in COMMANDS} == set(CLI_COMMANDS)
    for command in COMMANDS:
        if command.name != "query":
            assert command.action is CLI_COMMANDS[command.name]


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str


def run_cli(token: str, *argv: str) -> Run:
    """``sluice --token TOKEN ARGV...`` in this process, output captured."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        code = main(["--token", token, *argv])
    return Run(code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture(scope="module")
def setup(
    access_world: AccessWorld,
    settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Setup:
    return Setup(
        access_world,
        tmp_path_factory.mktemp("cli-access"),
        ServiceKeyStore.from_settings(settings),
    )


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("command", COMMANDS, ids=[c.id for c in COMMANDS])
def test_role_runs_command(setup: Setup, command: Command, role: str) -> None:
    done = run_cli(setup.world.tokens[role], *command.argv(setup, role))
    report = f"exit {done.code}\nstdout: {done.stdout}\nstderr: {done.stderr}"

    if role in MATRIX[command.action].roles:
        assert done.code == EXIT_OK, report
    else:
        assert done.code == EXIT_FORBIDDEN, report
        assert "(403)" in done.stderr or "not permitted" in done.stderr, report


@pytest.mark.parametrize(
    ("role", "argv", "code"),
    [
        ("operator", ["dlq", "list", "--json"], EXIT_OK),
        ("uploader", ["dlq", "list"], EXIT_FORBIDDEN),
        ("operator", ["topics", "list"], EXIT_OK),
        ("reader", ["topics", "apply"], EXIT_FORBIDDEN),
        ("admin", ["keys", "list", "--json"], EXIT_OK),
    ],
)
def test_the_executable_exits_the_same(
    access_world: AccessWorld, role: str, argv: list[str], code: int
) -> None:
    done = run_sluice(access_world.tokens[role], *argv)

    assert done.returncode == code, done.stderr


def test_no_token_is_exit_2_and_a_bad_one_exit_3() -> None:
    missing = run_sluice(None, "dlq", "list")
    forged = run_sluice("not-a-token", "dlq", "list")
    forged_local = run_sluice("not-a-token", "topics", "list")

    assert missing.returncode == 2, missing.stderr
    assert forged.returncode == 3, forged.stderr
    assert forged_local.returncode == 3, forged_local.stderr
