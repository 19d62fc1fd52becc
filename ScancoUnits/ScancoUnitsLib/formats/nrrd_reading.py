"""Read back the NRRD files ScancoUnits writes (attached or detached, raw or gzip).

A small reader for our own outputs (demo, reports, checks); it is not a general NRRD reader.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from ..errors import ScancoError

_TYPES = {"signed char": "i1", "int8": "i1", "uchar": "u1", "unsigned char": "u1", "uint8": "u1",
          "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4",
          "float": "f4", "double": "f8"}


class NrrdReadError(ScancoError, ValueError):
    pass


def read_nrrd_header(path) -> Tuple[Dict[str, str], Dict[str, str], int]:
    """(fields, key_values, byte offset of attached data)."""
    fields: Dict[str, str] = {}
    key_values: Dict[str, str] = {}
    with open(path, "rb") as f:
        magic = f.readline()
        if not magic.startswith(b"NRRD000"):
            raise NrrdReadError(f"{path}: not a NRRD file")
        while True:
            line = f.readline()
            if not line or line in (b"\n", b"\r\n"):
                break
            text = line.decode("latin-1").rstrip("\r\n")
            if text.startswith("#"):
                continue
            if ":=" in text:
                key, value = text.split(":=", 1)
                key_values[key] = value.replace("\\n", "\n").replace("\\\\", "\\")
            elif ": " in text:
                key, value = text.split(": ", 1)
                fields[key.strip()] = value.strip()
        return fields, key_values, f.tell()


def read_nrrd_volume(path) -> np.ndarray:
    """The voxel array (z, y, x) of a 3-D NRRD written by ScancoUnits."""
    fields, _, offset = read_nrrd_header(path)
    sizes = [int(s) for s in fields["sizes"].split()]
    dtype = np.dtype(_TYPES[fields["type"]]).newbyteorder("<" if fields.get("endian", "little") == "little" else ">")
    data_file = fields.get("data file") or fields.get("datafile")
    if data_file:
        source, offset = Path(path).parent / data_file, 0
    else:
        source = Path(path)
    with open(source, "rb") as f:
        f.seek(offset)
        if fields.get("encoding") in ("gzip", "gz"):
            raw = gzip.GzipFile(fileobj=f).read()
        else:
            raw = f.read()
    count = int(np.prod(sizes))
    if len(raw) < count * dtype.itemsize:
        raise NrrdReadError(f"{path}: data shorter than its sizes")
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(sizes[::-1]).astype(dtype.newbyteorder("="))
