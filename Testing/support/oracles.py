"""Independent reference implementations (test oracles): ITKIOScanco and aimio-py.

Versions: itk 5.4.7 + itk-ioscanco 1.0.1, aimio-py 0.4.1 (AimIO C++ bindings), all in .venv.
Each public function runs ONE subprocess (``Testing/support/oracle_worker.py``) that imports only one of the
two libraries (importing both in one process has segfaulted on large files; each import costs ~1-3 s).
Use :func:`itk_batch` / :func:`aimio_batch` to run many operations in one subprocess.

Conventions (details and measured numbers: ``.agent/ORACLE_NOTES.md``):

* Arrays are always numpy (z, y, x), x fastest, exactly as both libraries return them.
* Triples in ``info`` (spacing, origin, dimensions_xyz, position, element_size) are (x, y, z).
* ITK: origin = AIM position x spacing (ISQ: always 0); identity direction. ITK overwrites the voxels
  of calibrated files with TRUNCATED integer HU (see ``info["values_are"]``); compare those against
  :func:`itk_hu_from_native` applied to native values (bit-exact replica of ITK's arithmetic).
* aimio-py: native values as stored (AIM int16 / int8 incl. decoded binCmp/charCmp; ISQ int16);
  ``origin`` = position x element_size, ``vtkbone_origin`` = (position + 0.5) x element_size.

This module only uses numpy + stdlib and never imports ScancoUnitsLib.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

TESTING_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTING_DIR.parents[1]
WORKER = TESTING_DIR / "oracle_worker.py"

#: Default ITK ISQ creation date (the ISQ writer throws without one).
DEFAULT_CREATION_DATE = "24-NOV-2026 10:11:12.340"

CALIBRATION_KEYS = (
    "mu_scaling", "mu_water_per_cm", "density_slope", "density_intercept", "density_unit",
    "calibration_type", "calibration_text",
)


class OracleError(RuntimeError):
    """An oracle operation raised inside the worker (the library refused or failed)."""

    def __init__(self, op: str, error_type: str, message: str, traceback_text: str = ""):
        super().__init__("%s failed: %s: %s" % (op, error_type, message))
        self.op = op
        self.error_type = error_type
        self.message = message
        self.traceback_text = traceback_text


class OracleCrash(RuntimeError):
    """The worker process itself died (segfault, import failure, timeout)."""


def real_data_dir() -> Optional[Path]:
    """Folder with the real SCANCO files (``../shared/data/real`` from the repo), or None."""
    env = os.environ.get("SCANCO_REAL_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data" / "real")
    for cand in candidates:
        if cand.is_dir():
            return cand
    return None


def _python() -> str:
    env = os.environ.get("SCANCO_ORACLE_PYTHON")
    if env:
        return env
    venv = REPO_ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _calibration_dict(calibration) -> Optional[Dict[str, Any]]:
    """Accept a dict with CALIBRATION_KEYS or any object with those attributes (header.Calibration)."""
    if calibration is None:
        return None
    if isinstance(calibration, dict):
        unknown = set(calibration) - set(CALIBRATION_KEYS)
        if unknown:
            raise ValueError("unknown calibration keys: %s" % sorted(unknown))
        return dict(calibration)
    return {k: getattr(calibration, k) for k in CALIBRATION_KEYS if getattr(calibration, k, None) is not None}


# ---------------------------------------------------------------------------------------------------
# batching


_ORACLE_MODULES = {"itk": "itk", "aimio": "py_aimio"}


@functools.lru_cache(maxsize=None)
def oracle_installed(library: str) -> bool:
    """Whether the oracle's Python can import ``library`` (itk + itk-ioscanco, or aimio-py)."""
    probe = subprocess.run([_python(), "-c", "import %s" % _ORACLE_MODULES[library]], capture_output=True)
    return probe.returncode == 0


