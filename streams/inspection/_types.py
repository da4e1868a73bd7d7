"""What an extension allows: the libmagic type table of the type-check agent.

The table and the rules are the ones ``agents/typecheck.py`` applies
(``findings_for``), so the agent can switch to :func:`type_findings` and keep
its verdicts; the one addition is the PE type newer libmagic reports.
"""

from __future__ import annotations

from streams.inspection._model import Code, Finding

EXECUTABLE_TYPES = frozenset(
    {
        "application/x-dosexec",
        # What libmagic 5.44 (Debian 12) reports for PE files; the agent's
        # table predates it.
        "application/vnd.microsoft.portable-executable",
        "application/x-executable",
        "application/x-pie-executable",
        "application/x-sharedlib",
        "application/x-mach-binary",
        "application/x-elf",
        "text/x-shellscript",
        "text/x-script.python",
        "text/x-perl",
    }
)
EXECUTABLE_EXTENSIONS = frozenset({"exe", "dll", "so", "bin", "sh", "py", "pl", "elf"})

TEXT_TYPES = ("text/plain", "text/csv", "application/csv")

# Extension -> MIME types its content may have. Unlisted extensions are not
# checked for mismatch; executables are always checked.
ALLOWED_TYPES: dict[str, tuple[str, ...]] = {
    "csv": TEXT_TYPES,
    "tsv": (*TEXT_TYPES, "text/tab-separated-values"),
    "txt": ("text/plain",),
    "json": ("application/json", "text/plain"),
    "jsonl": ("application/json", "application/x-ndjson", "text/plain"),
    "ndjson": ("application/json", "application/x-ndjson", "text/plain"),
    "parquet": (
        "application/vnd.apache.parquet",
        "application/x-parquet",
        "application/octet-stream",
    ),
    "pdf": ("application/pdf",),
    "png": ("image/png",),
    "jpg": ("image/jpeg",),
    "jpeg": ("image/jpeg",),
    "gif": ("image/gif",),
    "zip": ("application/zip",),
    "gz": ("application/gzip", "application/x-gzip"),
}


def extension(filename: str) -> str:
    """The lowercased last extension of a file name, or '' if it has none."""
    _, dot, ext = filename.rpartition(".")
    return ext.lower() if dot else ""


def says_executable(filename: str) -> bool:
    """Whether the name's extension admits to executable content."""
    return extension(filename) in EXECUTABLE_EXTENSIONS


def type_findings(filename: str, mime: str) -> list[Finding]:
    """Findings from the libmagic type alone, as the type-check agent rules."""
    ext = extension(filename)
    findings = []
    if mime in EXECUTABLE_TYPES and ext not in EXECUTABLE_EXTENSIONS:
        findings.append(Finding(Code.EXECUTABLE_CONTENT, f"libmagic reports {mime}"))
    allowed = ALLOWED_TYPES.get(ext)
    if allowed is not None and mime not in allowed:
        findings.append(
            Finding(Code.TYPE_MISMATCH, f"{mime} is not a type .{ext} allows")
        )
    return findings
