"""Reading uploaded documents: the type from the content, limits before parsing, text per format.

Use in three steps; nothing here touches the database, the network or the disk:

    mime = detect_type(data, filename)   # what the bytes are, whatever the name or client says
    require_allowed(mime)                # UnsupportedType (415) naming the type found
    document = parse(data, mime, limits=limits)   # or parse_isolated(...) in the worker

`parse` checks the limits before any parser sees the file: the size, and for office files (zip
archives) the entry count, names, total unpacked size and per-entry compression ratio from the
zip directory, then every XML part's prolog, refusing any DTD. Python's `zipfile`, which all three
office libraries read through, never returns more bytes for an entry than the directory declares
(it stops and fails the CRC check), so a forged directory cannot hide a bomb from these checks.

The libraries themselves are also safe with XML: python-docx and python-pptx parse with lxml and
`resolve_entities=False` (no network, no DTD loading), and openpyxl uses defusedxml when it is
installed, which it is. The DTD refusal here is the belt to those braces, and gives a clear reason.

Time: `parse` checks a deadline between pages, slides, paragraphs and rows and inside PDF content
streams, which stops slow documents but cannot interrupt one long call into a C library.
`parse_isolated` runs `parse` in a child process with a hard wall-clock kill, a CPU limit and an
address-space limit: the worker should use it, so that no single file can hang or exhaust it.

Every `DocumentError` message is meant for the person who uploaded the file.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import os
import posixpath
import re
import subprocess
import sys
import time
import unicodedata
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from allting.platform.errors import AppError

__all__ = [
    "ALLOWED_TYPES",
    "AUDIO_TYPES",
    "CSV",
    "DOCUMENT_TYPES",
    "DOCX",
    "HTML",
    "MARKDOWN",
    "PDF",
    "PPTX",
    "TEXT",
    "XLSX",
    "DocumentError",
    "FileTooLarge",
    "NeedsTranscription",
    "ParseLimits",
    "ParsedDocument",
    "Section",
    "UnsupportedType",
    "check_before_parsing",
    "detect_type",
    "inspect_archive",
    "parse",
    "parse_isolated",
    "require_allowed",
    "type_label",
]

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV = "text/csv"
HTML = "text/html"
MARKDOWN = "text/markdown"
TEXT = "text/plain"

WAV = "audio/wav"
MP3 = "audio/mpeg"
OGG = "audio/ogg"
FLAC = "audio/flac"
M4A = "audio/mp4"
MP4 = "video/mp4"
WEBM = "audio/webm"

OCTET_STREAM = "application/octet-stream"
ZIP = "application/zip"
ENCRYPTED_OFFICE = "application/x-encrypted-office"  # an OLE container holding an encrypted .docx/.xlsx/.pptx

OFFICE_TYPES = frozenset({DOCX, PPTX, XLSX})
DOCUMENT_TYPES = frozenset({PDF, DOCX, PPTX, XLSX, CSV, HTML, MARKDOWN, TEXT})
AUDIO_TYPES = frozenset({WAV, MP3, OGG, FLAC, M4A, MP4, WEBM})
ALLOWED_TYPES = DOCUMENT_TYPES | AUDIO_TYPES

_LABELS = {
    PDF: "PDF",
    DOCX: "Word document (.docx)",
    PPTX: "PowerPoint presentation (.pptx)",
    XLSX: "Excel workbook (.xlsx)",
    CSV: "CSV file",
    HTML: "web page (HTML)",
    MARKDOWN: "Markdown text",
    TEXT: "plain text",
    WAV: "WAV audio",
    MP3: "MP3 audio",
    OGG: "Ogg audio",
    FLAC: "FLAC audio",
    M4A: "M4A audio",
    MP4: "MP4 video",
    WEBM: "WebM audio",
    OCTET_STREAM: "unrecognised binary data",
    ZIP: "zip archive",
    ENCRYPTED_OFFICE: "password-protected Office document",
    "application/msword": "Word 97–2003 document (.doc)",
    "application/vnd.ms-excel": "Excel 97–2003 workbook (.xls)",
    "application/vnd.ms-powerpoint": "PowerPoint 97–2003 presentation (.ppt)",
    "application/vnd.ms-outlook": "Outlook message (.msg)",
    "application/x-ole-storage": "Microsoft compound file",
    "application/vnd.ms-word.document.macroEnabled.12": "macro-enabled Word document (.docm)",
    "application/vnd.ms-excel.sheet.macroEnabled.12": "macro-enabled Excel workbook (.xlsm)",
    "application/vnd.ms-powerpoint.presentation.macroEnabled.12": "macro-enabled presentation (.pptm)",
    "application/vnd.oasis.opendocument.text": "OpenDocument text (.odt)",
    "application/vnd.oasis.opendocument.spreadsheet": "OpenDocument spreadsheet (.ods)",
    "application/vnd.oasis.opendocument.presentation": "OpenDocument presentation (.odp)",
    "application/epub+zip": "EPUB book",
    "application/rtf": "RTF document",
    "application/xml": "XML data",
    "image/svg+xml": "SVG image",
    "image/png": "PNG image",
    "image/jpeg": "JPEG image",
    "image/gif": "GIF image",
    "image/webp": "WebP image",
    "image/tiff": "TIFF image",
    "image/heic": "HEIC image",
    "image/avif": "AVIF image",
    "application/x-executable": "Linux program (ELF)",
    "application/x-msdownload": "Windows program",
    "application/x-mach-binary": "macOS program",
    "application/java-vm": "Java class file",
    "application/gzip": "gzip archive",
    "application/x-bzip2": "bzip2 archive",
    "application/x-xz": "xz archive",
    "application/x-7z-compressed": "7-Zip archive",
    "application/vnd.rar": "RAR archive",
    "application/vnd.sqlite3": "SQLite database",
    "application/wasm": "WebAssembly module",
    "audio/aac": "AAC audio",
    "video/quicktime": "QuickTime video",
    "video/x-matroska": "Matroska video",
    "video/3gpp": "3GP video",
}

_HINTS = {
    ENCRYPTED_OFFICE: "Remove the password in Office (File > Info > Protect) and upload it again.",
    "application/msword": "Open it in Word and save it as .docx, then upload that.",
    "application/vnd.ms-excel": "Open it in Excel and save it as .xlsx, then upload that.",
    "application/vnd.ms-powerpoint": "Open it in PowerPoint and save it as .pptx, then upload that.",
    "application/vnd.ms-word.document.macroEnabled.12": "Save it as a plain .docx, then upload that.",
    "application/vnd.ms-excel.sheet.macroEnabled.12": "Save it as a plain .xlsx, then upload that.",
    "application/vnd.ms-powerpoint.presentation.macroEnabled.12": (
        "Save it as a plain .pptx, then upload that."
    ),
    "application/vnd.oasis.opendocument.text": "Save it as .docx or PDF, then upload that.",
    "application/vnd.oasis.opendocument.spreadsheet": "Save it as .xlsx or CSV, then upload that.",
    "application/vnd.oasis.opendocument.presentation": "Save it as .pptx or PDF, then upload that.",
    "application/rtf": "Save it as .docx or PDF, then upload that.",
}

_SUPPORTED_SUMMARY = (
    "Supported are PDF, Word (.docx), PowerPoint (.pptx), Excel (.xlsx), CSV, HTML, Markdown, "
    "plain text and audio recordings (WAV, MP3, M4A, MP4, Ogg, FLAC, WebM)."
)
_DAMAGED = "The file is damaged or incomplete and could not be read."
_NO_TEXT = "The document contains no readable text."
_MB = 1024 * 1024


def type_label(mime: str) -> str:
    """A name for a MIME type that a person recognises."""
    return _LABELS.get(mime, mime)


# --- Errors -------------------------------------------------------------------------------------


class DocumentError(AppError):
    """The file cannot be turned into text; `message` says why, for the person who uploaded it.

    Processing it again will not help, so a job that meets this fails at once without retrying.
    """

    status_code = 422
    code = "document_unreadable"


class FileTooLarge(DocumentError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedType(DocumentError):
    """The content is of a type that is not on the allow-list; the message names that type."""

    status_code = 415
    code = "unsupported_media_type"

    def __init__(self, found_type: str) -> None:
        self.found_type = found_type
        hint = _HINTS.get(found_type)
        label = type_label(found_type)
        named = label if label == found_type else f"{label} ({found_type})"
        if found_type == ENCRYPTED_OFFICE:
            message = f"The file is a {named}. {hint}"
        else:
            message = f"The file is of a type that cannot be added: {named}. "
            message += f"{hint} " if hint else ""
            message += _SUPPORTED_SUMMARY
        super().__init__(message, details={"found_type": found_type})


class NeedsTranscription(Exception):
    """Audio: there is no text to parse; the caller transcribes it through the AI gateway."""

    def __init__(self, mime: str) -> None:
        super().__init__(f"{type_label(mime)} needs transcription")
        self.mime = mime


# --- Data ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """Caps checked before and while parsing one document."""

    max_bytes: int = 50 * _MB
    max_uncompressed_bytes: int = 200 * _MB
    max_compression_ratio: float = 100.0
    max_zip_entries: int = 5_000
    max_pages: int = 2_000
    max_rows: int = 100_000
    max_seconds: float = 120.0
    # Entries smaller than this are not held to the ratio: a few kB of repeated markup can
    # compress 300:1 without being a threat; the total cap still counts them. (Apache POI's
    # ZipSecureFile uses the same 1:100 ratio, with a 100 kB grace size.)
    ratio_floor_bytes: int = 1 * _MB


DEFAULT_LIMITS = ParseLimits()


@dataclass(frozen=True, slots=True)
class Section:
    text: str
    heading: str | None = None
    page: int | None = None


@dataclass(slots=True)
class ParsedDocument:
    title: str | None
    sections: list[Section]
    mime: str
    warnings: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n\n".join(section.text for section in self.sections)


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise DocumentError(
                f"Reading the document took longer than {self.seconds:g} seconds, the limit for one "
                "document. Split it into smaller files or save it in a simpler format."
            )


# --- Type detection -----------------------------------------------------------------------------

_SNIFF_BYTES = 64 * 1024
_CONTENT_TYPES_MAX = 1 * _MB

_OOXML_MAIN_TYPES = {
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml": DOCX,
    "application/vnd.openxmlformats-officedocument.presentationml.presentation.main+xml": PPTX,
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml": XLSX,
    "application/vnd.ms-word.document.macroEnabled.main+xml": (
        "application/vnd.ms-word.document.macroEnabled.12"
    ),
    "application/vnd.ms-excel.sheet.macroEnabled.main+xml": "application/vnd.ms-excel.sheet.macroEnabled.12",
    "application/vnd.ms-powerpoint.presentation.macroEnabled.main+xml": (
        "application/vnd.ms-powerpoint.presentation.macroEnabled.12"
    ),
    "application/vnd.openxmlformats-officedocument.wordprocessingml.template.main+xml": (
        "application/vnd.openxmlformats-officedocument.wordprocessingml.template"
    ),
    "application/vnd.openxmlformats-officedocument.presentationml.slideshow.main+xml": (
        "application/vnd.openxmlformats-officedocument.presentationml.slideshow"
    ),
    "application/vnd.openxmlformats-officedocument.presentationml.template.main+xml": (
        "application/vnd.openxmlformats-officedocument.presentationml.template"
    ),
    "application/vnd.openxmlformats-officedocument.spreadsheetml.template.main+xml": (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.template"
    ),
}
_OOXML_MAIN_PARTS = (
    (b"word/document.xml", DOCX),
    (b"ppt/presentation.xml", PPTX),
    (b"xl/workbook.xml", XLSX),
)
_ODF_TYPES = (
    "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.oasis.opendocument.presentation",
    "application/epub+zip",
)
_EXTENSION_TYPES = {".docx": DOCX, ".pptx": PPTX, ".xlsx": XLSX}

_MP4_AUDIO_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"F4A "}
_MP4_VIDEO_BRANDS = {
    b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"mp71", b"avc1",
    b"dash", b"M4V ", b"MSNV", b"f4v ",
}  # fmt: skip
_MP4_OTHER_BRANDS = {
    b"qt  ": "video/quicktime",
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"mif1": "image/heic",
    b"msf1": "image/heic",
    b"avif": "image/avif",
    b"3gp4": "video/3gpp",
    b"3gp5": "video/3gpp",
    b"3g2a": "video/3gpp",
}

_SIMPLE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"\x7fELF", "application/x-executable"),
    (b"MZ", "application/x-msdownload"),
    (b"\xfe\xed\xfa\xce", "application/x-mach-binary"),
    (b"\xfe\xed\xfa\xcf", "application/x-mach-binary"),
    (b"\xce\xfa\xed\xfe", "application/x-mach-binary"),
    (b"\xcf\xfa\xed\xfe", "application/x-mach-binary"),
    (b"\xca\xfe\xba\xbe", "application/java-vm"),
    (b"\x1f\x8b", "application/gzip"),
    (b"BZh", "application/x-bzip2"),
    (b"\xfd7zXZ\x00", "application/x-xz"),
    (b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (b"Rar!\x1a\x07", "application/vnd.rar"),
    (b"SQLite format 3\x00", "application/vnd.sqlite3"),
    (b"\x00asm", "application/wasm"),
    (b"{\\rtf", "application/rtf"),
    (b"OggS", OGG),
    (b"fLaC", FLAC),
    (b"ID3", MP3),
)

_MARKDOWN_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+\S", re.MULTILINE)
_MARKDOWN_FENCE = re.compile(r"^ {0,3}(```|~~~)", re.MULTILINE)
_MARKDOWN_LINK = re.compile(r"\[[^\]\n]+\]\([^)\s]+\)")
_MARKDOWN_LIST = re.compile(r"^ {0,3}(?:[-*+]|\d+[.)])[ \t]+\S", re.MULTILINE)
_MARKDOWN_EMPHASIS = re.compile(r"(\*\*|__)[^\s*_].*?\1")


def detect_type(data: bytes, filename: str | None = None) -> str:
    """The canonical MIME type of `data`, judged from its content.

    The filename only breaks ties the content leaves open: Markdown vs plain text, CSV vs plain
    text, and which office format a damaged zip was. A `.pdf` name on a PNG is a PNG. Types that
    are not allowed are returned too (`image/png`, `application/x-executable`, ...), so the caller
    can name them; `require_allowed` refuses them.
    """
    head = data[:_SNIFF_BYTES]
    extension = posixpath.splitext((filename or "").replace("\\", "/").lower())[1]
    if not data:
        return TEXT  # parse() refuses it as containing no text
    if b"%PDF-" in head[:1024]:
        return PDF
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return _zip_type(data, extension)
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return _ole_type(data)
    if head.startswith((codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return _text_type(head, extension)  # FF FE would otherwise pass for an MPEG frame header
    audio = _audio_type(head)
    if audio:
        return audio
    for magic, mime in _SIMPLE_MAGIC:
        if head.startswith(magic):
            return mime
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    return _text_type(head, extension)


def _audio_type(head: bytes) -> str | None:
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return WAV
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _MP4_AUDIO_BRANDS:
            return M4A
        if brand in _MP4_VIDEO_BRANDS:
            return MP4
        return _MP4_OTHER_BRANDS.get(brand, "video/quicktime" if brand.startswith(b"qt") else OCTET_STREAM)
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        doctype = head[:64]
        if b"webm" in doctype:
            return WEBM
        if b"matroska" in doctype:
            return "video/x-matroska"
        return OCTET_STREAM
    if len(head) >= 4 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and (head[1] >> 3) & 0x3 != 1:
        layer = (head[1] >> 1) & 0x3
        if layer == 0:
            return "audio/aac"  # ADTS: MPEG-4 AAC without a container
        bitrate_index = head[2] >> 4
        sample_rate_index = (head[2] >> 2) & 0x3
        if bitrate_index not in (0, 15) and sample_rate_index != 3:
            return MP3
    return None


def _zip_type(data: bytes, extension: str) -> str:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = {info.filename: info for info in archive.infolist()}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        # Truncated or damaged: the central directory at the end is gone, but the local headers
        # at the front still carry the names, which tell which office format it was meant to be.
        return _guess_office_type(data[: 4 * _MB], extension)
    if "[Content_Types].xml" in names:
        info = names["[Content_Types].xml"]
        if info.file_size > _CONTENT_TYPES_MAX:  # not read here; parse() will say what is wrong
            return _guess_office_type("\n".join(names).encode("utf-8", "replace"), extension)
        try:
            root = _defused_fromstring(archive.read(info))
        except Exception:
            # Unreadable or hostile (a DTD): guess from the part names so that parse() can say why.
            return _guess_office_type("\n".join(names).encode("utf-8", "replace"), extension)
        for element in root:
            content_type = element.get("ContentType", "")
            if element.tag.endswith("Override") and content_type in _OOXML_MAIN_TYPES:
                return _OOXML_MAIN_TYPES[content_type]
        return ZIP
    if "mimetype" in names and names["mimetype"].file_size < 200:
        try:
            declared = archive.read("mimetype").decode("ascii", "replace").strip()
        except Exception:
            return ZIP
        for mime in _ODF_TYPES:
            if declared == mime:
                return mime
    return ZIP


def _guess_office_type(names: bytes, extension: str) -> str:
    for marker, mime in _OOXML_MAIN_PARTS:
        if marker in names:
            return mime
    return _EXTENSION_TYPES.get(extension, ZIP)


def _defused_fromstring(xml: bytes):
    from defusedxml.ElementTree import fromstring

    return fromstring(xml, forbid_dtd=True, forbid_entities=True, forbid_external=True)


def _ole_type(data: bytes) -> str:
    """Classify a Microsoft compound file (OLE2) by the stream names in its directory."""

    def has(name: str) -> bool:
        return name.encode("utf-16-le") in data

    if has("EncryptionInfo") and has("EncryptedPackage"):
        return ENCRYPTED_OFFICE
    if has("WordDocument"):
        return "application/msword"
    if has("Workbook") or has("Book"):
        return "application/vnd.ms-excel"
    if has("PowerPoint Document"):
        return "application/vnd.ms-powerpoint"
    if has("__substg1.0_"):
        return "application/vnd.ms-outlook"
    return "application/x-ole-storage"


def _decode_sample(head: bytes) -> str | None:
    """The sample as text if it is UTF-8 (or UTF-16 with a BOM) or cp1252 and not binary."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return codecs.getincrementaldecoder("utf-16")().decode(head, final=False)
        except UnicodeDecodeError:
            return None
    # A stray NUL or control character is tolerated (parse() strips them); binary data has many.
    nul = head.count(0)
    control = sum(head.count(byte) for byte in (*range(1, 9), 11, *range(14, 27), *range(28, 32)))
    if nul > 1 + len(head) // 1000 or control > 1 + len(head) // 100:
        return None
    try:
        return codecs.getincrementaldecoder("utf-8-sig")().decode(head, final=False)
    except UnicodeDecodeError:
        pass
    try:
        return head.decode("cp1252")
    except UnicodeDecodeError:
        return None