def _run(library: str, ops: Sequence[Dict[str, Any]], timeout_s: float = 600.0) -> List[Tuple[Optional[np.ndarray], Dict[str, Any]]]:
    """Run ops in one worker. Returns [(array or None, result dict)] with result['ok'] per op. A test
    whose oracle is not installed is skipped (the oracles are test extras, not the core)."""
    if not oracle_installed(library):
        import pytest

        pytest.skip("the %s oracle is not installed" % library)
    with tempfile.TemporaryDirectory(prefix="scanco_oracle_") as tmp:
        prepared = []
        for i, op in enumerate(ops):
            op = dict(op)
            if "array" in op and not isinstance(op["array"], str):
                arr_path = os.path.join(tmp, "in_%d.npy" % i)
                np.save(arr_path, np.ascontiguousarray(op["array"]))
                op["array"] = arr_path
            for key in ("path",):
                if key in op:
                    op[key] = os.fspath(op[key])
            prepared.append(op)
        req_path = os.path.join(tmp, "request.json")
        with open(req_path, "w", encoding="utf-8") as handle:
            json.dump({"library": library, "out_dir": tmp, "ops": prepared}, handle)
        try:
            proc = subprocess.run([_python(), str(WORKER), req_path], capture_output=True, text=True,
                                  timeout=timeout_s, cwd=tmp)
        except subprocess.TimeoutExpired as exc:
            raise OracleCrash("%s worker timed out after %s s" % (library, timeout_s)) from exc
        results_path = os.path.join(tmp, "results.json")
        if proc.returncode != 0 or not os.path.exists(results_path):
            raise OracleCrash("%s worker exited with %s: %s" % (library, proc.returncode, proc.stderr[-3000:]))
        with open(results_path, "r", encoding="utf-8") as handle:
            results = json.load(handle)
        out = []
        for res in results:
            arr = None
            if res.get("array"):
                arr = np.load(os.path.join(tmp, res["array"]))
            res["stderr"] = proc.stderr
            out.append((arr, res))
        return out


def _one(library: str, op: Dict[str, Any]):
    arr, res = _run(library, [op])[0]
    if not res["ok"]:
        raise OracleError(op["op"], res.get("error_type", "?"), res.get("error", "?"), res.get("traceback", ""))
    return arr, res["info"]


def itk_batch(ops: Sequence[Dict[str, Any]]) -> List[Tuple[Optional[np.ndarray], Dict[str, Any]]]:
    """Many ITK ops in one subprocess, in order. Each op is a dict with "op" in
    {"itk_read", "itk_info", "itk_write_isq", "itk_write_aim"} and the keyword arguments of the
    function of that name (``array`` may be an ndarray). Returns [(array|None, result)], where
    result = {"ok", "op", "info", "error", "error_type"}; errors do not raise."""
    return _run("itk", [_normalise_itk_op(op) for op in ops])


def aimio_batch(ops: Sequence[Dict[str, Any]]) -> List[Tuple[Optional[np.ndarray], Dict[str, Any]]]:
    """Like :func:`itk_batch` for {"aimio_read", "aimio_info", "aimio_write_aim"}."""
    return _run("aimio", [_normalise_aimio_op(op) for op in ops])


def _normalise_itk_op(op: Dict[str, Any]) -> Dict[str, Any]:
    op = dict(op)
    if op["op"] in ("itk_write_isq", "itk_write_aim"):
        op["calibration"] = _calibration_dict(op.get("calibration"))
        mode = op.get("calibration_mode", "native")
        if mode not in ("native", "itk_hu"):
            raise ValueError("calibration_mode must be 'native' or 'itk_hu'")
        if "spacing_mm" in op:
            op["spacing_mm"] = [float(v) for v in op["spacing_mm"]]
    if op["op"] == "itk_write_isq":
        arr = op.get("array")
        if isinstance(arr, np.ndarray) and arr.dtype != np.int16:
            raise ValueError("itk_write_isq expects int16 (ITK would write other types with a wrong header)")
    return op


