"""Streaming SCANCO AIM writer: native grey values and masks that IPL and the scanner's tools can read.

Only two kinds of volume go to AIM (IPL works on native values and masks): ``native`` (the file's
own integers, D1Tshort for an ISQ or short AIM) and ``mask`` (uint8 0/1 slabs, written as a char AIM
with IPL's object value 127). Asking for HU, density or µ as AIM is a usage error of the engine.

Masks are stored D1TbinCmp, the two-value run-length coding: that is what IPL writes for segmented
images (both real masks we have, TRAB_1240_SEG.AIM from the XtremeCT II and DB_07_..._MASK.AIM, are
binCmp) and it is the one compressed type every independent reader decodes correctly (ITK misreads
charCmp). Value 1 is the first voxel's value, value 2 the other.

Streaming: the pre-header, image struct and processing log are written first with the data length of
the final file where it is known (uncompressed) or a placeholder (binCmp); slabs go to disk as they
come (binCmp: compressed slab by slab, a run crossing a slab boundary is carried over), and
:meth:`AimVolumeWriter.close` patches the two binCmp lengths and pads the file to 512-byte blocks as
SCANCO's VMS files are. Memory stays at one slab.

Geometry and log: element size and position are the source's (``spec.source``: an AIM keeps its
``position_voxels``; an ISQ has position 0); a volume whose origin is shifted by whole voxels from the
source's (a sub-region) gets the position plus that shift. The processing log is the source's own
(an ISQ's header fields are turned into the log IPL's ISQ_TO_AIM writes: original file, dimensions,
scanner, calibration, data range) followed by a block of lines saying what ScancoUnits derived
(``spec.derivation``). Version: v020 like the scanner's files, v030 when the voxel block could pass
2 GiB or a position does not fit 32 bits.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np

from .compression import D1T_BIN_CMP, BinCmpStreamEncoder
from .format import _WRITE_TYPES, _float32_to_vax_bytes, aim_header_bytes
from .log import build_log, calibration_lines, format_line, scanner_lines
from ...io.transaction import AtomicOutputSet
from ...core.header import ScancoHeader
from ...core.quantities import is_label, storage_key
from ..writers import SlabWriter, VolumeFormat, VolumeSpec, register_format
from ..vms import datetime_to_log_date

__all__ = ["AimVolumeWriter", "derived_log_text", "aim_position_for", "AIM_QUANTITIES", "MASK_OBJECT_VALUE",
           "SOFTWARE_NAME"]

#: what the AIM format accepts (registry quantities)
AIM_QUANTITIES = ("native", "mask")
#: IPL's value of object voxels in char masks
MASK_OBJECT_VALUE = 127
SOFTWARE_NAME = "ScancoUnits"
_V020_MAX_BLOCK = (1 << 31) - 1
_INT32 = (-(1 << 31), (1 << 31) - 1)
_BLOCK = 512
_SEPARATOR = "!" + "-" * 79
_D1T_FLOAT_VAX, _D1T_FLOAT_IEEE = 0x00040004, 0x001A0004


def _software() -> str:
    from ... import __version__

    return f"{SOFTWARE_NAME} {__version__}"


# ---------------------------------------------------------------------------------------------------
# processing log
# ---------------------------------------------------------------------------------------------------


def _isq_log(source: ScancoHeader) -> str:
    """The log IPL's ISQ_TO_AIM would start with, from an ISQ header (no log of its own)."""
    nx, ny, nz = source.dimensions
    dim_um = [round(n * s * 1000.0) for n, s in zip(source.dimensions, source.voxel_size_mm)]
    pairs = [("Original file", os.path.basename(source.path)),
             ("Orig-ISQ-Dim-p", f"{nx} {ny} {nz}"),
             ("Orig-ISQ-Dim-um", " ".join(str(v) for v in dim_um))]
    pairs += scanner_lines(source.scanner)
    pairs += calibration_lines(source.calibration)
    for key, name in (("Minimum data value", "min_data_value"), ("Maximum data value", "max_data_value")):
        value = source.raw_field(name)
        if value is not None:
            pairs.append((key, f"{float(value):.5f}"))
    return build_log(pairs, created_by=f"{_software()} (from ISQ)", time_text=_now())


