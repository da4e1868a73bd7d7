"""VBA macros in OLE documents, found with olevba.

Only OLE compound files reach here: a legacy Office document, or an OOXML
package's ``vbaProject.bin`` (or a renamed one) met while walking the zip.
olevba reads its whole input into memory, so the document is handed over as
bytes, and only up to ``InspectionLimits.max_office_bytes``.
"""

from __future__ import annotations

import logging
import warnings
from functools import cache
from typing import IO, Any

from streams.inspection._model import Code, Finding

# olevba logs every odd record it meets; those are not Sluice's events.
logging.getLogger("olevba").setLevel(logging.CRITICAL)


@cache
def _vba_parser() -> Any:
    """olevba's VBA_Parser, imported on first use without its import noise."""
    with warnings.catch_warnings():
        # oletools 0.60 builds its grammar with names pyparsing 3.3 deprecates.
        warnings.simplefilter("ignore", DeprecationWarning)
        from oletools.olevba import VBA_Parser
    return VBA_Parser


def office_findings(
    fileobj: IO[bytes], size: int, name: str, max_bytes: int
) -> list[Finding]:
    """Report a VBA project in an OLE document, failing closed."""
    if size > max_bytes:
        return [
            Finding(
                Code.INSPECTION_INCOMPLETE,
                f"OLE document of {size} bytes is over the {max_bytes}-byte "
                "limit for macro checks",
            )
        ]

    fileobj.seek(0)
    data = fileobj.read(max_bytes)
    parser = None
    try:
        parser = _vba_parser()(name or "document", data=data)
        has_macros = parser.detect_vba_macros()
    except Exception as exc:  # olevba raises many kinds on malformed input
        return [
            Finding(
                Code.INSPECTION_INCOMPLETE,
                f"OLE document could not be checked for macros: {exc}",
            )
        ]
    finally:
        if parser is not None:
            parser.close()

    if not has_macros:
        return []
    return [Finding(Code.OFFICE_MACROS, "VBA project present")]
