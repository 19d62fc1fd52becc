"""The input-format seam: what a SCANCO file type must say so that the reader can open it.

A format registers an :class:`InputFormat` (its module calls :func:`register_input_format` at import);
:mod:`.reader` asks each registered format, in order, whether the first bytes are its own. Adding an
input format is one module that parses its header into a ``ScancoHeader`` and registers itself here,
plus its import in :mod:`.reader`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from ..core.header import ScancoHeader

#: bytes the magic of every format fits in (what :func:`~.reader.sniff_format` reads)
MAGIC_BYTES = 16


@dataclass(frozen=True)
class InputFormat:
    """``sniff(first_bytes)``: the file's type as shown to users (``"AIM v030"``) or None when the bytes
    are not this format's. ``header_bytes_needed(first_bytes)``: bytes from the file start to the end of
    the header (unchecked: the reader bounds it). ``parse_header(head, path, file_size)``: the header.
    ``refusal(first_bytes)``: a reason why a file this format recognises cannot be read (e.g. an
    unsupported version), or None."""

    name: str
    sniff: Callable[[bytes], Optional[str]]
    header_bytes_needed: Callable[[bytes], int]
    parse_header: Callable[[bytes, str, int], ScancoHeader]
    refusal: Optional[Callable[[bytes], Optional[str]]] = None


_INPUT_FORMATS: List[InputFormat] = []


def register_input_format(fmt: InputFormat) -> InputFormat:
    _INPUT_FORMATS[:] = [f for f in _INPUT_FORMATS if f.name != fmt.name] + [fmt]
    return fmt


def input_formats() -> Tuple[InputFormat, ...]:
    return tuple(_INPUT_FORMATS)


def recognise(first_bytes: bytes) -> Tuple[Optional[InputFormat], Optional[str]]:
    """``(format, type label)`` of the first bytes; ``(None, reason)`` for a file a format recognises
    but refuses; ``(None, None)`` when no format knows them."""
    for fmt in _INPUT_FORMATS:
        label = fmt.sniff(first_bytes)
        if label is not None:
            return fmt, label
    for fmt in _INPUT_FORMATS:
        reason = fmt.refusal(first_bytes) if fmt.refusal is not None else None
        if reason:
            return None, reason
    return None, None