def _normalise_aimio_op(op: Dict[str, Any]) -> Dict[str, Any]:
    op = dict(op)
    if op["op"] == "aimio_write_aim":
        cal = op.pop("calibration", None)
        if cal is not None:
            if op.get("processing_log") is not None:
                raise ValueError("give processing_log or calibration, not both")
            op["processing_log"] = make_processing_log(_calibration_dict(cal))
        op["spacing_mm"] = [float(v) for v in op["spacing_mm"]]
    return op


# ---------------------------------------------------------------------------------------------------
# ITK


def itk_read(path, *, pixel_type: Optional[str] = None, extension: Optional[str] = None):
    """Read with ``itk.imread`` (ITKIOScanco). Returns ``(array_zyx, info)``.

    * ``pixel_type``: None = the file's type, except char files (itk.SC is not wrapped) which are
      read as "SS" (int16, sign kept). Any itk type name ("SS", "UC", "F"...) may be forced.
    * ``extension``: ITK picks its header parser by extension (.isq/.aim/.rsq/.rad, any case, no
      ';1'); e.g. extension=".isq" reads through a symlink named ``input_N.isq``.

    info keys: ``spacing``/``origin`` (x,y,z, from the image), ``direction`` (3x3), ``shape_zyx``,
    ``dtype``, ``image_class``, ``file_component_type`` ("short", "char", "float"...),
    ``read_pixel_type``, ``metadata`` (every readable key: MuScaling, MuWater, RescaleSlope,
    RescaleIntercept, RescaleUnits, RescaleType, CalibrationData, CreationDate, ModificationDate,
    PatientName, DataRange [raw units], PhysicalDimensions, ... plus ITK_original_spacing/direction),
    ``metadata_types``, ``metadata_unreadable`` (["PixelDimensions"]), ``io_getters`` (ScancoImageIO
    Get* values), ``itk_hu_condition``, ``aim_storage_type_code``, ``itk_rescaled_to_hu`` and
    ``values_are`` ("hu_truncated" or "native": ITK's own rule replicated, see ORACLE_NOTES),
    ``min``/``max``.
    """
    return _one("itk", {"op": "itk_read", "path": os.fspath(path), "pixel_type": pixel_type,
                        "extension": extension})


def itk_info(path, *, extension: Optional[str] = None) -> Dict[str, Any]:
    """Header only through ScancoImageIO.ReadImageInformation (no voxels): dimensions_xyz,
    io_spacing, io_origin, io_getters, metadata, itk_rescaled_to_hu prediction."""
    return _one("itk", {"op": "itk_info", "path": os.fspath(path), "extension": extension})[1]


def itk_write_isq(path, array_zyx_int16, spacing_mm, calibration=None, *, mu_scaling=None,
                  metadata: Optional[Dict[str, Any]] = None, creation_date: Optional[str] = None,
                  calibration_mode: str = "native", aimio_compatible: bool = False) -> Dict[str, Any]:
    """Write an ISQ with ITK's ScancoImageIO (path must end in .isq, any case).

    * ``calibration``: dict with keys from CALIBRATION_KEYS (or a header.Calibration). Values are
      given to ITK as MetaDataObject<double>/<int>/<string> (a plain Python float would be dropped).
      ITK writes its own extended header (MultiHeader + Calibration, fields at bytes 2168 type, 2184
      unit, 2200 slope, 2208 intercept, 2224 mu water, 1564 text).
    * ``calibration_mode="native"`` (default): the array is stored unchanged. When the calibration
      would make ITK's writer treat the voxels as HU (slope != 1 or intercept != 0, mu_scaling > 1,
      mu_water > 0), ITK is given MuScaling 1 and the int32 at byte 88 is then overwritten with
      mu_scaling (the only byte patch; reported in ``byte_patches``).
      ``"itk_hu"``: ITK gets the real MuScaling and converts the array from HU to raw itself
      (trunc((h + 1000) / (1000 / (mu_water * mu_scaling))), no clamping; section 4 #5).
    * ``mu_scaling`` without calibration: just the main-header value (no density -> no rescale).
      Without ``calibration`` ITK still writes a calibration block: slope 1, intercept 0, mu water
      0.7033 (its made-up default), type 0.
    * ``metadata``: other ITK keys (PatientName, Energy [kV], Intensity [mA], DataRange [min, max],
      SliceThickness [mm], ...), typed per oracle_worker.ITK_META_TYPES.
    * ``aimio_compatible``: ITK writes nr_of_bytes = data bytes only, which AimIO cannot read; True
      patches bytes 20/24 to header+data bytes / ceil(/512).
    Known ITK writer facts: dim_um = int(spacing*dim*1000) (truncated); origin dropped; data_offset 4
    (data at byte 2560); DataRange written as given (0/0 by default).
    """
    arr = np.asarray(array_zyx_int16)
    return _one("itk", _normalise_itk_op({
        "op": "itk_write_isq", "path": os.fspath(path), "array": arr, "spacing_mm": spacing_mm,
        "calibration": calibration, "mu_scaling": mu_scaling, "metadata": metadata or {},
        "creation_date": creation_date or DEFAULT_CREATION_DATE, "calibration_mode": calibration_mode,
        "aimio_compatible": aimio_compatible}))[1]