def _now() -> str:
    return datetime_to_log_date(_dt.datetime.now())


def _log_lines(lines: Iterable) -> list:
    out = []
    for item in lines:
        if isinstance(item, tuple) and len(item) == 2:
            text = format_line(str(item[0]), str(item[1]).replace("\n", " "))
            out.append(text)
            continue
        for line in str(item).replace("\r\n", "\n").replace("\r", "\n").split("\n"):
            line = line.rstrip().replace("\x00", " ")
            if line:
                out.append(line)
    return out


def derived_log_text(source: Optional[ScancoHeader], derivation: Sequence = (), *,
                     source_lines: bool = True) -> str:
    """Processing log of an AIM derived from ``source``: the source's log (an AIM's own text; for an
    ISQ the lines IPL's ISQ_TO_AIM writes) and a block naming ScancoUnits, the time, the source file
    and the ``derivation`` lines (strings, or (key, value) pairs laid out like IPL's)."""
    if source is None:
        text = build_log([], created_by=_software(), time_text=_now())
    elif source.format == "ISQ" or not source.processing_log.strip():
        text = _isq_log(source) if source.format == "ISQ" else build_log(
            calibration_lines(source.calibration) + scanner_lines(source.scanner),
            created_by=_software(), time_text=_now())
    else:
        text = source.processing_log.split("\x00", 1)[0]
    if text and not text.endswith("\n"):
        text += "\n"
    last_line = text.rstrip().rsplit("\n", 1)[-1]
    block = [] if last_line.startswith("!---") else [_SEPARATOR]
    block += [format_line("Processed by", _software()), format_line("Processing time", _now())]
    if source is not None and source_lines:
        block.append(format_line("Source file", os.path.basename(source.path) or source.path))
    block += _log_lines(derivation)
    block.append(_SEPARATOR)
    return text + "\n".join(block) + "\n"


# ---------------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------------


def _same_size(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=0.0)


def aim_position_for(source: Optional[ScancoHeader], spacing_mm, origin_mm) -> Tuple[Tuple[int, int, int],
                                                                                     Tuple[float, float, float]]:
    """(position_voxels, element_size_mm) of a volume with this LPS grid.

    With a source of the same voxel size: the source's exact element size and its position plus the
    whole-voxel shift of ``origin_mm`` from the source's origin (0 for the source's own grid). Without
    one: ``round(origin / spacing)``. A shift that is not whole voxels is refused (AIM positions are
    integers).
    """
    spacing = tuple(float(v) for v in spacing_mm)
    origin = tuple(float(v) for v in origin_mm)
    if source is not None and all(_same_size(a, b) for a, b in zip(spacing, source.voxel_size_mm)):
        sizes = tuple(float(v) for v in source.voxel_size_mm)
        base_pos, base_origin = source.position_voxels, source.origin_mm
    else:
        sizes, base_pos, base_origin = spacing, (0, 0, 0), (0.0, 0.0, 0.0)
    position = []
    for axis, o, b, s, p in zip("xyz", origin, base_origin, sizes, base_pos):
        shift = (o - b) / s
        whole = round(shift)
        if abs(shift - whole) > 1e-3:
            raise ValueError(f"the origin along {axis} is {shift:.4f} voxels from the source grid; an AIM "
                             "position must be a whole number of voxels")
        position.append(int(p) + int(whole))
    return tuple(position), sizes


# ---------------------------------------------------------------------------------------------------
# writer
# ---------------------------------------------------------------------------------------------------