def _text_type(head: bytes, extension: str) -> str:
    sample = _decode_sample(head)
    if sample is None:
        return OCTET_STREAM
    start = sample.lstrip("\ufeff \t\r\n")[:1024]
    lowered = start.lower()
    if start.startswith("<"):
        if "<!doctype html" in lowered or "<html" in lowered:
            return HTML
        if lowered.startswith(("<?xml", "<!doctype", "<svg")):
            return "image/svg+xml" if "<svg" in lowered else "application/xml"
        if extension in (".html", ".htm", ".xhtml"):
            return HTML  # a fragment without <html>, named as a page
    if extension in (".md", ".markdown"):
        return MARKDOWN
    if extension in (".csv", ".tsv") and _looks_like_csv(sample):
        return CSV
    if _looks_like_markdown(sample):
        return MARKDOWN
    return TEXT


def _looks_like_csv(sample: str) -> bool:
    lines = [line for line in sample.splitlines()[:50] if line.strip()]
    if len(lines) < 2:
        return False
    try:
        dialect = csv.Sniffer().sniff("\n".join(lines[:20]), delimiters=",;\t|")
    except csv.Error:
        return False
    try:
        rows = list(csv.reader(io.StringIO("\n".join(lines[:-1] if len(lines) > 2 else lines)), dialect))
    except csv.Error:
        return False
    widths = [len(row) for row in rows if row]
    return bool(widths) and widths[0] > 1 and sum(width == widths[0] for width in widths) >= 0.8 * len(widths)


