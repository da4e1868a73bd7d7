"""Tests for the deep file checks, on real samples built from each format.

Every sample is the real thing: executables from their header layouts (or a
binary of this machine), an OLE VBA project written sector by sector after
MS-CFB and MS-OVBA (olevba extracts its source), PDFs with objects and a
cross-reference table, archives from zipfile, tarfile and gzip or written
record by record, a ZipCrypto archive Python's zipfile decrypts.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import shutil
import struct
import subprocess
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path

import magic
import pytest

import streams.inspection as inspection
from streams.inspection import (
    ALLOWED_TYPES,
    DEFAULT_POLICY,
    Action,
    Code,
    Finding,
    InspectionLimits,
    Policy,
    decide,
    inspect_file,
    type_findings,
)

DETECT = "detect"  # ask libmagic, as the type-check agent does
MIB = 1024 * 1024

CLAMAV_TESTFILES = Path("/usr/share/clamav-testfiles")
DEBIAN_LOGO = Path("/usr/share/pixmaps/debian-logo.png")
MIME_SPEC_PDF = Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf")


def check(
    path: Path,
    filename: str | None = None,
    mime: str | None = DETECT,
    limits: InspectionLimits | None = None,
) -> set[str]:
    """Inspect a file and return its finding codes, each at most once."""
    if mime == DETECT:
        mime = magic.from_file(str(path), mime=True)
    found = inspect_file(
        path, filename or path.name, mime, limits or InspectionLimits()
    )
    codes = [finding.code.value for finding in found]
    assert len(codes) == len(set(codes)), found
    assert all(isinstance(finding, Finding) and finding.detail for finding in found)
    return set(codes)


def details(path: Path, mime: str | None = None) -> dict[str, str]:
    """Finding details by code."""
    return {f.code.value: f.detail for f in inspect_file(path, path.name, mime)}


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- executables, from their header layouts -------------------------------


def pe32() -> bytes:
    """A minimal PE32 console program (mov eax, 0; ret) per the PE/COFF spec."""
    dos = bytearray(0x80)
    struct.pack_into("<2s8H", dos, 0, b"MZ", 0x90, 3, 0, 4, 0, 0xFFFF, 0, 0xB8)
    struct.pack_into("<H", dos, 0x18, 0x40)  # e_lfarlc
    struct.pack_into("<I", dos, 0x3C, 0x80)  # e_lfanew
    stub = b"\x0e\x1f\xba\x0e\x00\xb4\x09\xcd\x21\xb8\x01\x4c\xcd\x21"
    dos[0x40 : 0x40 + len(stub)] = stub
    message = b"This program cannot be run in DOS mode.\r\r\n$"
    dos[0x4E : 0x4E + len(message)] = message

    coff = struct.pack("<4sHHIIIHH", b"PE\x00\x00", 0x014C, 1, 0, 0, 0, 0xE0, 0x0102)
    optional = struct.pack(
        "<HBBIIIIIIIIIHHHHHHIIIIHHIIIIII",
        0x10B,  # PE32
        14,
        0,
        0x200,  # SizeOfCode
        0,
        0,
        0x1000,  # AddressOfEntryPoint
        0x1000,
        0x2000,
        0x400000,  # ImageBase
        0x1000,  # SectionAlignment
        0x200,  # FileAlignment
        6,
        0,
        0,
        0,
        6,
        0,
        0,
        0x2000,  # SizeOfImage
        0x200,  # SizeOfHeaders
        0,
        3,  # console subsystem
        0x8140,
        0x100000,
        0x1000,
        0x100000,
        0x1000,
        0,
        16,
    ) + bytes(16 * 8)
    section = struct.pack(
        "<8sIIIIIIHHI", b".text", 6, 0x1000, 0x200, 0x200, 0, 0, 0, 0, 0x60000020
    )
    headers = bytes(dos) + coff + optional + section
    code = b"\xb8\x00\x00\x00\x00\xc3"
    return headers.ljust(0x200, b"\x00") + code.ljust(0x200, b"\x00")


def macho_thin(order: str, bits: int) -> bytes:
    """A Mach-O MH_EXECUTE header with one __PAGEZERO segment command."""
    if bits == 64:
        cpu = 0x01000007 if order == "<" else 0x01000012  # x86_64, ppc64
        header = struct.pack(order + "IiiIIIII", 0xFEEDFACF, cpu, 3, 2, 1, 72, 0, 0)
        command = struct.pack(order + "II16s", 0x19, 72, b"__PAGEZERO")
        command += struct.pack(order + "4Q2i2I", 0, 1 << 32, 0, 0, 0, 0, 0, 0)
    else:
        cpu = 7 if order == "<" else 18  # i386, ppc
        header = struct.pack(order + "IiiIIII", 0xFEEDFACE, cpu, 3, 2, 1, 56, 0)
        command = struct.pack(order + "II16s", 0x1, 56, b"__PAGEZERO")
        command += struct.pack(order + "4I2i2I", 0, 0x1000, 0, 0, 0, 0, 0, 0)
    return header + command


def macho_fat(magic_number: int, order: str) -> bytes:
    """A universal binary holding an x86_64 and an arm64 slice."""
    slices = [(0x01000007, 3), (0x0100000C, 0)]
    wide = magic_number == 0xCAFEBABF
    out = bytearray(struct.pack(order + "II", magic_number, len(slices)))
    body = macho_thin("<", 64)
    for index, (cpu, subtype) in enumerate(slices):
        offset = 0x1000 * (index + 1)
        if wide:
            out += struct.pack(order + "iiQQII", cpu, subtype, offset, len(body), 12, 0)
        else:
            out += struct.pack(order + "iiIII", cpu, subtype, offset, len(body), 12)
    for index in range(len(slices)):
        out = out.ljust(0x1000 * (index + 1), b"\x00") + body
    return bytes(out)


def test_elf_binary_of_this_machine_under_a_data_name(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    shutil.copy("/bin/true", path)

    assert check(path, mime=None) == {"executable-content"}
    assert check(path) == {"executable-content", "type-mismatch"}
    assert details(path)["executable-content"] == "ELF executable"


def test_elf_under_an_executable_name_is_not_a_finding(tmp_path: Path) -> None:
    path = tmp_path / "true.bin"
    shutil.copy("/bin/true", path)

    assert check(path) == set()


def test_pe_built_from_its_header_layout(tmp_path: Path) -> None:
    path = write(tmp_path, "invoice.txt", pe32())

    # libmagic agrees the layout is a PE program.
    assert "executable" in magic.from_file(str(path)).lower()
    assert check(path, mime=None) == {"executable-content"}
    assert details(path)["executable-content"] == "PE executable"
    assert check(path, "setup.exe") == set()


@pytest.mark.skipif(
    not (CLAMAV_TESTFILES / "clam.exe").exists(), reason="clamav-testfiles absent"
)
def test_clamav_test_pe_renamed_to_a_pdf(tmp_path: Path) -> None:
    path = tmp_path / "report.pdf"
    shutil.copy(CLAMAV_TESTFILES / "clam.exe", path)

    assert check(path) == {"executable-content", "type-mismatch"}


def test_mz_without_a_pe_header_is_not_an_executable(tmp_path: Path) -> None:
    path = write(tmp_path, "notes.txt", b"MZ is where the story starts.\n" * 10)

    assert check(path, mime="text/plain") == set()


@pytest.mark.parametrize(
    ("order", "bits"), [(">", 32), ("<", 32), (">", 64), ("<", 64)]
)
def test_macho_thin_headers_in_both_byte_orders(
    tmp_path: Path, order: str, bits: int
) -> None:
    path = write(tmp_path, "photo.jpg", macho_thin(order, bits))

    assert magic.from_file(str(path), mime=True) == "application/x-mach-binary"
    assert check(path, mime=None) == {"executable-content"}


@pytest.mark.parametrize(
    ("magic_number", "order"),
    [(0xCAFEBABE, ">"), (0xCAFEBABF, ">"), (0xCAFEBABE, "<"), (0xCAFEBABF, "<")],
)
def test_macho_universal_binaries(
    tmp_path: Path, magic_number: int, order: str
) -> None:
    path = write(tmp_path, "tool.dat", macho_fat(magic_number, order))

    assert check(path, mime=None) == {"executable-content"}
    assert "universal" in details(path)["executable-content"]


def test_java_class_file_is_not_a_universal_binary(tmp_path: Path) -> None:
    # Same 0xCAFEBABE magic; the next word is the class version (52 = Java 8).
    header = struct.pack(">IHHH", 0xCAFEBABE, 0, 52, 1) + bytes(64)
    path = write(tmp_path, "Main.class", header)

    assert check(path, mime=None) == set()


def test_shebang_script_under_a_text_name(tmp_path: Path) -> None:
    script = b'#!/bin/sh\nrm -rf "$HOME/tmp"\n'
    path = write(tmp_path, "readme.txt", script)

    assert check(path) == {"executable-content", "type-mismatch"}
    assert check(path, mime=None) == {"executable-content"}
    assert check(write(tmp_path, "cleanup.sh", script)) == set()


def test_shebang_with_space_and_env(tmp_path: Path) -> None:
    path = write(tmp_path, "data.json", b"#! /usr/bin/env python3\nprint(1)\n")

    assert check(path, mime=None) == {"executable-content"}
    assert "/usr/bin/env python3" in details(path)["executable-content"]


# --- Office macros: an OLE VBA project after MS-CFB and MS-OVBA -----------

FREESECT = 0xFFFFFFFF
ENDOFCHAIN = 0xFFFFFFFE
FATSECT = 0xFFFFFFFD
NOSTREAM = 0xFFFFFFFF
DIRECTORY_ENTRY = "<64sHBB3I16sI2QIQ"
MACRO_SOURCE = (
    b'Attribute VB_Name = "Module1"\r\n'
    b"Sub AutoOpen()\r\n"
    b'    MsgBox "Sluice test macro"\r\n'
    b"End Sub\r\n"
)


def compound_file(tree: dict[str, object]) -> bytes:
    """An MS-CFB version 3 file; every stream is small, so in the mini stream."""
    entries: list[dict[str, object]] = []

    def add(name: str, node: object) -> int:
        index = len(entries)
        storage = isinstance(node, dict)
        entry: dict[str, object] = {
            "name": name,
            "type": 1 if storage else 2,
            "data": node if isinstance(node, bytes) else b"",
            "right": NOSTREAM,
            "child": NOSTREAM,
            "start": 0,
            "size": 0,
        }
        entries.append(entry)
        if isinstance(node, dict):
            # Siblings are ordered by name length, then upper-cased name.
            order = sorted(node, key=lambda key: (len(key), key.upper()))
            kids = [add(key, node[key]) for key in order]
            if kids:
                entry["child"] = kids[0]
            for left, right in zip(kids, kids[1:], strict=False):
                entries[left]["right"] = right
        return index

    add("Root Entry", tree)
    entries[0]["type"] = 5

    mini = bytearray()
    minifat: list[int] = []
    for entry in entries:
        data = entry["data"]
        assert isinstance(data, bytes)
        if entry["type"] != 2:
            continue
        assert 0 < len(data) < 4096
        start, count = len(mini) // 64, math.ceil(len(data) / 64)
        entry["start"], entry["size"] = start, len(data)
        minifat += [start + i + 1 for i in range(count - 1)] + [ENDOFCHAIN]
        mini += data.ljust(count * 64, b"\x00")

    n_dir = math.ceil(len(entries) / 4)
    n_minifat = math.ceil(len(minifat) * 4 / 512)
    n_mini = math.ceil(len(mini) / 512)
    dir_start, minifat_start = 1, 1 + n_dir
    mini_start = minifat_start + n_minifat
    entries[0]["start"], entries[0]["size"] = mini_start, len(mini)

    fat = [FATSECT]
    for start, count in ((dir_start, n_dir), (minifat_start, n_minifat)):
        fat += [start + i + 1 for i in range(count - 1)] + [ENDOFCHAIN]
    fat += [mini_start + i + 1 for i in range(n_mini - 1)] + [ENDOFCHAIN]
    fat += [FREESECT] * (128 - len(fat))

    header = struct.pack(
        "<8s16s5H6s6I3I109I",
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
        bytes(16),
        0x3E,  # minor version
        3,  # major version: 512-byte sectors
        0xFFFE,  # little-endian
        9,
        6,
        bytes(6),
        0,  # directory sectors (always 0 in version 3)
        1,  # FAT sectors
        dir_start,
        0,
        4096,  # mini stream cutoff
        minifat_start,
        n_minifat,
        ENDOFCHAIN,  # no DIFAT sectors
        0,
        0,  # the FAT is sector 0
        *[FREESECT] * 108,
    )
    directory = bytearray()
    for entry in entries:
        name = str(entry["name"]).encode("utf-16-le") + b"\x00\x00"
        directory += struct.pack(
            DIRECTORY_ENTRY,
            name,
            len(name),
            entry["type"],
            1,  # black
            NOSTREAM,
            entry["right"],
            entry["child"],
            bytes(16),
            0,
            0,
            0,
            entry["start"],
            entry["size"],
        )
    unused = struct.pack(
        DIRECTORY_ENTRY, b"", 0, 0, 0, *[NOSTREAM] * 3, bytes(16), *[0] * 5
    )
    directory = directory.ljust(n_dir * 512, b"\x00")
    for offset in range(len(entries) * 128, n_dir * 512, 128):
        directory[offset : offset + 128] = unused
    minifat_sector = struct.pack(f"<{len(minifat)}I", *minifat)
    minifat_sector = minifat_sector.ljust(n_minifat * 512, b"\xff")
    return (
        header
        + struct.pack("<128I", *fat)
        + bytes(directory)
        + minifat_sector
        + bytes(mini).ljust(n_mini * 512, b"\x00")
    )


def ovba_compress(data: bytes) -> bytes:
    """MS-OVBA 2.4.1 compression using literal tokens only (one chunk)."""
    assert len(data) <= 3640
    tokens = b"".join(b"\x00" + data[i : i + 8] for i in range(0, len(data), 8))
    chunk_header = (len(tokens) + 2 - 3) | (0b011 << 12) | (1 << 15)
    return b"\x01" + struct.pack("<H", chunk_header) + tokens


def ovba_encrypt(data: bytes, project_id: str, seed: int) -> str:
    """MS-OVBA 2.4.3 data encryption, as the PROJECT stream's CMG/DPB/GC use."""
    key = sum(project_id.encode("ascii")) & 0xFF
    plain, enc1, enc2 = key, key ^ seed, 2 ^ seed
    out = bytearray([seed, enc2, enc1])
    for byte in bytes((seed & 6) // 2) + struct.pack("<I", len(data)) + data:
        encrypted = byte ^ ((enc2 + plain) & 0xFF)
        out.append(encrypted)
        enc2, enc1, plain = enc1, encrypted, byte
    return out.hex().upper()


def record(ident: int, payload: bytes) -> bytes:
    return struct.pack("<HI", ident, len(payload)) + payload


def vba_project(source: bytes = MACRO_SOURCE, module: str = "Module1") -> bytes:
    """A vbaProject.bin: PROJECT, PROJECTwm and VBA/{_VBA_PROJECT,dir,module}."""
    name, wide = module.encode(), module.encode("utf-16-le")
    u32 = struct.Struct("<I").pack
    u16 = struct.Struct("<H").pack
    dir_stream = b"".join(
        [
            record(0x0001, u32(1)),  # SYSKIND: Win32
            record(0x004A, u32(3)),  # COMPATVERSION
            record(0x0002, u32(0x409)),  # LCID
            record(0x0014, u32(0x409)),  # LCIDINVOKE
            record(0x0003, u16(1252)),  # CODEPAGE
            record(0x0004, b"VBAProject"),
            record(0x0005, b""),  # DOCSTRING
            record(0x0040, b""),
            record(0x0006, b""),  # HELPFILEPATH
            record(0x003D, b""),
            record(0x0007, u32(0)),  # HELPCONTEXT
            record(0x0008, u32(0)),  # LIBFLAGS
            struct.pack("<HIIH", 0x0009, 4, 1, 0),  # VERSION
            record(0x000C, b""),  # CONSTANTS
            record(0x003C, b""),
            record(0x000F, u16(1)),  # MODULES: one
            record(0x0013, u16(0xFFFF)),  # PROJECTCOOKIE
            record(0x0019, name),  # MODULENAME
            record(0x0047, wide),
            record(0x001A, name),  # MODULESTREAMNAME
            record(0x0032, wide),
            record(0x001C, b""),  # MODULEDOCSTRING
            record(0x0048, b""),
            record(0x0031, u32(0)),  # MODULEOFFSET: source at 0
            record(0x001E, u32(0)),
            record(0x002C, u16(0xFFFF)),
            record(0x0021, b""),  # procedural module
            record(0x002B, b""),  # module terminator
            record(0x0010, b""),  # dir terminator
        ]
    )
    project_id = "{9E394C0B-697E-4AEE-9FA6-446F51FB30DC}"
    visible = ovba_encrypt(b"\xff", project_id, 0x27)
    project = (
        f'ID="{project_id}"\r\n'
        f"Module={module}\r\n"
        'Name="VBAProject"\r\n'
        'HelpContextID="0"\r\n'
        'VersionCompatible32="393222000"\r\n'
        f'CMG="{ovba_encrypt(bytes(4), project_id, 0x85)}"\r\n'
        f'DPB="{ovba_encrypt(bytes(1), project_id, 0x4B)}"\r\n'
        f'GC="{visible}"\r\n'
        "\r\n[Host Extender Info]\r\n"
        "&H00000001={3832D640-CF90-11CF-8E43-00A0C911005A};VBE;&H00000000\r\n"
    ).encode("ascii")
    return compound_file(
        {
            "PROJECT": project,
            "PROJECTwm": name + b"\x00" + wide + b"\x00\x00" + b"\x00\x00",
            "VBA": {
                "_VBA_PROJECT": b"\xcc\x61\xff\xff\x00\x00\x00",
                "dir": ovba_compress(dir_stream),
                module: ovba_compress(source),
            },
        }
    )


OOXML = {
    "docm": (
        "word/document.xml",
        "application/vnd.ms-word.document.macroEnabled.main+xml",
        "http://schemas.openxmlformats.org/officeDocument/2006/relationships/"
        "officeDocument",
        b'<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/'
        b'2006/main"><w:body><w:p><w:r><w:t>Quarterly figures</w:t></w:r></w:p>'
        b"</w:body></w:document>",
    ),
    "docx": (
        "word/document.xml",
        "application/vnd.openxmlformats-officedocument.wordprocessingml."
        "document.main+xml",
        "http://schemas.openxmlformats.org/officeDocument/2006/relationships/"
        "officeDocument",
        b'<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/'
        b'2006/main"><w:body><w:p><w:r><w:t>Quarterly figures</w:t></w:r></w:p>'
        b"</w:body></w:document>",
    ),
    "xlsm": (
        "xl/workbook.xml",
        "application/vnd.ms-excel.sheet.macroEnabled.main+xml",
        "http://schemas.openxmlformats.org/officeDocument/2006/relationships/"
        "officeDocument",
        b'<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/'
        b'main"><sheets/></workbook>',
    ),
}


def ooxml(kind: str, vba: bytes | None) -> bytes:
    """An OOXML package; with ``vba``, its main part links a vbaProject.bin."""
    main, content_type, relation, body = OOXML[kind]
    folder = main.split("/")[0]
    overrides = f'<Override PartName="/{main}" ContentType="{content_type}"/>'
    if vba is not None:
        overrides += (
            f'<Override PartName="/{folder}/vbaProject.bin" '
            'ContentType="application/vnd.ms-office.vbaProject"/>'
        )
    types = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" '
        'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        f"{overrides}</Types>"
    )
    package_rels = (
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/'
        f'relationships"><Relationship Id="rId1" Type="{relation}" '
        f'Target="{main}"/></Relationships>'
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as package:
        package.writestr("[Content_Types].xml", types)
        package.writestr("_rels/.rels", package_rels)
        package.writestr(main, body)
        if vba is not None:
            part_rels = (
                '<Relationships xmlns="http://schemas.openxmlformats.org/package/'
                '2006/relationships"><Relationship Id="rId9" Type="http://schemas.'
                'microsoft.com/office/2006/relationships/vbaProject" '
                'Target="vbaProject.bin"/></Relationships>'
            )
            name = main.split("/")[1]
            package.writestr(f"{folder}/_rels/{name}.rels", part_rels)
            package.writestr(f"{folder}/vbaProject.bin", vba)
    return buffer.getvalue()


def test_built_vba_project_is_real_to_olevba() -> None:
    with warnings.catch_warnings():
        # oletools 0.60 builds its grammar with names pyparsing 3.3 deprecates.
        warnings.simplefilter("ignore", DeprecationWarning)
        from oletools.olevba import VBA_Parser

    data = vba_project()
    parser = VBA_Parser("vbaProject.bin", data=data)
    try:
        macros = list(parser.extract_macros())
        keywords = {keyword for _kind, keyword, _ in parser.analyze_macros()}
    finally:
        parser.close()

    assert [(m[2], m[3].encode()) for m in macros] == [("Module1.bas", MACRO_SOURCE)]
    assert "AutoOpen" in keywords


@pytest.mark.parametrize("kind", ["docm", "xlsm"])
def test_macro_enabled_ooxml(tmp_path: Path, kind: str) -> None:
    path = write(tmp_path, f"report.{kind}", ooxml(kind, vba_project()))

    assert check(path) == {"office-macros"}
    assert details(path)["office-macros"].endswith(
        "vbaProject.bin: VBA project present"
    )


def test_bare_ole_vba_project(tmp_path: Path) -> None:
    path = write(tmp_path, "macros.bin", vba_project())

    assert check(path) == {"office-macros"}


def test_renamed_vba_part_is_still_found(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as package:
        package.writestr("word/media/image7.png", vba_project())
    path = write(tmp_path, "letter.docx", buffer.getvalue())

    assert check(path) == {"office-macros"}


def test_docm_inside_a_zip(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("q3/report.docm", ooxml("docm", vba_project()))
    path = write(tmp_path, "bundle.zip", buffer.getvalue())

    assert check(path) == {"office-macros"}
    detail = details(path)["office-macros"]
    assert detail.startswith("q3/report.docm!word/vbaProject.bin: ")


def test_docx_without_macros_is_clean(tmp_path: Path) -> None:
    path = write(tmp_path, "letter.docx", ooxml("docx", None))

    assert check(path) == set()


@pytest.mark.skipif(
    not (CLAMAV_TESTFILES / "clam.ole.doc").exists(), reason="clamav-testfiles absent"
)
def test_real_word_97_document_without_macros(tmp_path: Path) -> None:
    path = tmp_path / "memo.doc"
    shutil.copy(CLAMAV_TESTFILES / "clam.ole.doc", path)

    assert check(path) == set()


def test_ole_document_over_the_macro_limit_is_incomplete(tmp_path: Path) -> None:
    path = write(tmp_path, "macros.xls", vba_project())
    limits = InspectionLimits(max_office_bytes=1024)

    assert check(path, limits=limits) == {"inspection-incomplete"}


# --- PDF, written object by object ------------------------------------------


def pdf(objects: list[bytes], *, base: int = 0) -> bytes:
    """A PDF with these objects (1 is the catalog) and a correct xref table.

    ``base`` is where the PDF will start inside a larger file, so the
    cross-reference offsets stay true there.
    """
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(base + len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = base + len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def page_objects(
    catalog_extra: bytes = b"", content: bytes = b"0 0 1 rg 72 72 144 144 re f\n"
) -> list[bytes]:
    """Catalog, page tree, one page and its content stream (a blue square)."""
    return [
        b"<< /Type /Catalog /Pages 2 0 R %s>>" % catalog_extra,
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content) + 1, content),
    ]


def test_plain_pdf_is_clean(tmp_path: Path) -> None:
    path = write(tmp_path, "plain.pdf", pdf(page_objects()))

    assert magic.from_file(str(path), mime=True) == "application/pdf"
    assert check(path) == set()


@pytest.mark.skipif(not MIME_SPEC_PDF.exists(), reason="shared-mime-info doc absent")
def test_real_pdf_of_this_machine_is_clean(tmp_path: Path) -> None:
    assert check(MIME_SPEC_PDF) == set()


def test_pdf_open_action_javascript(tmp_path: Path) -> None:
    objects = page_objects(b"/OpenAction 5 0 R ")
    objects.append(b"<< /Type /Action /S /JavaScript /JS (app.alert\\('hi'\\);) >>")
    path = write(tmp_path, "form.pdf", pdf(objects))

    assert check(path) == {"pdf-javascript"}


def test_pdf_javascript_name_tree(tmp_path: Path) -> None:
    objects = page_objects(b"/Names << /JavaScript 5 0 R >> ")
    objects.append(b"<< /Names [(init) 6 0 R] >>")
    objects.append(b"<< /S /JavaScript /JS (this.print\\(\\);) >>")
    path = write(tmp_path, "print.pdf", pdf(objects))

    assert check(path) == {"pdf-javascript"}


def test_pdf_launch_action(tmp_path: Path) -> None:
    objects = page_objects(b"/OpenAction 5 0 R ")
    objects.append(
        b"<< /Type /Action /S /Launch /Win << /F (cmd.exe) /P (/c calc) >> >>"
    )
    path = write(tmp_path, "open-me.pdf", pdf(objects))

    assert check(path) == {"pdf-launch-action"}


def test_pdf_names_hidden_with_hex_escapes(tmp_path: Path) -> None:
    objects = page_objects(b"/OpenAction 5 0 R /AA << /WC 6 0 R >> ")
    objects.append(b"<< /Type /Action /S /J#61vaScript /J#53 (app.alert\\(1\\)) >>")
    objects.append(b"<< /Type /Action /S /#4C#61#75#6E#63#68 /F (evil.exe) >>")
    path = write(tmp_path, "escaped.pdf", pdf(objects))

    assert check(path) == {"pdf-javascript", "pdf-launch-action"}
    assert "(that is /JavaScript)" in details(path)["pdf-javascript"]


def test_pdf_name_across_a_read_window_boundary(tmp_path: Path) -> None:
    # Place /JavaScript so that the first 1 MiB read cuts it after "/Java".
    def build(filler: int) -> bytes:
        content = b"%" + b"x" * filler + b"\n0 0 1 rg 72 72 144 144 re f\n"
        objects = page_objects(b"/OpenAction 5 0 R ", content)
        objects.append(b"<< /S /JavaScript /JS (app.alert\\(1\\)) >>")
        return pdf(objects)

    first = build(MIB)
    filler = MIB - (first.index(b"/JavaScript") - MIB) - 5
    data = build(filler)
    assert data[MIB - 5 : MIB + 6] == b"/JavaScript"
    path = write(tmp_path, "big.pdf", data)

    assert check(path) == {"pdf-javascript"}


def pdf_with_object_stream(hidden: bytes) -> bytes:
    """A PDF 1.5 file whose object 5 lives in a deflated object stream.

    Objects in an object stream need a cross-reference stream (object 7),
    written here uncompressed with /W [1 4 2].
    """
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for number, body in enumerate(page_objects(b"/OpenAction 5 0 R "), 1):
        offsets[number] = len(out)
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)

    header = b"5 0 "
    packed = zlib.compress(header + hidden)
    offsets[6] = len(out)
    out += b"6 0 obj\n<< /Type /ObjStm /N 1 /First %d " % len(header)
    out += b"/Filter /FlateDecode /Length %d >>\nstream\n" % len(packed)
    out += packed + b"\nendstream\nendobj\n"

    offsets[7] = len(out)
    rows = [(0, 0, 65535)] + [(1, offsets[n], 0) for n in range(1, 5)]
    rows += [(2, 6, 0), (1, offsets[6], 0), (1, offsets[7], 0)]
    table = b"".join(struct.pack(">BIH", *row) for row in rows)
    out += b"7 0 obj\n<< /Type /XRef /Size 8 /W [1 4 2] /Root 1 0 R "
    out += b"/Length %d >>\nstream\n" % len(table) + table + b"\nendstream\nendobj\n"
    out += b"startxref\n%d\n%%%%EOF\n" % offsets[7]
    return bytes(out)


def test_pdf_javascript_inside_a_compressed_object_stream(tmp_path: Path) -> None:
    data = pdf_with_object_stream(b"<< /S /JavaScript /JS (app.alert\\(1\\)) >>")
    assert b"JavaScript" not in data
    path = write(tmp_path, "objstm.pdf", data)

    assert check(path) == {"pdf-javascript"}
    assert "deflated from byte" in details(path)["pdf-javascript"]


def test_pdf_stream_inflation_is_bounded(tmp_path: Path) -> None:
    filler = b"%" + b"0" * (2 * MIB) + b"\n"
    packed = zlib.compress(filler)
    objects = page_objects()
    objects[3] = b"<< /Filter /FlateDecode /Length %d >>\nstream\n%s\nendstream" % (
        len(packed),
        packed,
    )
    path = write(tmp_path, "inflated.pdf", pdf(objects))

    assert check(path) == set()
    limits = InspectionLimits(max_expanded_bytes=1 * MIB)
    assert check(path, limits=limits) == {"inspection-incomplete"}


def test_pdf_name_that_only_starts_like_js_is_not_javascript(tmp_path: Path) -> None:
    objects = page_objects(b"/Metadata << /JSON (none) /Launcher (no) >> ")
    path = write(tmp_path, "meta.pdf", pdf(objects))

    assert check(path) == set()


def test_pdf_scan_past_its_byte_limit_is_incomplete(tmp_path: Path) -> None:
    objects = page_objects(content=b"%" + b"x" * 4096 + b"\n")
    path = write(tmp_path, "long.pdf", pdf(objects))
    limits = InspectionLimits(max_scan_bytes=1024)

    assert check(path, limits=limits) == {"inspection-incomplete"}


# --- SVG and HTML -----------------------------------------------------------

SVG_OPEN = b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'


def test_svg_with_script_element(tmp_path: Path) -> None:
    svg = SVG_OPEN + b"<script>fetch('/steal?c='+document.cookie)</script></svg>"
    path = write(tmp_path, "logo.svg", b'<?xml version="1.0"?>\n' + svg)

    assert check(path) == {"active-content"}
    assert details(path)["active-content"] == "<script> element"


def test_svg_with_event_handler(tmp_path: Path) -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect/></svg>'
    path = write(tmp_path, "badge.svg", svg)

    assert check(path) == {"active-content"}


def test_svg_with_handler_set_by_animation(tmp_path: Path) -> None:
    svg = SVG_OPEN + b'<set attributeName="onmouseover" to="alert(1)"/></svg>'
    path = write(tmp_path, "anim.svg", svg)

    assert check(path) == {"active-content"}


def test_html_with_obfuscated_javascript_url(tmp_path: Path) -> None:
    html = (
        b"<!DOCTYPE html><html><body>"
        b'<a href="jav&#x61;\tscr&#105;pt&colon;alert(1)">invoice</a>'
        b"</body></html>"
    )
    path = write(tmp_path, "invoice.html", html)

    assert check(path) == {"active-content"}
    assert details(path)["active-content"] == "javascript: URL"


def test_markup_found_by_content_under_another_name(tmp_path: Path) -> None:
    svg = SVG_OPEN + b"<script>alert(1)</script></svg>"
    path = write(tmp_path, "picture.dat", svg)

    assert check(path, mime=None) == {"active-content"}


def test_utf16_svg_with_script(tmp_path: Path) -> None:
    svg = (SVG_OPEN + b"<script>alert(1)</script></svg>").decode()
    path = write(tmp_path, "wide.svg", svg.encode("utf-16"))

    assert check(path) == {"active-content"}


def test_clean_svg(tmp_path: Path) -> None:
    svg = (
        SVG_OPEN + b"<title>Status: online</title>"
        b'<a href="https://example.org/help"><rect width="64" height="64" '
        b'style="fill:#336699"/></a><text x="4" y="40">Turn on = 1</text></svg>'
    )
    path = write(tmp_path, "clean.svg", svg)

    assert check(path) == set()


# --- archives -----------------------------------------------------------------


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, (2024, 5, 1, 12, 0, 0))
            info.compress_type = method
            archive.writestr(info, data)
    return buffer.getvalue()