class AimVolumeWriter(SlabWriter):
    """Stream a (z, y, x) volume into an AIM file, slab by slab.

    * ``mask=True``: slabs of any integer/bool type, non-zero = object; stored as D1TbinCmp 0/127.
    * ``mask=False``: native values; int16 -> D1Tshort, int8 -> D1Tchar, uint8, uint16, int32, and
      float32 (VAX D1Tfloat in v020, IEEE D1Ti3efloat in v030, as :func:`~ScancoUnitsLib.formats.aim.format.write_aim`).
    * ``version``: 20, 30 or None (v020 unless the data or the position need v030).
    * ``atomic``: the :class:`AtomicOutputSet` to join (its owner commits); without one the writer
      uses its own and commits it in :meth:`close`.
    """

    kind = "AIM"
    accepts_rows = True  # voxels go out in file order (raw, VAX floats or binCmp runs): row pieces too

    def __init__(self, path, shape_zyx, dtype, *, voxel_size_mm, position_voxels=(0, 0, 0),
                 processing_log: str = "", mask: bool = False, version: Optional[int] = None,
                 atomic: Optional[AtomicOutputSet] = None, overwrite: bool = False):
        path = Path(os.path.abspath(os.fspath(path)))
        shape = tuple(int(n) for n in shape_zyx)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"{path}: shape_zyx must be 3 positive integers, not {shape_zyx!r}")
        nz, ny, nx = shape
        self.mask = bool(mask)
        super().__init__(path, shape, np.dtype(dtype), atomic, overwrite=overwrite)
        sizes = tuple(float(v) for v in voxel_size_mm)
        if len(sizes) != 3 or not all(math.isfinite(s) and s > 0 for s in sizes):
            raise ValueError(f"{self.path}: voxel size must be three positive numbers in mm, not {voxel_size_mm!r}")
        self.position_voxels = tuple(int(p) for p in position_voxels)
        voxels = nx * ny * nz
        if self.mask:
            if self.dtype.kind not in "biu":
                raise ValueError(f"{self.path}: a mask AIM needs integer or bool slabs, not {self.dtype.name}")
            itemsize, type_code = 1, D1T_BIN_CMP
        elif self.dtype == np.float32:
            itemsize, type_code = 4, None  # depends on the version
        else:
            type_code = _WRITE_TYPES.get(self.dtype.name)
            if type_code is None:
                raise ValueError(f"{self.path}: cannot write {self.dtype.name} voxels to an AIM")
            itemsize = self.dtype.itemsize
        # binCmp never takes more than one byte a voxel (+ its 6 to 10 header bytes)
        worst_block = voxels * itemsize + (10 if self.mask else 0)
        if version is None:
            fits = worst_block <= _V020_MAX_BLOCK and all(_INT32[0] <= p <= _INT32[1] for p in self.position_voxels)
            version = 20 if fits else 30
        if version not in (20, 30):
            raise ValueError(f"AIM version must be 20 or 30, not {version!r}")
        if version == 20 and worst_block > _V020_MAX_BLOCK:
            raise ValueError(f"{self.path}: {voxels} voxels need AIM v030 (v020 holds at most 2 GiB)")
        if version == 20 and not all(_INT32[0] <= p <= _INT32[1] for p in self.position_voxels):
            raise ValueError(f"{self.path}: position {self.position_voxels} needs AIM v030 (v020 stores int32)")
        self.version = version
        if type_code is None:
            type_code = _D1T_FLOAT_VAX if version == 20 else _D1T_FLOAT_IEEE
        self.type_code = type_code
        self._length_bytes = 8 if version == 30 else 4
        log = processing_log.split("\x00", 1)[0]
        self.log_bytes = log.encode("latin-1", errors="replace") + b"\x00"
        self._data_bytes = None if self.mask else voxels * itemsize
        head = aim_header_bytes(version, type_code, (nx, ny, nz), self.position_voxels, sizes,
                                len(self.log_bytes), self._data_bytes or 0)
        self._data_at = len(head) + len(self.log_bytes)
        self._encoder = BinCmpStreamEncoder(MASK_OBJECT_VALUE, 0) if self.mask else None
        self._file = None
        def start():
            self._file = self._set.add(self.path)
            self._file.write(head)
            self._file.write(self.log_bytes)
            if self.mask:  # length field + value pair, patched at close
                self._file.write(b"\x00" * (self._length_bytes + 2))

        self._guarded(self.path, start)
        self._set.on_commit(self.close)

    def write_slab(self, array) -> None:
        """Append the slices of ``array`` ((n, y, x) or (y, x))."""
        arr = self._checked_slab(array, same_dtype=False)
        if arr is None:
            return
        if self.mask:
            if arr.dtype.kind not in "biu":
                raise ValueError(f"{self.path}: mask slabs must be integer or bool, not {arr.dtype.name}")
        elif arr.dtype.newbyteorder("=") != self.dtype.newbyteorder("="):
            raise ValueError(f"{self.path}: slab has voxel type {arr.dtype.name}, the file holds {self.dtype.name}")
        def write():
            if self.mask:
                data = self._encoder.feed(arr)
            elif self.type_code == _D1T_FLOAT_VAX:
                try:
                    data = _float32_to_vax_bytes(arr)
                except ValueError as exc:
                    raise ValueError(f"{self.path}: {exc} (AIM v020 stores VAX floats; write version 30)") from None
            else:
                data = memoryview(np.ascontiguousarray(arr, self.dtype.newbyteorder("<"))).cast("B")
            if len(data):
                self._file.write(data)

        self._guarded(self.path, write)
        self._advance(arr)

    def _finish(self) -> None:
        data_bytes = self._data_bytes
        if self.mask:
            tail = self._encoder.finish()
            self._file.write(tail)
            block_header = self._encoder.block_header(self._length_bytes)
            data_bytes = self._length_bytes + 2 + self._encoder.run_bytes
        total = self._data_at + data_bytes
        self._file.write(b"\x00" * (-total % _BLOCK))  # VMS 512-byte records (ITK needs >= 512 bytes)
        if self.mask:
            self._file.seek(self._data_at)
            self._file.write(block_header)
            # data length: 4th entry of the pre-header (v020 int32 at byte 12, v030 int64 at byte 40)
            if self.version == 20:
                self._file.seek(12)
                self._file.write(int(data_bytes).to_bytes(4, "little"))
            else:
                self._file.seek(16 + 24)
                self._file.write(int(data_bytes).to_bytes(8, "little"))
        self._file.close()