def _looks_like_markdown(sample: str) -> bool:
    headings = len(_MARKDOWN_HEADING.findall(sample))
    signals = sum(
        bool(pattern.search(sample))
        for pattern in (_MARKDOWN_FENCE, _MARKDOWN_LINK, _MARKDOWN_LIST, _MARKDOWN_EMPHASIS)
    )
    return (
        headings >= 2
        or (headings >= 1 and signals >= 1)
        or signals >= 3
        or bool(_MARKDOWN_FENCE.search(sample))
    )


def require_allowed(mime: str) -> str:
    """`mime` if it is on the allow-list; otherwise `UnsupportedType` naming it."""
    if mime not in ALLOWED_TYPES:
        raise UnsupportedType(mime)
    return mime


# --- Checks before parsing ----------------------------------------------------------------------


def _check_size(data: bytes, limits: ParseLimits) -> None:
    if len(data) > limits.max_bytes:
        raise FileTooLarge(
            f"The file is {_megabytes(len(data))} MB; the limit is {_megabytes(limits.max_bytes)} MB. "
            "Split it into smaller files."
        )


def _megabytes(size: int | float) -> str:
    value = size / _MB
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}".rstrip("0").rstrip(".")


_UNSAFE_NAME = re.compile(r"(^|/)\.\.(/|$)|^/|^[A-Za-z]:|\x00")