def itk_write_aim(path, array_zyx, spacing_mm, *, origin_mm=None, position_voxels=None, version: int = 30,
                  calibration=None, mu_scaling=None, metadata: Optional[Dict[str, Any]] = None,
                  calibration_mode: str = "native") -> Dict[str, Any]:
    """Write an AIM (v020 or v030) with ITK (path must end in .aim). int16 or float32 only (ITK
    rejects char/uchar after writing the header).

    * ``position_voxels`` (ints): ITK stores pos = trunc(origin / float32(spacing)); the oracle hands
      ITK origin = (p +- 0.25) * spacing so the stored position is exactly p. ``origin_mm`` is passed
      through unchanged (ITK's truncation applies). Neither: position 0.
    * ``calibration`` / ``calibration_mode``: as :func:`itk_write_isq`; ITK writes the constants as
      log lines ('Density: slope', 'HU: mu water', ...). In "native" mode the 'Mu_Scaling ... 1' log
      line is rewritten in place (same byte length, fewer padding spaces) to the real mu_scaling.
    ITK log facts: 'Time' uses the 0-based month bug; no NUL terminator; v020 version word is VAX 1.6;
    v030 version 0; el_size v030 = trunc(spacing * 1e6) nm.
    """
    if (origin_mm is not None) and (position_voxels is not None):
        raise ValueError("give origin_mm or position_voxels, not both")
    op = {"op": "itk_write_aim", "path": os.fspath(path), "array": np.asarray(array_zyx),
          "spacing_mm": spacing_mm, "version": int(version), "calibration": calibration,
          "mu_scaling": mu_scaling, "metadata": metadata or {}, "calibration_mode": calibration_mode,
          "origin_mm": None if origin_mm is None else [float(v) for v in origin_mm],
          "position_voxels": None if position_voxels is None else [int(v) for v in position_voxels]}
    return _one("itk", _normalise_itk_op(op))[1]


def itk_hu_from_native(native, mu_scaling: float, mu_water_per_cm: float, *, out_dtype=np.int16,
                       on_overflow: str = "raise") -> np.ndarray:
    """Bit-exact replica of ITK's ScancoImageIO::RescaleToHU (itkScancoImageIO.cxx:433-456).

    slope = 1000.0 / (mu_water * mu_scaling) in double; value = float32(double(native) * slope
    - 1000.0); result = static_cast<T>(value), i.e. truncation toward zero, T = the file's type
    (int16 for short data, int8 for uncompressed D1Tchar masks). Out-of-range results are undefined
    behaviour in C++; on x86 they wrap modulo 2**bits (seen: char mask 0/127 -> 24/85 at
    4096/0.514). ``on_overflow``: "raise" (default) or "wrap" (x86 behaviour).
    """
    slope = 1000.0 / (float(mu_water_per_cm) * float(mu_scaling))
    value = (np.asarray(native).astype(np.float64) * slope + (-1000.0)).astype(np.float32)
    trunc = np.trunc(value).astype(np.int64)
    info = np.iinfo(out_dtype)
    if on_overflow == "raise":
        if trunc.size and (trunc.min() < info.min or trunc.max() > info.max):
            raise ValueError("ITK HU out of %s range (undefined behaviour in ITK)" % np.dtype(out_dtype).name)
    elif on_overflow != "wrap":
        raise ValueError("on_overflow must be 'raise' or 'wrap'")
    return trunc.astype(out_dtype)