# ---- registration in the writer seam ------------------------------------------------------------
def _aim_paths(spec: VolumeSpec) -> list:
    base = Path(spec.base_path)
    return [base.with_name(base.name + ".AIM")]


def _open_aim(spec: VolumeSpec, atomic: AtomicOutputSet) -> AimVolumeWriter:
    if storage_key(spec.quantity) not in AIM_QUANTITIES:
        raise ValueError(f"AIM output holds native values or masks only, not {spec.quantity!r}")
    position, sizes = aim_position_for(spec.source, spec.spacing_mm, spec.origin_mm)
    return AimVolumeWriter(_aim_paths(spec)[0], spec.shape_zyx, spec.dtype, voxel_size_mm=sizes,
                           position_voxels=position, processing_log=derived_log_text(spec.source, spec.derivation),
                           mask=is_label(spec.quantity), atomic=atomic)


def _aim_stored(quantity: str, dtype: np.dtype):
    """Masks are IPL char masks: int8, object voxels 127 (the output's 1), background 0."""
    return {"dtype": "int8", "object_value": MASK_OBJECT_VALUE} if is_label(quantity) else None


register_format(VolumeFormat("aim", "SCANCO AIM (IPL, native values and masks)", _aim_paths, _open_aim,
                             quantities=AIM_QUANTITIES, stored=_aim_stored))