def inspect_archive(data: bytes, limits: ParseLimits = DEFAULT_LIMITS) -> None:
    """Refuse an office file (a zip) that is a bomb, has unsafe names, or has XML with a DTD.

    Reads the zip directory only, then the prolog of each XML part (up to its root element);
    nothing is unpacked beyond that.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DocumentError(_DAMAGED) from exc
    if len(infos) > limits.max_zip_entries:
        raise DocumentError(
            f"The file contains {len(infos):,} parts, more than the limit of {limits.max_zip_entries:,}, "
            "which looks like a zip bomb."
        )
    seen: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        if _UNSAFE_NAME.search(name) or "\\" in name:
            raise DocumentError(
                "The file contains a part with an unsafe name (a path that leaves the archive), "
                "so it was not opened."
            )
        if name in seen:
            raise DocumentError("The file contains two parts with the same name, so it was not opened.")
        seen.add(name)
        if info.flag_bits & 0x1:
            raise DocumentError("The file is password-protected. Remove the password and upload it again.")
        total += info.file_size
        if info.file_size >= limits.ratio_floor_bytes and (
            info.compress_size <= 0 or info.file_size / info.compress_size > limits.max_compression_ratio
        ):
            ratio = info.file_size / max(info.compress_size, 1)
            raise DocumentError(
                f"A part of the file expands {ratio:,.0f} times when unpacked (the limit is "
                f"{limits.max_compression_ratio:g}), which looks like a zip bomb."
            )
    if total > limits.max_uncompressed_bytes:
        raise DocumentError(
            f"The file expands to more than {_megabytes(limits.max_uncompressed_bytes)} MB when unpacked "
            f"({_megabytes(total)} MB), which looks like a zip bomb."
        )
    for info in infos:
        if not info.is_dir():
            _check_xml_part(archive, info)


class _RootReached(Exception):
    pass


class _StopAtRoot:
    """A parser target that stops at the root element: all a DTD could precede has been read."""

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        raise _RootReached

    def end(self, tag: str) -> None:
        pass

    def data(self, data: str) -> None:
        pass

    def close(self) -> None:
        pass


_XML_STARTS = (b"<", b"\xef\xbb\xbf", codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, b"\x00<", b"<\x00")


def _check_xml_part(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    import defusedxml
    from defusedxml.ElementTree import DefusedXMLParser

    try:
        with archive.open(info) as stream:
            first = stream.read(4096)
            if not first.lstrip(b" \t\r\n").startswith(_XML_STARTS):
                return  # not XML: an image, a font, a binary part
            parser = DefusedXMLParser(target=_StopAtRoot(), forbid_dtd=True)
            chunk = first
            while chunk:
                parser.feed(chunk)
                chunk = stream.read(64 * 1024)
            parser.close()
    except _RootReached:
        return
    except (
        defusedxml.DTDForbidden,
        defusedxml.EntitiesForbidden,
        defusedxml.ExternalReferenceForbidden,
    ) as exc:
        raise DocumentError(
            "The file contains XML with a document type declaration (DTD), which office files never "
            "need and which is used in attacks, so it was not opened."
        ) from exc
    except Exception as exc:
        raise DocumentError(_DAMAGED) from exc


def check_before_parsing(data: bytes, mime: str, limits: ParseLimits = DEFAULT_LIMITS) -> None:
    """Every check that needs no parser: size, then the archive checks for office files."""
    _check_size(data, limits)
    if mime in OFFICE_TYPES:
        inspect_archive(data, limits)


# --- Parsing ------------------------------------------------------------------------------------


def parse(data: bytes, mime: str, *, limits: ParseLimits = DEFAULT_LIMITS) -> ParsedDocument:
    """The text of a document, in sections with headings and page numbers where the format has them.

    Raises `UnsupportedType` for a type off the allow-list, `NeedsTranscription` for audio,
    `FileTooLarge` over `max_bytes`, and `DocumentError` with a reason a person understands for
    everything else that stops it (limits, damage, passwords, no text, time).
    """
    require_allowed(mime)
    _check_size(data, limits)
    if mime in AUDIO_TYPES:
        raise NeedsTranscription(mime)
    if not data.strip():
        raise DocumentError(f"{_NO_TEXT} The file is empty.")
    check_before_parsing(data, mime, limits)
    deadline = _Deadline(limits.max_seconds)
    try:
        document = _PARSERS[mime](data, limits, deadline)
    except DocumentError:
        raise
    except MemoryError as exc:
        raise DocumentError("The document is too large to process. Split it into smaller files.") from exc
    except RecursionError as exc:
        raise DocumentError("The document is nested too deeply to be read.") from exc
    except Exception as exc:
        raise DocumentError(_DAMAGED) from exc
    sections = []
    for section in document.sections:
        text = _clean(section.text)
        if text.strip():
            heading = _clean(section.heading).strip() if section.heading else None
            sections.append(Section(text=text, heading=heading or None, page=section.page))
    if not sections:
        if mime == PDF:
            raise DocumentError(
                f"{_NO_TEXT} It may be a scanned document: text in images cannot be read, as OCR is "
                "not supported. Upload a PDF with selectable text."
            )
        raise DocumentError(_NO_TEXT)
    document.sections = sections
    if document.title:
        document.title = " ".join(_clean(document.title).split())[:500] or None
    return document


_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f\ufffe\uffff]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")


def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x0b", "\n").replace("\x0c", "\n")
    text = _CONTROL.sub("", text)
    text = unicodedata.normalize("NFC", text).replace("\u00ad", "")
    text = _TRAILING_SPACE.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()


def _decode_text(data: bytes) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace")


def _parse_text(data: bytes, limits: ParseLimits, deadline: _Deadline) -> ParsedDocument:
    return ParsedDocument(title=None, sections=[Section(_decode_text(data))], mime=TEXT)


# PDF


def _parse_pdf(data: bytes, limits: ParseLimits, deadline: _Deadline) -> ParsedDocument:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

    # A complete PDF ends with %%EOF; pypdf would otherwise rebuild what it can of a cut-off file
    # and return part of the text as if it were all of it.
    if b"%%EOF" not in data[-8192:]:
        raise DocumentError(_DAMAGED)
    reader = PdfReader(io.BytesIO(data), strict=False)
    if reader.is_encrypted:
        try:
            opened = reader.decrypt("")  # many PDFs only restrict printing or copying
        except (DependencyError, NotImplementedError, PdfReadError):
            opened = 0
        if not opened:
            raise DocumentError(
                "The PDF is password-protected; remove the password (print it to a new PDF, or save a copy "
                "without security) and upload it again."
            )
    try:
        pages = reader.pages
        page_count = len(pages)
    except FileNotDecryptedError as exc:
        raise DocumentError(
            "The PDF is password-protected; remove the password and upload it again."
        ) from exc
    if page_count > limits.max_pages:
        raise DocumentError(
            f"The PDF has {page_count:,} pages, more than the limit of {limits.max_pages:,}. Split it into "
            "smaller files."
        )
    headings = _pdf_outline_headings(reader, page_count)
    operations = 0

    def visit(operator: Any, *_: Any) -> None:
        nonlocal operations
        operations += 1
        if operations % 2000 == 0:
            deadline.check()

    sections = []
    empty = []
    for number in range(page_count):
        deadline.check()
        text = pages[number].extract_text(visitor_operand_before=visit) or ""
        if not text.strip():
            empty.append(number + 1)
        sections.append(Section(text=text, heading=headings.get(number), page=number + 1))
    warnings = []
    if empty and len(empty) < page_count:
        listed = ", ".join(str(page) for page in empty[:20]) + (", ..." if len(empty) > 20 else "")
        warnings.append(f"No text on page {listed}: scanned pages cannot be read (OCR is not supported).")
    return ParsedDocument(title=_pdf_title(reader), sections=sections, mime=PDF, warnings=warnings)


def _pdf_title(reader: Any) -> str | None:
    try:
        title = reader.metadata.title if reader.metadata else None
    except Exception:
        return None
    if (
        isinstance(title, str)
        and title.strip()
        and not title.lower().startswith(("microsoft word -", "untitled"))
    ):
        return title.strip()
    return None


def _pdf_outline_headings(reader: Any, page_count: int) -> dict[int, str]:
    """For each page index, the title of the last bookmark that starts on or before it."""
    starts: dict[int, str] = {}
    try:
        stack = [iter(reader.outline)]
        seen = 0
        while stack and seen < 10_000:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
                continue
            seen += 1
            if isinstance(item, list):
                stack.append(iter(item))
                continue
            page = reader.get_destination_page_number(item)
            title = getattr(item, "title", None)
            if isinstance(title, str) and title.strip() and page is not None and 0 <= page < page_count:
                starts.setdefault(page, title.strip())
    except Exception:
        return {}
    headings: dict[int, str] = {}
    current = None
    for page in range(page_count):
        current = starts.get(page, current)
        if current:
            headings[page] = current
    return headings


# DOCX

_HEADING_STYLE = re.compile(r"^(heading|rubrik)\s*(\d)$", re.IGNORECASE)


def _parse_docx(data: bytes, limits: ParseLimits, deadline: _Deadline) -> ParsedDocument:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    document = docx.Document(io.BytesIO(data))
    deadline.check()
    style_names: dict[str, str] = {}
    outline_styles: set[str] = set()
    for style in document.styles:
        style_id = getattr(style, "style_id", None)
        if not style_id:
            continue
        style_names[style_id] = (style.name or "").strip()
        levels = style.element.xpath("./w:pPr/w:outlineLvl/@w:val")
        if levels and levels[0].isdigit() and int(levels[0]) < 9:  # 9 is "body text"
            outline_styles.add(style_id)

    sections: list[Section] = []
    heading: str | None = None
    lines: list[str] = []
    title = (document.core_properties.title or "").strip() or None
    first_heading: str | None = None

    def flush() -> None:
        if lines:
            sections.append(Section(text="\n\n".join(lines), heading=heading))

    for count, block in enumerate(document.iter_inner_content()):
        if count % 200 == 0:
            deadline.check()
        if isinstance(block, Paragraph):
            text = block.text.strip()
            if not text:
                continue
            style_id = block._p.style or ""
            name = style_names.get(style_id, "")
            if name.lower() == "title":
                title = title or text
            if _HEADING_STYLE.match(name) or name.lower() == "title" or style_id in outline_styles:
                flush()
                heading, lines = text, [text]
                first_heading = first_heading or text
                continue
            lines.append(text)
        elif isinstance(block, Table):
            rows = _docx_table_rows(block)
            if rows:
                lines.append("\n".join(rows))
    flush()
    return ParsedDocument(title=title or first_heading, sections=sections, mime=DOCX)


def _docx_table_rows(table: Any) -> list[str]:
    rows = []
    try:
        for row in table.rows:
            seen: set[int] = set()
            cells = []
            for cell in row.cells:
                if id(cell._tc) in seen:
                    continue  # a merged cell appears once per grid column it spans
                seen.add(id(cell._tc))
                text = " ".join(cell.text.split())
                if text:
                    cells.append(text)
            if cells:
                rows.append(" | ".join(cells))
    except Exception:
        return rows
    return rows


# PPTX


def _parse_pptx(data: bytes, limits: ParseLimits, deadline: _Deadline) -> ParsedDocument:
    from pptx import Presentation

    presentation = Presentation(io.BytesIO(data))
    slides = list(presentation.slides)
    if len(slides) > limits.max_pages:
        raise DocumentError(
            f"The presentation has {len(slides):,} slides, more than the limit of {limits.max_pages:,}. "
            "Split it into smaller files."
        )
    sections = []
    first_title = None
    for number, slide in enumerate(slides, start=1):
        deadline.check()
        title_shape = slide.shapes.title
        title = " ".join(title_shape.text_frame.text.split()) if title_shape is not None else ""
        first_title = first_title or title or None
        lines = [title] if title else []
        shapes = [
            shape for shape in _pptx_shapes(slide.shapes) if title_shape is None or shape != title_shape
        ]
        shapes.sort(key=lambda shape: ((shape.top or 0), (shape.left or 0)))
        for shape in shapes:
            lines.extend(_pptx_shape_text(shape))
        if slide.has_notes_slide:
            notes = slide.notes_slide.notes_text_frame
            if notes is not None and notes.text.strip():
                lines.append(f"Notes: {notes.text.strip()}")
        heading = f"Slide {number}: {title}" if title else f"Slide {number}"
        sections.append(Section(text="\n".join(lines), heading=heading, page=number))
    title = (presentation.core_properties.title or "").strip() or first_title
    return ParsedDocument(title=title, sections=sections, mime=PPTX)


def _pptx_shapes(shapes: Any, depth: int = 0) -> list[Any]:
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    found = []
    for shape in shapes:
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP and depth < 20:
            found.extend(_pptx_shapes(shape.shapes, depth + 1))
        else:
            found.append(shape)
    return found


def _pptx_shape_text(shape: Any) -> list[str]:
    if getattr(shape, "has_text_frame", False) and shape.has_text_frame:
        text = shape.text_frame.text.strip()
        return [text] if text else []
    if getattr(shape, "has_table", False) and shape.has_table:
        rows = []
        for row in shape.table.rows:
            cells = [" ".join(cell.text.split()) for cell in row.cells]
            if any(cells):
                rows.append(" | ".join(cell for cell in cells if cell))
        return rows
    return []


# XLSX and CSV


def _cell_text(value: Any) -> str:
    import datetime

    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    if isinstance(value, datetime.datetime):
        return value.date().isoformat() if value.time() == datetime.time() else value.isoformat(sep=" ")
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return " ".join(str(value).split())


def _column_name(index: int) -> str:
    name = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        name = chr(65 + remainder) + name
    return name


class _RowWriter:
    """Turns rows into `prefix | header: value | ...` lines, the first non-empty row as the header."""

    def __init__(self, prefix: str, limits: ParseLimits, deadline: _Deadline, counter: list[int]) -> None:
        self.prefix = prefix
        self.limits = limits
        self.deadline = deadline
        self.counter = counter  # shared across the sheets of one workbook
        self.header: list[str] | None = None
        self.lines: list[str] = []
        self.seen = 0

    def add(self, values: Any) -> None:
        self.seen += 1
        if self.seen % 1000 == 0:
            self.deadline.check()
        cells = [_cell_text(value) for value in values]
        if not any(cells):
            return
        if self.header is None:
            self.header = cells
            return
        self.counter[0] += 1
        if self.counter[0] > self.limits.max_rows:
            raise DocumentError(
                f"The spreadsheet has more than {self.limits.max_rows:,} rows, the limit for one document. "
                "Split it into smaller files."
            )
        parts = [self.prefix] if self.prefix else []
        for index, cell in enumerate(cells):
            if cell:
                name = (
                    self.header[index]
                    if index < len(self.header) and self.header[index]
                    else _column_name(index)
                )
                parts.append(f"{name}: {cell}")
        self.lines.append(" | ".join(parts))

    def text(self) -> str:
        if not self.lines and self.header:  # a sheet with one row: show it as it is
            cells = [cell for cell in self.header if cell]
            return " | ".join([self.prefix, *cells] if self.prefix else cells)
        return "\n".join(self.lines)


def _parse_xlsx(data: bytes, limits: ParseLimits, deadline: _Deadline) -> ParsedDocument:
    import openpyxl

    workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        sections = []
        counter = [0]
        for sheet in workbook.worksheets:
            deadline.check()
            # The stored dimensions can claim a million rows; iterate over what is really there.
            sheet.reset_dimensions()
            writer = _RowWriter(f"Sheet: {sheet.title}", limits, deadline, counter)
            for row in sheet.iter_rows(values_only=True):
                writer.add(row)
            sections.append(Section(text=writer.text(), heading=sheet.title))
        title = (workbook.properties.title or "").strip() or None
    finally:
        workbook.close()
    return ParsedDocument(title=title, sections=sections, mime=XLSX)


def _parse_csv(data: bytes, limits: ParseLimits, deadline: _Deadline) -> ParsedDocument:
    text = _decode_text(data).replace("\x00", "")
    # The sniffer's cost grows quickly with the sample; whole lines from the first 8 kB suffice.
    sample = text[:8192].rsplit("\n", 1)[0] if len(text) > 8192 else text
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    writer = _RowWriter("", limits, deadline, [0])
    try:
        for row in csv.reader(io.StringIO(text), dialect):
            writer.add(row)
    except csv.Error as exc:
        raise DocumentError(
            "The CSV file could not be read: a field is too long or its quoting is broken."
        ) from exc
    return ParsedDocument(title=None, sections=[Section(text=writer.text())], mime=CSV)


# HTML

_REMOVED_TAGS = (
    "script", "style", "noscript", "template", "nav", "footer", "iframe", "object", "embed", "svg",
    "canvas", "form", "button", "select", "head",
)  # fmt: skip
_HEADING_TAGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_BLOCK_TAGS = {
    "p", "div", "section", "article", "main", "header", "aside", "blockquote", "ul", "ol", "li", "dl",
    "dt", "dd", "table", "thead", "tbody", "tfoot", "tr", "pre", "figure", "figcaption", "address",
    "details", "summary", "hr", "caption", "body", "center",
}  # fmt: skip
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)


def _parse_html(data: bytes, limits: ParseLimits, deadline: _Deadline) -> ParsedDocument:
    from bs4 import BeautifulSoup, Comment, Declaration, Doctype, NavigableString, ProcessingInstruction, Tag

    soup = BeautifulSoup(data, "lxml")
    deadline.check()
    title_tag = soup.find("title")
    title = " ".join(title_tag.get_text(" ").split()) if title_tag else ""
    for tag in soup.find_all(_REMOVED_TAGS):
        tag.decompose()
    # Text a reader does not see is a common carrier of prompt injections; leave it out.
    for tag in soup.find_all(True):
        if tag.decomposed:
            continue
        attrs = tag.attrs or {}
        if (
            "hidden" in attrs
            or str(attrs.get("aria-hidden", "")).lower() == "true"
            or _HIDDEN_STYLE.search(str(attrs.get("style", "")))
        ):
            tag.decompose()
    root = soup.body or soup
    skipped = (Comment, Declaration, Doctype, ProcessingInstruction)

    sections: list[Section] = []
    heading: str | None = None
    parts: list[str] = []
    first_h1: str | None = None

    def flush() -> None:
        text = _tidy_html_text("".join(parts))
        if text:
            sections.append(Section(text=text, heading=heading))

    stack: list[tuple[Any, bool]] = [(root, False)]
    visited = 0
    while stack:
        node, leaving = stack.pop()
        visited += 1
        if visited % 5000 == 0:
            deadline.check()
        if leaving:
            parts.append(_PARA_MARK if node.name in _PARAGRAPH_TAGS else _LINE_MARK)
            continue
        if isinstance(node, NavigableString):
            if not isinstance(node, skipped):
                parts.append(_WHITESPACE.sub(" ", str(node)))
            continue
        if not isinstance(node, Tag):
            continue
        name = node.name
        if name in _HEADING_TAGS:
            text = " ".join(node.get_text(" ").split())
            if text:
                flush()
                heading, parts = text, [text, _PARA_MARK]
                if name == "h1" and first_h1 is None:
                    first_h1 = text
            continue
        if name == "br":
            parts.append(_LINE_MARK)
            continue
        if name == "pre":
            parts.extend((_PARA_MARK, node.get_text(), _PARA_MARK))
            continue
        if name in ("td", "th"):
            parts.append(" | ")
        elif name == "li":
            parts.extend((_LINE_MARK, "- "))
        elif name in _BLOCK_TAGS:
            parts.append(_PARA_MARK if name in _PARAGRAPH_TAGS else _LINE_MARK)
        if name in _BLOCK_TAGS:
            stack.append((node, True))
        stack.extend((child, False) for child in reversed(list(node.children)))
    flush()
    return ParsedDocument(title=title or first_h1, sections=sections, mime=HTML)


# Layout marks while walking the tree: a run of them becomes one line break, or a blank line if
# any of them ends a paragraph, so nested blocks do not pile up empty lines.
_LINE_MARK = "\x01"
_PARA_MARK = "\x02"
_PARAGRAPH_TAGS = {"p", "table", "ul", "ol", "dl", "blockquote", "pre", "figure", "hr"}
_WHITESPACE = re.compile(r"\s+")
_MARK_RUN = re.compile(r"[ \t\n]*[\x01\x02][\x01\x02 \t\n]*")


def _tidy_html_text(text: str) -> str:
    text = _MARK_RUN.sub(lambda match: "\n\n" if _PARA_MARK in match.group() else "\n", text)
    lines = []
    for line in text.split("\n"):
        line = " ".join(line.split())
        if line.startswith("| "):
            line = line[2:]
        lines.append(line)
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


# Markdown

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_FRONT_MATTER_TITLE = re.compile(r"^title:\s*[\"']?(.*?)[\"']?\s*$", re.MULTILINE | re.IGNORECASE)


def _parse_markdown(data: bytes, limits: ParseLimits, deadline: _Deadline) -> ParsedDocument:
    text = _decode_text(data).replace("\r\n", "\n").replace("\r", "\n")
    title: str | None = None
    if text.startswith("---\n"):
        end = text.find("\n---\n", 4, 8192)
        if end == -1:
            end = text.find("\n...\n", 4, 8192)
        if end != -1:
            match = _FRONT_MATTER_TITLE.search(text[4:end])
            title = match.group(1).strip() if match else None
            text = text[end + 5 :]
    sections: list[Section] = []
    heading: str | None = None
    lines: list[str] = []
    fence: str | None = None
    first_heading: tuple[int, str] | None = None

    def flush() -> None:
        if "".join(lines).strip():
            sections.append(Section(text="\n".join(lines).strip(), heading=heading))

    for count, line in enumerate(text.split("\n")):
        if count % 5000 == 0:
            deadline.check()
        fence_match = _FENCE.match(line)
        if fence is not None:
            lines.append(line)
            if (
                fence_match
                and fence_match.group(1)[0] == fence[0]
                and len(fence_match.group(1)) >= len(fence)
            ):
                fence = None
            continue
        if fence_match:
            fence = fence_match.group(1)
            lines.append(line)
            continue
        atx = _ATX.match(line)
        if atx:
            text_of_heading = (atx.group(2) or "").strip()
            if text_of_heading:
                flush()
                heading, lines = text_of_heading, [text_of_heading, ""]
                level = len(atx.group(1))
                if first_heading is None or (level == 1 and first_heading[0] != 1):
                    first_heading = (level, text_of_heading)
            continue
        setext = _SETEXT.match(line)
        if setext and lines and lines[-1].strip() and not _MARKDOWN_LIST.match(lines[-1]):
            previous = lines.pop().strip()
            flush()
            heading, lines = previous, [previous, ""]
            level = 1 if setext.group(1)[0] == "=" else 2
            if first_heading is None or (level == 1 and first_heading[0] != 1):
                first_heading = (level, previous)
            continue
        lines.append(line)
    flush()
    return ParsedDocument(
        title=title or (first_heading[1] if first_heading else None), sections=sections, mime=MARKDOWN
    )


_PARSERS: dict[str, Callable[[bytes, ParseLimits, _Deadline], ParsedDocument]] = {
    PDF: _parse_pdf,
    DOCX: _parse_docx,
    PPTX: _parse_pptx,
    XLSX: _parse_xlsx,
    CSV: _parse_csv,
    HTML: _parse_html,
    MARKDOWN: _parse_markdown,
    TEXT: _parse_text,
}


# --- Isolation ----------------------------------------------------------------------------------

_CHILD_CODE = "from allting.knowledge.parsing import _child_main; _child_main()"
_CHILD_START_SECONDS = 15.0
_ERROR_TYPES: dict[str, type[DocumentError]] = {"DocumentError": DocumentError, "FileTooLarge": FileTooLarge}


def parse_isolated(
    data: bytes, mime: str, *, limits: ParseLimits = DEFAULT_LIMITS, max_memory_mb: int = 2048
) -> ParsedDocument:
    """`parse` in a child process that is killed when it runs out of time or memory.

    The child gets `limits.max_seconds` of CPU and wall-clock time (plus a grace for starting),
    an address-space cap of `max_memory_mb`, no right to write files, and an environment without
    the parent's secrets. Blocking: call it from a worker thread in async code.
    """
    require_allowed(mime)
    _check_size(data, limits)
    if mime in AUDIO_TYPES:
        raise NeedsTranscription(mime)
    request = json.dumps({"mime": mime, "limits": asdict(limits), "max_memory_mb": max_memory_mb})
    package_root = str(Path(__file__).resolve().parents[2])
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
        "PYTHONDONTWRITEBYTECODE": "1",
        "OPENPYXL_DEFUSEDXML": "True",
    }
    timeout = limits.max_seconds + _CHILD_START_SECONDS
    try:
        completed = subprocess.run(
            [sys.executable, "-c", _CHILD_CODE, request],
            input=data,
            capture_output=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise DocumentError(
            f"Reading the document took longer than {limits.max_seconds:g} seconds, the limit for one "
            "document. Split it into smaller files or save it in a simpler format."
        ) from exc
    try:
        result = json.loads(completed.stdout)
    except ValueError:
        result = None
    if completed.returncode != 0 or not isinstance(result, dict):
        # Killed by the CPU limit, or died of the memory limit in a C library.
        raise DocumentError(
            "Reading the document needed more memory or time than one document may use. Split it into "
            "smaller files or save it in a simpler format."
        )
    if not result.get("ok"):
        kind = result.get("kind")
        if kind == "UnsupportedType":
            raise UnsupportedType(result.get("found_type") or OCTET_STREAM)
        raise _ERROR_TYPES.get(kind, DocumentError)(str(result.get("message") or _DAMAGED))
    return ParsedDocument(
        title=result.get("title"),
        sections=[Section(text=s["text"], heading=s["heading"], page=s["page"]) for s in result["sections"]],
        mime=result["mime"],
        warnings=list(result.get("warnings") or []),
    )


def _child_main() -> None:
    import resource

    request = json.loads(sys.argv[1])
    limits = ParseLimits(**request["limits"])
    memory = int(request["max_memory_mb"]) * _MB
    cpu = math.ceil(limits.max_seconds) + 2
    for limit, value in (
        (resource.RLIMIT_AS, memory),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, 0),
    ):
        _soft, hard = resource.getrlimit(limit)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(limit, (value, hard))
    data = sys.stdin.buffer.read()
    try:
        document = parse(data, request["mime"], limits=limits)
        result: dict[str, Any] = {
            "ok": True,
            "title": document.title,
            "mime": document.mime,
            "sections": [asdict(section) for section in document.sections],
            "warnings": document.warnings,
        }
    except UnsupportedType as exc:
        result = {
            "ok": False,
            "kind": "UnsupportedType",
            "found_type": exc.found_type,
            "message": exc.message,
        }
    except DocumentError as exc:
        result = {"ok": False, "kind": type(exc).__name__, "message": exc.message}
    except MemoryError:
        result = {"ok": False, "kind": "DocumentError", "message": "The document is too large to process."}
    sys.stdout.write(json.dumps(result))
    sys.stdout.flush()
