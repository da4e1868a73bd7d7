"""Findings, limits and policies: the vocabulary of deep file checks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


class Code(StrEnum):
    """Stable finding codes; the strings are part of the event contract."""

    EXECUTABLE_CONTENT = "executable-content"
    OFFICE_MACROS = "office-macros"
    PDF_JAVASCRIPT = "pdf-javascript"
    PDF_LAUNCH_ACTION = "pdf-launch-action"
    ACTIVE_CONTENT = "active-content"
    ARCHIVE_TOO_DEEP = "archive-too-deep"
    ARCHIVE_BOMB = "archive-bomb"
    ARCHIVE_ENCRYPTED = "archive-encrypted"
    ARCHIVE_PATH_ESCAPE = "archive-path-escape"
    ARCHIVE_CORRUPT = "archive-corrupt"
    POLYGLOT = "polyglot"
    TYPE_MISMATCH = "type-mismatch"
    INSPECTION_INCOMPLETE = "inspection-incomplete"


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a deep check found: a stable code and a human detail."""

    code: Code
    detail: str


@dataclass(frozen=True, slots=True)
class InspectionLimits:
    """Bounds on the work one inspection may do; a tenant policy may pass its own.

    - ``max_depth`` (8): archive layers that may be opened one inside another
      (a ``.tar.gz`` is two, an OOXML document one). An archive nested deeper
      is ``archive-too-deep`` and is not opened.
    - ``max_ratio`` (100.0): expanded bytes per compressed byte, for one entry
      and for a whole archive, above which it is an ``archive-bomb``.
    - ``ratio_floor_bytes`` (1 MiB): the ratio rule applies only once this many
      bytes have expanded, so small, very repetitive files are not bombs.
    - ``max_expanded_bytes`` (1 GiB): bytes decompressed across every archive
      of one file, counted from headers and again while streaming; also the
      most a PDF's deflated streams may inflate to (and read) while scanned.
    - ``max_entries`` (10,000): archive entries across every archive of one
      file.
    - ``max_office_bytes`` (64 MiB): largest OLE document handed to olevba,
      which holds it in memory; larger ones are ``inspection-incomplete``.
    - ``max_scan_bytes`` (512 MiB, clamd's default stream limit here): bytes of
      one file read by the PDF and markup pattern scans; past that the scan
      stops with ``inspection-incomplete``.
    """

    max_depth: int = 8
    max_ratio: float = 100.0
    ratio_floor_bytes: int = 1 * MIB
    max_expanded_bytes: int = 1 * GIB
    max_entries: int = 10_000
    max_office_bytes: int = 64 * MIB
    max_scan_bytes: int = 512 * MIB

    def __post_init__(self) -> None:
        # A zero or negative bound would silently disable a check.
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not value > 0:
                raise ValueError(f"{field.name} must be positive, got {value!r}")


class Action(StrEnum):
    """What to do with a file, weakest first."""

    ALLOW = "allow"
    QUARANTINE = "quarantine"
    REJECT = "reject"

    @property
    def rank(self) -> int:
        """Strength of the action: reject > quarantine > allow."""
        return _RANK[self]


_RANK = {Action.ALLOW: 0, Action.QUARANTINE: 1, Action.REJECT: 2}


class Policy(Mapping[str, Action]):
    """A frozen mapping from finding code to action.

    Codes the mapping does not name get ``fallback`` (quarantine unless told
    otherwise), so a code added later is held rather than let through.
    """

    __slots__ = ("_actions", "_fallback")
    _actions: dict[str, Action]
    _fallback: Action

    def __init__(
        self,
        actions: Mapping[str, Action | str],
        *,
        fallback: Action | str = Action.QUARANTINE,
    ) -> None:
        known = {code.value for code in Code}
        resolved: dict[str, Action] = {}
        for code, action in actions.items():
            # A misspelt code would otherwise be a rule that never applies.
            if code not in known:
                raise ValueError(f"unknown finding code {code!r}")
            resolved[code] = Action(action)
        object.__setattr__(self, "_actions", resolved)
        object.__setattr__(self, "_fallback", Action(fallback))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Policy is immutable; use merged()")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Policy is immutable")

    @property
    def fallback(self) -> Action:
        """The action for codes the policy does not name."""
        return self._fallback

    def action_for(self, code: str) -> Action:
        """The action this policy takes for one finding code."""
        return self._actions.get(code, self._fallback)

    def merged(self, overrides: Mapping[str, Action | str]) -> Policy:
        """A copy of this policy with some codes mapped differently."""
        return Policy({**self._actions, **overrides}, fallback=self._fallback)

    def __getitem__(self, code: str) -> Action:
        return self._actions[code]

    def __iter__(self) -> Iterator[str]:
        return iter(self._actions)

    def __len__(self) -> int:
        return len(self._actions)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Policy):
            return NotImplemented
        return self._actions == other._actions and self._fallback == other._fallback

    def __hash__(self) -> int:
        return hash((frozenset(self._actions.items()), self._fallback))

    def __repr__(self) -> str:
        return f"Policy({self._actions!r}, fallback={self._fallback.value!r})"


# Every finding is held for review by default; a tenant relaxes or hardens
# codes with DEFAULT_POLICY.merged({...}).
DEFAULT_POLICY = Policy({code.value: Action.QUARANTINE for code in Code})


def decide(findings: Iterable[Finding], policy: Policy = DEFAULT_POLICY) -> Action:
    """The strongest action the policy takes for any of the findings."""
    action = Action.ALLOW
    for finding in findings:
        candidate = policy.action_for(finding.code)
        if candidate.rank > action.rank:
            action = candidate
    return action