def nested_zip(layers: int) -> bytes:
    data = zip_of({"data.csv": b"id,value\n1,2\n"})
    for layer in range(1, layers):
        data = zip_of({f"layer{layer}.zip": data})
    return data


def tar_of(members: list[tarfile.TarInfo], payloads: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for member in members:
            data = payloads.get(member.name)
            if data is not None:
                member.size = len(data)
                archive.addfile(member, io.BytesIO(data))
            else:
                archive.addfile(member)
    return buffer.getvalue()


def tar_member(
    name: str, kind: bytes = tarfile.REGTYPE, link: str = ""
) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = link
    member.mtime = 1_700_000_000
    return member


def hand_zip(entries: list[tuple[str, bytes, int, int, int, int]]) -> bytes:
    """A zip written record by record: (name, payload, method, crc, size, flags)."""
    out = bytearray()
    directory = bytearray()
    for name, payload, method, crc, size, flags in entries:
        raw = name.encode()
        offset = len(out)
        # Version 2.0, no time, 1 January 1980.
        fields = struct.pack("<4HI", flags, method, 0, 0x21, crc)
        sizes = struct.pack("<2I", len(payload), size)
        out += b"PK\x03\x04" + struct.pack("<H", 20) + fields + sizes
        out += struct.pack("<2H", len(raw), 0) + raw + payload
        directory += b"PK\x01\x02" + struct.pack("<2H", 20, 20) + fields + sizes
        directory += struct.pack("<5HII", len(raw), 0, 0, 0, 0, 0, offset) + raw
    count = struct.pack("<4H", 0, 0, len(entries), len(entries))
    end = b"PK\x05\x06" + count + struct.pack("<2IH", len(directory), len(out), 0)
    return bytes(out + directory + end)


class ZipCrypto:
    """PKWARE traditional encryption (APPNOTE 6.1), to write a real one."""

    def __init__(self, password: bytes) -> None:
        self.keys = [0x12345678, 0x23456789, 0x34567890]
        for byte in password:
            self._update(byte)

    @staticmethod
    def _crc(value: int, byte: int) -> int:
        return zlib.crc32(bytes([byte]), value ^ 0xFFFFFFFF) ^ 0xFFFFFFFF

    def _update(self, byte: int) -> None:
        k0 = self._crc(self.keys[0], byte)
        k1 = ((self.keys[1] + (k0 & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        k2 = self._crc(self.keys[2], k1 >> 24)
        self.keys = [k0, k1, k2]

    def encrypt(self, data: bytes) -> bytes:
        out = bytearray()
        for byte in data:
            temp = (self.keys[2] | 2) & 0xFFFF
            out.append(byte ^ (((temp * (temp ^ 1)) >> 8) & 0xFF))
            self._update(byte)
        return bytes(out)


def test_nesting_within_the_limit_is_clean(tmp_path: Path) -> None:
    path = write(tmp_path, "layers.zip", nested_zip(3))

    assert check(path, limits=InspectionLimits(max_depth=3)) == set()


def test_nesting_past_the_limit(tmp_path: Path) -> None:
    path = write(tmp_path, "layers.zip", nested_zip(4))

    assert check(path, limits=InspectionLimits(max_depth=3)) == {"archive-too-deep"}
    assert details(path) == {}  # default limits: 8 layers
    detail = inspect_file(path, "layers.zip", None, InspectionLimits(max_depth=3))
    assert detail[0].detail.startswith("layer3.zip!layer2.zip!layer1.zip: ")


def test_tar_gz_counts_as_two_layers(tmp_path: Path) -> None:
    tar = tar_of([tar_member("data.csv")], {"data.csv": b"a,b\n1,2\n"})
    path = write(tmp_path, "export.tar.gz", gzip.compress(tar))

    assert check(path, limits=InspectionLimits(max_depth=2)) == set()
    assert check(path, limits=InspectionLimits(max_depth=1)) == {"archive-too-deep"}


def test_zip_bomb_from_declared_sizes(tmp_path: Path) -> None:
    path = write(tmp_path, "zeros.zip", zip_of({"zeros.bin": bytes(20 * MIB)}))

    assert check(path) == {"archive-bomb"}
    assert "declare" in details(path)["archive-bomb"]


def test_zip_bomb_whose_headers_understate_the_size(tmp_path: Path) -> None:
    data = bytearray(zip_of({"zeros.bin": bytes(20 * MIB)}))
    # Claim 1,000 bytes in the local header and in the central directory.
    struct.pack_into("<I", data, 22, 1000)
    directory = data.rindex(b"PK\x01\x02")
    struct.pack_into("<I", data, directory + 24, 1000)
    path = write(tmp_path, "liar.zip", bytes(data))
    assert zipfile.ZipFile(path).infolist()[0].file_size == 1000

    assert check(path) == {"archive-bomb"}
    assert "more than 100:1" in details(path)["archive-bomb"]


def test_gzip_bomb(tmp_path: Path) -> None:
    path = write(tmp_path, "zeros.csv.gz", gzip.compress(bytes(20 * MIB)))

    assert check(path) == {"archive-bomb"}


def test_total_expanded_size_limit(tmp_path: Path) -> None:
    members = {f"part{i}.bin": os.urandom(300 * 1024) for i in range(4)}
    path = write(tmp_path, "parts.zip", zip_of(members))

    assert check(path) == set()
    limits = InspectionLimits(max_expanded_bytes=1 * MIB)
    assert check(path, limits=limits) == {"archive-bomb"}


def test_entry_count_limit_zip_and_tar(tmp_path: Path) -> None:
    members = {f"row{i}.csv": b"a\n" for i in range(20)}
    zipped = write(tmp_path, "many.zip", zip_of(members))
    tarred = write(
        tmp_path,
        "many.tar",
        tar_of([tar_member(name) for name in members], members),
    )
    limits = InspectionLimits(max_entries=10)

    assert check(zipped, limits=limits) == {"archive-bomb"}
    assert check(tarred, limits=limits) == {"archive-bomb"}
    assert check(zipped) == set()
    assert check(tarred) == set()


def test_encrypted_zip_written_with_zipcrypto(tmp_path: Path) -> None:
    plain = b"account,balance\n42,1000000\n"
    crc = zlib.crc32(plain)
    cipher = ZipCrypto(b"hunter2")
    payload = cipher.encrypt(os.urandom(11) + bytes([crc >> 24]) + plain)
    path = write(
        tmp_path,
        "secret.zip",
        hand_zip([("secret.csv", payload, 0, crc, len(plain), 0x1)]),
    )
    # The sample is real: Python's zipfile decrypts it with the password.
    assert zipfile.ZipFile(path).read("secret.csv", pwd=b"hunter2") == plain

    assert check(path) == {"archive-encrypted"}


@pytest.mark.skipif(shutil.which("zip") is None, reason="zip command absent")
def test_encrypted_zip_from_the_zip_tool(tmp_path: Path) -> None:
    (tmp_path / "secret.csv").write_bytes(b"a,b\n1,2\n")
    subprocess.run(
        ["zip", "-q", "-P", "hunter2", "secret.zip", "secret.csv"],
        cwd=tmp_path,
        check=True,
    )

    assert check(tmp_path / "secret.zip") == {"archive-encrypted"}


@pytest.mark.parametrize(
    "name",
    [
        "../evil.sh",
        "docs/../../evil.sh",
        "/etc/cron.d/evil",
        "..\\..\\Windows\\evil.dll",
        "C:/Users/Public/evil.exe",
        "C:evil.exe",
    ],
)
def test_zip_entry_names_that_escape(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, "upload.zip", zip_of({"ok.csv": b"a\n", name: b"x\n"}))
    assert name in zipfile.ZipFile(path).namelist()

    assert check(path) == {"archive-path-escape"}


def test_entry_names_are_escaped_in_details(tmp_path: Path) -> None:
    path = write(tmp_path, "ansi.zip", zip_of({"../\x1b[2Jevil\n.sh": b"x\n"}))

    detail = details(path)["archive-path-escape"]
    assert detail.startswith("../\\x1b[2Jevil\\x0a.sh: ")
    assert detail.isprintable()


def test_zip_symlink_out_of_the_tree(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("config/link", (2024, 5, 1, 12, 0, 0))
    link.create_system = 3
    link.external_attr = 0o120777 << 16  # S_IFLNK | rwxrwxrwx
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(link, "../../etc/passwd")
    path = write(tmp_path, "links.zip", buffer.getvalue())

    assert check(path) == {"archive-path-escape"}
    assert "symlink" in details(path)["archive-path-escape"]


@pytest.mark.parametrize(
    ("member", "payload"),
    [
        (tar_member("../evil.sh"), b"#!/bin/sh\n"),
        (tar_member("/etc/profile.d/evil.sh"), b"echo\n"),
        (tar_member("link", tarfile.SYMTYPE, "/etc/passwd"), None),
        (tar_member("a/b/link", tarfile.SYMTYPE, "../../../etc/shadow"), None),
        (tar_member("hard", tarfile.LNKTYPE, "../outside"), None),
    ],
)
def test_tar_members_that_escape(
    tmp_path: Path, member: tarfile.TarInfo, payload: bytes | None
) -> None:
    members = [tar_member("ok.csv"), member]
    payloads = {"ok.csv": b"a\n"}
    if payload is not None:
        payloads[member.name] = payload
    path = write(tmp_path, "upload.tar.gz", gzip.compress(tar_of(members, payloads)))

    assert check(path) == {"archive-path-escape"}


def test_tar_symlink_inside_the_tree_is_fine(tmp_path: Path) -> None:
    members = [tar_member("a/b.csv"), tar_member("a/link", tarfile.SYMTYPE, "b.csv")]
    path = write(tmp_path, "ok.tar", tar_of(members, {"a/b.csv": b"a\n"}))

    assert check(path) == set()


def test_gzip_header_naming_a_path_outside(tmp_path: Path) -> None:
    body = b"id,value\n1,2\n"
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(body) + compressor.flush()
    header = b"\x1f\x8b\x08\x08" + struct.pack("<I", 0) + b"\x00\x03"
    data = header + b"../../.bashrc\x00" + deflated
    data += struct.pack("<II", zlib.crc32(body), len(body))
    path = write(tmp_path, "rows.csv.gz", data)
    assert gzip.decompress(path.read_bytes()) == body

    assert check(path) == {"archive-path-escape"}


def test_truncated_zip(tmp_path: Path) -> None:
    data = zip_of({"a.csv": b"a,b\n" * 100})
    path = write(tmp_path, "cut.zip", data[:-30])

    assert check(path) == {"archive-corrupt"}


def test_zip_with_a_crc_mismatch(tmp_path: Path) -> None:
    data = bytearray(zip_of({"a.csv": b"a,b\n1,2\n"}, zipfile.ZIP_STORED))
    data[data.index(b"1,2")] = ord("9")
    path = write(tmp_path, "flipped.zip", bytes(data))

    assert check(path) == {"archive-corrupt"}


def test_zip_whose_local_header_names_another_file(tmp_path: Path) -> None:
    data = bytearray(zip_of({"report.csv": b"a\n"}))
    data[30:40] = b"report.exe"
    path = write(tmp_path, "two-faced.zip", bytes(data))

    assert check(path) == {"archive-corrupt"}


def test_truncated_tar_gz(tmp_path: Path) -> None:
    tar = tar_of([tar_member("a.bin")], {"a.bin": os.urandom(64 * 1024)})
    data = gzip.compress(tar)
    path = write(tmp_path, "cut.tar.gz", data[: len(data) // 2])

    assert check(path) == {"archive-corrupt"}


def test_tar_with_data_after_its_end(tmp_path: Path) -> None:
    tar = tar_of([tar_member("a.csv")], {"a.csv": b"a\n"})
    path = write(tmp_path, "extra.tar", tar + b"hidden payload")

    assert check(path) == {"archive-corrupt"}


def test_not_really_a_gzip(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.gz", b"\x1f\x8b\x08\x00" + os.urandom(200))

    assert check(path) == {"archive-corrupt"}


def test_zip_with_an_unsupported_method_is_incomplete(tmp_path: Path) -> None:
    # Method 9 is Deflate64, which Python's zipfile cannot decode.
    path = write(tmp_path, "d64.zip", hand_zip([("a.csv", b"\x00" * 8, 9, 0, 8, 0)]))

    assert check(path) == {"inspection-incomplete"}


def test_executable_inside_an_archive(tmp_path: Path) -> None:
    archive = zip_of({"docs/readme.txt": Path("/bin/true").read_bytes()})
    path = write(tmp_path, "docs.zip", archive)

    assert check(path) == {"executable-content"}
    assert details(path)["executable-content"] == "docs/readme.txt: ELF executable"


def test_clean_archives(tmp_path: Path) -> None:
    rows = b"id,name\n" + b"".join(b"%d,name%d\n" % (i, i) for i in range(2000))
    zipped = write(tmp_path, "rows.zip", zip_of({"rows.csv": rows, "dir/": b""}))
    tarred = write(
        tmp_path,
        "rows.tar.gz",
        gzip.compress(tar_of([tar_member("rows.csv")], {"rows.csv": rows})),
    )

    assert check(zipped) == set()
    assert check(tarred) == set()
    assert check(write(tmp_path, "rows.csv.gz", gzip.compress(rows))) == set()


@pytest.mark.skipif(
    not (CLAMAV_TESTFILES / "clam.tar.gz").exists(), reason="clamav-testfiles absent"
)
def test_real_clamav_archives_holding_an_exe_named_exe(tmp_path: Path) -> None:
    for name in ("clam.zip", "clam.tar.gz"):
        assert check(CLAMAV_TESTFILES / name) == set()


# --- polyglots ----------------------------------------------------------------


def png(extra_chunks: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """A 2x2 RGB PNG; ``extra_chunks`` go after IHDR."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * 2 for _ in range(2))
    out = b"\x89PNG\r\n\x1a\n" + chunk(
        b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    )
    for kind, data in extra_chunks or []:
        out += chunk(kind, data)
    return out + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def jpeg() -> bytes:
    """A baseline 1x1 grey JPEG: one DC and one AC Huffman code, EOB only."""
    segments = [
        b"\xff\xe0" + struct.pack(">H5sBBBHHBB", 16, b"JFIF\x00", 1, 1, 0, 1, 1, 0, 0),
        b"\xff\xdb" + struct.pack(">HB", 67, 0) + bytes([1] * 64),
        b"\xff\xc0" + struct.pack(">HBHHBBBB", 11, 8, 1, 1, 1, 1, 0x11, 0),
        b"\xff\xc4" + struct.pack(">HB", 20, 0x00) + bytes([1] + [0] * 15) + b"\x00",
        b"\xff\xc4" + struct.pack(">HB", 20, 0x10) + bytes([1] + [0] * 15) + b"\x00",
        b"\xff\xda" + struct.pack(">HBBBBBB", 8, 1, 1, 0x00, 0, 63, 0),
    ]
    # DC category 0 (code 0), then end of block (code 0), padded with ones.
    return b"\xff\xd8" + b"".join(segments) + b"\x3f" + b"\xff\xd9"


GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00"
    b"!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00"
    b"\x02\x02D\x01\x00;"
)


@pytest.mark.parametrize(
    ("name", "image", "mime"),
    [
        ("photo.png", png(), "image/png"),
        ("photo.jpg", jpeg(), "image/jpeg"),
        ("photo.gif", GIF, "image/gif"),
    ],
)
def test_image_with_a_zip_appended(
    tmp_path: Path, name: str, image: bytes, mime: str
) -> None:
    plain = write(tmp_path, "plain-" + name, image)
    assert magic.from_file(str(plain), mime=True) == mime
    assert check(plain) == set()

    path = write(tmp_path, name, image + zip_of({"payload.csv": b"a,b\n"}))
    assert magic.from_file(str(path), mime=True) == mime
    assert zipfile.ZipFile(path).namelist() == ["payload.csv"]

    assert check(path) == {"polyglot"}


@pytest.mark.skipif(not DEBIAN_LOGO.exists(), reason="debian-logo.png absent")
def test_real_png_of_this_machine(tmp_path: Path) -> None:
    assert check(DEBIAN_LOGO) == set()

    path = write(tmp_path, "logo.png", DEBIAN_LOGO.read_bytes() + nested_zip(1))
    assert check(path) == {"polyglot"}


def test_png_carrying_a_pdf_in_its_first_kib(tmp_path: Path) -> None:
    keyword = b"Comment\x00"
    base = 8 + 25 + 8 + len(keyword)  # signature, IHDR chunk, tEXt header
    document = pdf(page_objects(), base=base)
    data = png([(b"tEXt", keyword + document)])
    assert data[base : base + 5] == b"%PDF-"
    path = write(tmp_path, "chart.png", data)
    assert magic.from_file(str(path), mime=True) == "image/png"

    assert check(path) == {"polyglot"}
    assert "libmagic reads as image/png" in details(path, "image/png")["polyglot"]


def test_self_extracting_executable(tmp_path: Path) -> None:
    path = write(tmp_path, "setup.exe", pe32() + zip_of({"a.csv": b"a\n"}))

    assert check(path) == {"polyglot"}


def test_zip_with_a_second_zip_appended(tmp_path: Path) -> None:
    data = zip_of({"a.csv": b"a\n"}) + zip_of({"b.exe.txt": b"b\n"})
    path = write(tmp_path, "double.zip", data)

    assert check(path) == {"polyglot"}


# --- type table ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "mime", "expected"),
    [
        ("data.csv", "text/csv", []),
        ("data.csv", "text/plain", []),
        ("data.CSV", "image/png", ["type-mismatch"]),
        ("rows.parquet", "application/octet-stream", []),
        ("photo.png", "image/png", []),
        ("photo.png", "image/jpeg", ["type-mismatch"]),
        ("notes", "application/x-executable", ["executable-content"]),
        ("run.sh", "text/x-shellscript", []),
        ("data.json", "text/x-script.python", ["executable-content", "type-mismatch"]),
        ("app.exe", "application/x-dosexec", []),
        ("report.docx", "application/zip", []),
    ],
)
def test_type_table(filename: str, mime: str, expected: list[str]) -> None:
    assert [f.code.value for f in type_findings(filename, mime)] == expected


def test_type_table_keeps_the_agents_extensions() -> None:
    agents = "csv tsv txt json jsonl ndjson parquet pdf png jpg jpeg gif zip gz"
    assert set(ALLOWED_TYPES) == set(agents.split())


def test_png_named_as_a_pdf(tmp_path: Path) -> None:
    path = write(tmp_path, "statement.pdf", png())

    assert check(path) == {"type-mismatch"}


# --- clean files and failure --------------------------------------------------


def test_plain_csv_is_clean(tmp_path: Path) -> None:
    path = write(tmp_path, "penguins.csv", b"species,island\nAdelie,Torgersen\n")

    assert check(path) == set()


def test_unreadable_file_fails_closed(tmp_path: Path) -> None:
    found = inspect_file(tmp_path / "missing.csv", "missing.csv", "text/csv")

    assert [f.code for f in found] == [Code.INSPECTION_INCOMPLETE]


# --- limits and policy --------------------------------------------------------


def test_limits_defaults_and_validation() -> None:
    limits = InspectionLimits()
    assert (limits.max_depth, limits.max_ratio) == (8, 100.0)
    assert (limits.max_entries, limits.max_expanded_bytes) == (10_000, 1024 * MIB)
    with pytest.raises(ValueError, match="max_ratio"):
        InspectionLimits(max_ratio=0)
    with pytest.raises(AttributeError):
        limits.max_depth = 1  # type: ignore[misc]


def test_default_policy_quarantines_every_code() -> None:
    assert set(DEFAULT_POLICY) == {code.value for code in Code}
    assert set(DEFAULT_POLICY.values()) == {Action.QUARANTINE}


def test_decide_takes_the_strongest_action() -> None:
    policy = DEFAULT_POLICY.merged(
        {"type-mismatch": "allow", "executable-content": Action.REJECT}
    )
    mismatch = Finding(Code.TYPE_MISMATCH, "x")
    macros = Finding(Code.OFFICE_MACROS, "x")
    executable = Finding(Code.EXECUTABLE_CONTENT, "x")

    assert decide([]) is Action.ALLOW
    assert decide([mismatch], policy) is Action.ALLOW
    assert decide([mismatch, macros], policy) is Action.QUARANTINE
    assert decide([macros, executable, mismatch], policy) is Action.REJECT
    assert DEFAULT_POLICY.action_for("type-mismatch") is Action.QUARANTINE


def test_policy_is_frozen_and_validated() -> None:
    with pytest.raises(ValueError, match="unknown finding code"):
        Policy({"office-macro": "reject"})
    with pytest.raises(ValueError):
        Policy({"office-macros": "delete"})
    sparse = Policy({"polyglot": "allow"})
    assert sparse.action_for("archive-bomb") is Action.QUARANTINE
    assert hash(sparse) == hash(Policy({"polyglot": Action.ALLOW}))
    with pytest.raises(TypeError):
        sparse["polyglot"] = Action.REJECT  # type: ignore[index]
    with pytest.raises(AttributeError):
        sparse._actions = {}


def test_public_surface() -> None:
    assert set(inspection.__all__) == {
        "ALLOWED_TYPES",
        "DEFAULT_LIMITS",
        "DEFAULT_POLICY",
        "EXECUTABLE_EXTENSIONS",
        "EXECUTABLE_TYPES",
        "Action",
        "Code",
        "Finding",
        "InspectionLimits",
        "Policy",
        "decide",
        "inspect_file",
        "type_findings",
    }
    documented = inspection.__doc__ or ""
    for code in Code:
        assert f"``{code.value}``" in documented