def itk_native_from_hu_write(hu, mu_scaling: float, mu_water_per_cm: float) -> np.ndarray:
    """Replica of ITK's writer RescaleToScanco for int16: trunc(float32((h + 1000) / slope)) with
    int16 wrap-around (no clamping), what an ITK-written calibrated file stores for HU input ``hu``."""
    slope = 1000.0 / (float(mu_water_per_cm) * float(mu_scaling))
    value = ((np.asarray(hu).astype(np.float32).astype(np.float64) + 1000.0) / slope).astype(np.float32)
    return np.trunc(value).astype(np.int64).astype(np.int16)


# ---------------------------------------------------------------------------------------------------
# aimio-py


def aimio_read(path, *, unit: str = "native", kind: Optional[str] = None):
    """Read an AIM or ISQ with aimio-py. Returns ``(array_zyx, info)``.

    ``unit``: "native" (as stored), "hu" or "density" (aimio-py's float64 conversion: AIM from the
    processing log, ISQ from its own search of the calibration block). ``kind``: "aim"/"isq"; by
    default from the extension (';N' stripped), else from the magic.

    AIM info: version (2 or 3), aim_type (storage code, e.g. 0x00150001 binCmp), buffer_type
    (1 char, 2 short, 3 float), dimensions_xyz, position, offset, element_size (float32 values, mm),
    spacing, origin (= position * element_size), vtkbone_origin, direction, byte_offset,
    processing_log_text (exact stored text, without the NUL), processing_log_dict
    (py_aimio.log_to_dict), processing_log_regenerated (what py_aimio.read_aim puts in
    'processing_log_raw': dict_to_log of the dict, NOT the stored text), calibration
    ({from_log: {mu_scaling, mu_water_per_cm, mu_air_per_cm, density_slope, density_intercept},
    hu_equation [m, b], density_equation [m, b], errors}).
    ISQ info: dimensions_xyz, dimensions_um, spacing (mm = AimIO's spacing / 1000; AimIO itself
    reports float32(dim_um)/float32(dim_p) in MICROMETRES, kept as spacing_as_reported), origin
    (0,0,0), offset, data_offset (bytes), mu_scaling, calibration_block (rescale_type read at +636,
    rescale_units, rescale_slope, rescale_intercept, mu_water -- zeros for ITK-written files, absent
    without a calibration block), calibration equations, meta (every header field of the binding).
    Both: unit, shape_zyx, dtype, min, max.

    Traps: AIM ``origin`` includes the border: (position + offset) * element_size. ISQ
    unit="density" is native * slope + intercept (no division by mu_scaling, unlike AIM density).
    AimIO cannot read ITK-written ISQs unless written with ``aimio_compatible=True``; it fails on
    its own charCmp files whose first voxel is not 0 ("Assertion failure").
    """
    return _one("aimio", {"op": "aimio_read", "path": os.fspath(path), "unit": unit, "kind": kind})


def aimio_info(path, *, kind: Optional[str] = None) -> Dict[str, Any]:
    """Header only (py_aimio.aim_info / isq_info); same info keys as :func:`aimio_read`."""
    return _one("aimio", {"op": "aimio_info", "path": os.fspath(path), "kind": kind})[1]


def aimio_write_aim(path, array_zyx, spacing_mm, *, position=(0, 0, 0), offset=(0, 0, 0),
                    processing_log: Optional[str] = None, calibration=None) -> Dict[str, Any]:
    """Write an AIM with aimio-py (AimIO). What AimIO supports from Python (0.4.1):

    * always AIM **v030** (the binding cannot set the version);
    * int16 -> D1Tshort; float32 -> D1Tfloat (VAX F); int8 -> automatic compression: D1TbinCmp if
      the volume has <= 2 distinct values, else D1TcharCmp; uncompressed D1Tchar only when offset
      != 0. Other dtypes are rejected.
    * position, offset, element size (stored as trunc(float32(mm) * 1e6f) nm), processing log
      (text, written with a NUL). ``calibration`` (dict, CALIBRATION_KEYS) builds a SCANCO-style
      log with :func:`make_processing_log` instead of ``processing_log``.
    Returns info["written"]: the header dict AimIO reports after writing (aim_type chosen etc.).
    AimIO bug: its charCmp encoder starts with a (0, 0) pair when the first voxel is not 0, and AimIO
    cannot read such a file back ("Assertion failure"); ITK reads charCmp pairs swapped (garbage).
    """
    return _one("aimio", _normalise_aimio_op({
        "op": "aimio_write_aim", "path": os.fspath(path), "array": np.asarray(array_zyx),
        "spacing_mm": spacing_mm, "position": [int(v) for v in position], "offset": [int(v) for v in offset],
        "processing_log": processing_log, "calibration": calibration}))[1]


def make_processing_log(calibration: Optional[Dict[str, Any]], extra_lines: Sequence[Tuple[str, Any]] = ()) -> str:
    """A SCANCO-layout processing log (keys padded to 30 columns; numbers right-aligned to column 53,
    texts padded to 80) holding the calibration lines. Number formats follow SCANCO: Mu_Scaling %d,
    Density slope/intercept %.8e, HU mu water %.5f, Calib. default unit type '%d (Density)'."""
    def num(key, text):
        return "%-30s%23s" % (key, text)

    def txt(key, text):
        return ("%-30s%s" % (key, text)).ljust(80)

    sep = "!" + "-" * 79
    lines = ["!", "! Processing Log", "!", sep, txt("Created by", "scanco-units test oracle"), sep]
    cal = calibration or {}
    if cal.get("mu_scaling") is not None:
        lines.append(num("Mu_Scaling", "%d" % int(cal["mu_scaling"])))
    if cal.get("calibration_text") is not None:
        lines.append(txt("Calibration Data", cal["calibration_text"]))
    if cal.get("calibration_type") is not None:
        label = " (Density)" if int(cal["calibration_type"]) == 2 else ""
        lines.append(txt("Calib. default unit type", "%d%s" % (int(cal["calibration_type"]), label)))
    if cal.get("density_unit") is not None:
        lines.append(txt("Density: unit", cal["density_unit"]))
    if cal.get("density_slope") is not None:
        lines.append(num("Density: slope", "%.8e" % float(cal["density_slope"])))
    if cal.get("density_intercept") is not None:
        lines.append(num("Density: intercept", "%.8e" % float(cal["density_intercept"])))
    if cal.get("mu_water_per_cm") is not None:
        lines.append(num("HU: mu water", "%.5f" % float(cal["mu_water_per_cm"])))
    lines.append(sep)
    for key, value in extra_lines:
        lines.append(num(key, value) if isinstance(value, (int, float)) else txt(key, str(value)))
    return "\n".join(lines) + "\n"


def vax_g_to_float(data: bytes) -> float:
    """Independent decoder used by the self-check: reverse the four 16-bit words, IEEE LE double, /4."""
    if len(data) != 8:
        raise ValueError("VAX G needs 8 bytes")
    words = [data[i:i + 2] for i in range(0, 8, 2)]
    return float(np.frombuffer(b"".join(reversed(words)), "<f8")[0]) / 4.0
