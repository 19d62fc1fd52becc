"""Subprocess entry point for the reference implementations (test oracles).

Usage (normally only through ``Testing/support/oracles.py``)::

    python Testing/support/oracle_worker.py REQUEST.json

REQUEST.json::

    {"library": "itk" | "aimio", "out_dir": "/tmp/x", "ops": [{"op": "itk_read", ...}, ...]}

The worker imports exactly one of the two libraries (itk + itk-ioscanco, or aimio-py): importing both
into one process has crashed with a segfault on large files. Ops run in order, so a batch may write
a file and read it back. Each op's result goes into ``out_dir/results.json`` as
``{"ok": bool, "info": {...}, "array": "name.npy" | null, "error": str, "error_type": str}``.
Arrays are written as .npy files in ``out_dir``; input arrays are .npy paths in the request.

This file must not import ScancoUnitsLib: the oracles have to stay independent of the code they check.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import traceback

import numpy as np

# ---------------------------------------------------------------------------------------------------
# small helpers shared by both libraries

_COMPRESSED_AIM_TYPES = {0x00150001: "D1TbinCmp", 0x00080002: "D1TcharCmp"}


def _jsonable(value):
    """Best-effort conversion of library values to JSON (exact floats, lists for tuples)."""
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _peek_aim_storage_code(path):
    """AIM data-type code from the image struct (v020: byte 40, v030: byte 68); None if not an AIM."""
    with open(path, "rb") as handle:
        head = handle.read(80)
    if len(head) >= 72 and head[:15] == b"AIMDATA_V030   ":
        return struct.unpack_from("<i", head, 68)[0]
    if len(head) >= 44 and struct.unpack_from("<i", head, 0)[0] == 20:
        return struct.unpack_from("<i", head, 40)[0]
    return None


def _save_array(out_dir, name, array):
    np.save(os.path.join(out_dir, name), np.ascontiguousarray(array))
    return name


def _input_path(req, out_dir, index):
    """The path handed to the library; with 'extension' a symlink named input<ext> is used."""
    path = os.path.abspath(req["path"])
    ext = req.get("extension")
    if ext:
        link = os.path.join(out_dir, "input_%d%s" % (index, ext))
        os.symlink(path, link)
        return link
    return path


# ---------------------------------------------------------------------------------------------------
# ITK (itk 5.4.7 + itk-ioscanco 1.0.1)

# Metadata keys the ScancoImageIO writer looks at (SetHeaderFromMetaDataDictionary) and the C++
# type it asks for. A Python float put into the dictionary becomes MetaDataObject<float>, which the
# writer's ExposeMetaData<double> ignores, so every value is wrapped with the exact type below.
ITK_META_TYPES = {
    "Version": "str", "PatientName": "str", "CreationDate": "str", "ModificationDate": "str",
    "RescaleUnits": "str", "CalibrationData": "str",
    "PatientIndex": "int", "ScannerID": "int", "NumberOfSamples": "int", "NumberOfProjections": "int",
    "ScannerType": "int", "MeasurementIndex": "int", "Site": "int", "ReconstructionAlg": "int",
    "RescaleType": "int",
    "SliceThickness": "double", "SliceIncrement": "double", "MuScaling": "double",
    "ScanDistance": "double", "SampleTime": "double", "ReferenceLine": "double", "Energy": "double",
    "Intensity": "double", "RescaleSlope": "double", "RescaleIntercept": "double", "MuWater": "double",
    "StartPosition": "double",
    "DataRange": "vector_double", "PhysicalDimensions": "vector_double",
}

# ScancoImageIO getters worth reporting (GetReferenceLine returns an int in 1.0.1).
ITK_IO_GETTERS = (
    "Version", "PatientName", "PatientIndex", "ScannerID", "CreationDate", "ModificationDate",
    "SliceThickness", "SliceIncrement", "StartPosition", "MuScaling", "MuWater", "NumberOfSamples",
    "NumberOfProjections", "ScanDistance", "ScannerType", "SampleTime", "MeasurementIndex", "Site",
    "ReferenceLine", "ReconstructionAlg", "Energy", "Intensity", "RescaleType", "RescaleUnits",
    "RescaleSlope", "RescaleIntercept", "CalibrationData",
)


class _Itk:
    def __init__(self):
        import itk  # noqa: WPS433 (imported only in the worker)

        self.itk = itk
        keys = list(itk.MetaDataObject.keys())
        self.vector_d = [k[0] for k in keys if getattr(k[0], "__name__", "") == "vectorD"][0]

    # ---- metadata -------------------------------------------------------------------------------
    def dictionary_to_json(self, md):
        itk = self.itk
        values, types, unreadable = {}, {}, []
        for key in md.GetKeys():
            try:
                value = md[key]
            except Exception:  # vector<int> PixelDimensions cannot be downcast from Python
                unreadable.append(key)
                continue
            types[key] = type(value).__name__
            if "Matrix" in type(value).__name__:
                value = itk.array_from_matrix(value).tolist()
            values[key] = _jsonable(value)
        return values, types, unreadable

    def set_meta(self, md, key, value):
        itk = self.itk
        kind = ITK_META_TYPES.get(key)
        if kind is None:
            raise ValueError("unknown ITK Scanco metadata key %r" % key)
        if kind == "str":
            obj = itk.MetaDataObject[str].New()
            obj.SetMetaDataObjectValue(str(value))
        elif kind == "int":
            obj = itk.MetaDataObject[itk.SI].New()
            obj.SetMetaDataObjectValue(int(value))
        elif kind == "double":
            obj = itk.MetaDataObject[itk.D].New()
            obj.SetMetaDataObjectValue(float(value))
        else:
            obj = itk.MetaDataObject[self.vector_d].New()
            obj.SetMetaDataObjectValue(self.vector_d([float(v) for v in value]))
        md.Set(key, obj)

    # ---- reading --------------------------------------------------------------------------------
    def header_info(self, path):
        itk = self.itk
        io = itk.ScancoImageIO.New()
        io.SetFileName(path)
        io.ReadImageInformation()
        ndim = io.GetNumberOfDimensions()
        getters = {}
        for name in ITK_IO_GETTERS:
            try:
                getters[name] = _jsonable(getattr(io, "Get" + name)())
            except Exception as exc:  # pragma: no cover - depends on wrapping
                getters[name] = "ERROR: %s" % exc
        values, types, unreadable = self.dictionary_to_json(io.GetMetaDataDictionary())
        comp = io.GetComponentTypeAsString(io.GetComponentType())
        info = {
            "file_component_type": comp,
            "number_of_components": int(io.GetNumberOfComponents()),
            "dimensions_xyz": [int(io.GetDimensions(i)) for i in range(ndim)],
            "io_spacing": [float(io.GetSpacing(i)) for i in range(ndim)],
            "io_origin": [float(io.GetOrigin(i)) for i in range(ndim)],
            "io_getters": getters,
            "metadata": values,
            "metadata_types": types,
            "metadata_unreadable": unreadable,
        }
        info.update(self.hu_prediction(path, getters))
        return info

    @staticmethod
    def hu_prediction(path, getters):
        """Replicates ITK's decision to overwrite voxels with truncated HU (ScancoImageIO::Read)."""
        slope = getters.get("RescaleSlope")
        intercept = getters.get("RescaleIntercept")
        mu_scaling = getters.get("MuScaling")
        mu_water = getters.get("MuWater")
        condition = bool(
            (slope != 1.0 or intercept != 0.0) and mu_scaling > 1.0 and mu_water > 0
        )
        code = _peek_aim_storage_code(path) if str(getters.get("Version", "")).startswith("AIMDATA") else None
        compressed = code in _COMPRESSED_AIM_TYPES
        return {
            "aim_storage_type_code": code,
            "itk_hu_condition": condition,
            # binCmp / charCmp decoders use up the counter that sizes the rescale loop -> no rescale
            "itk_rescaled_to_hu": condition and not compressed,
        }

    def op_itk_info(self, req, out_dir, index):
        return self.header_info(_input_path(req, out_dir, index)), None

    def op_itk_read(self, req, out_dir, index):
        itk = self.itk
        path = _input_path(req, out_dir, index)
        info = self.header_info(path)
        pixel_type = req.get("pixel_type")
        if pixel_type is None and info["file_component_type"] in ("char",):
            # itk.Image[itk.SC, 3] is not wrapped in the Python wheels; SS keeps the sign.
            pixel_type = "SS"
        if pixel_type:
            img = itk.imread(path, pixel_type=getattr(itk, pixel_type))
        else:
            img = itk.imread(path)
        arr = itk.array_from_image(img)
        values, types, unreadable = self.dictionary_to_json(img.GetMetaDataDictionary())
        info.update({
            "read_pixel_type": pixel_type or "file",
            "image_class": type(img).__name__,
            "shape_zyx": list(arr.shape),
            "dtype": str(arr.dtype),
            "spacing": [float(v) for v in img.GetSpacing()],
            "origin": [float(v) for v in img.GetOrigin()],
            "direction": itk.array_from_matrix(img.GetDirection()).tolist(),
            "metadata": values,
            "metadata_types": types,
            "metadata_unreadable": unreadable,
            "values_are": "hu_truncated" if info["itk_rescaled_to_hu"] else "native",
            "min": _jsonable(arr.min()) if arr.size else None,
            "max": _jsonable(arr.max()) if arr.size else None,
        })
        return info, _save_array(out_dir, "itk_%d.npy" % index, arr)

    # ---- writing --------------------------------------------------------------------------------
    def _image(self, req):
        itk = self.itk
        arr = np.ascontiguousarray(np.load(req["array"]))
        img = itk.image_from_array(arr)
        img.SetSpacing([float(v) for v in req["spacing_mm"]])
        return img, arr

    def _apply_metadata(self, img, meta):
        md = img.GetMetaDataDictionary()
        for key, value in meta.items():
            self.set_meta(md, key, value)

    @staticmethod
    def _put_calibration(req, meta):
        """Put the request's calibration into the ITK metadata ``meta``. Returns the mu_scaling to
        patch into the written file afterwards, or None when ITK was given the real value: in
        "native" mode ITK gets MuScaling 1 whenever it would otherwise treat the voxels as HU
        (ScancoImageIO::Write -> RescaleToScanco)."""
        mode = req.get("calibration_mode", "native")
        cal = req.get("calibration")
        mu_scaling = req.get("mu_scaling")
        if cal:
            meta.update(_calibration_to_itk_meta(cal))
            if cal.get("mu_scaling") is not None:
                mu_scaling = cal["mu_scaling"]
        if mu_scaling is None:
            return None
        if mode == "native" and _itk_would_rescale(meta, mu_scaling):
            meta["MuScaling"] = 1.0
            return int(mu_scaling)
        meta["MuScaling"] = float(mu_scaling)
        return None

    def op_itk_write_isq(self, req, out_dir, index):
        img, arr = self._image(req)
        meta = dict(req.get("metadata") or {})
        patches = []
        mu_scaling_patch = self._put_calibration(req, meta)
        if mu_scaling_patch is not None:
            patches.append(("mu_scaling", 88, mu_scaling_patch))  # byte 88 gets the real value afterwards
        meta.setdefault("CreationDate", req.get("creation_date") or "24-NOV-2026 10:11:12.340")
        self._apply_metadata(img, meta)
        path = os.path.abspath(req["path"])
        self.itk.imwrite(img, path)
        with open(path, "r+b") as handle:
            for _name, offset, value in patches:
                handle.seek(offset)
                handle.write(struct.pack("<i", value))
            if req.get("aimio_compatible"):
                # AimIO sizes the data block as nr_of_bytes - data start; ITK writes the data size only.
                handle.seek(508)
                data_offset = struct.unpack("<i", handle.read(4))[0]
                total = (data_offset + 1) * 512 + arr.nbytes
                handle.seek(20)
                handle.write(struct.pack("<ii", total, -(-total // 512)))
                patches.append(("nr_of_bytes", 20, total))
                patches.append(("nr_of_blocks", 24, -(-total // 512)))
        info = {
            "path": path,
            "file_size": os.path.getsize(path),
            "metadata_given": _jsonable(meta),
            "byte_patches": [list(p) for p in patches],
            "calibration_mode": req.get("calibration_mode", "native"),
        }
        return info, None

    def op_itk_write_aim(self, req, out_dir, index):
        img, arr = self._image(req)
        spacing = [float(v) for v in req["spacing_mm"]]
        if req.get("position_voxels") is not None:
            # ITK stores pos = trunc(origin / float32(spacing)); a quarter voxel towards the sign keeps
            # the integer exact whatever the float rounding of origin/spacing.
            origin = [(p + math.copysign(0.25, p) if p else 0.0) * s
                      for p, s in zip(req["position_voxels"], spacing)]
        else:
            origin = [float(v) for v in (req.get("origin_mm") or (0.0, 0.0, 0.0))]
        img.SetOrigin(origin)
        meta = dict(req.get("metadata") or {})
        version = int(req.get("version", 30))
        if version == 20:
            meta["Version"] = "AIMDATA_V020   "
        elif version != 30:
            raise ValueError("ITK writes AIM v020 or v030 only")
        log_patch = self._put_calibration(req, meta)
        self._apply_metadata(img, meta)
        path = os.path.abspath(req["path"])
        self.itk.imwrite(img, path)
        patches = []
        if log_patch is not None:
            patches.append(_patch_aim_log_mu_scaling(path, log_patch))
        info = {
            "path": path,
            "file_size": os.path.getsize(path),
            "origin_given_to_itk": origin,
            "metadata_given": _jsonable(meta),
            "byte_patches": patches,
            "calibration_mode": req.get("calibration_mode", "native"),
        }
        return info, None


def _calibration_to_itk_meta(cal):
    meta = {}
    if cal.get("mu_water_per_cm") is not None:
        meta["MuWater"] = float(cal["mu_water_per_cm"])
    if cal.get("density_slope") is not None:
        meta["RescaleSlope"] = float(cal["density_slope"])
    if cal.get("density_intercept") is not None:
        meta["RescaleIntercept"] = float(cal["density_intercept"])
    if cal.get("density_unit") is not None:
        meta["RescaleUnits"] = str(cal["density_unit"])
    if cal.get("calibration_text") is not None:
        meta["CalibrationData"] = str(cal["calibration_text"])
    if cal.get("calibration_type") is not None:
        meta["RescaleType"] = int(cal["calibration_type"])
    return meta


def _itk_would_rescale(meta, mu_scaling):
    slope = meta.get("RescaleSlope", 1.0)
    intercept = meta.get("RescaleIntercept", 0.0)
    mu_water = meta.get("MuWater", 0.7033)  # ITK's built-in default
    return (slope != 1.0 or intercept != 0.0) and float(mu_scaling) > 1.0 and mu_water > 0


def _patch_aim_log_mu_scaling(path, mu_scaling):
    """Rewrite ITK's 'Mu_Scaling ... 1' log line in place, same length (fewer padding spaces)."""
    with open(path, "rb") as handle:
        data = bytearray(handle.read())
    key = b"\nMu_Scaling "
    at = data.find(key)
    if at < 0:
        raise RuntimeError("ITK log has no Mu_Scaling line")
    end = data.index(b"\n", at + 1)
    line = bytes(data[at + 1:end])
    value = str(mu_scaling).encode()
    if not line.rstrip().endswith(b" 1") or len(line) < len(b"Mu_Scaling") + 2 + len(value):
        raise RuntimeError("unexpected ITK Mu_Scaling line %r" % line)
    new = b"Mu_Scaling" + b" " * (len(line) - len(b"Mu_Scaling") - len(value)) + value
    data[at + 1:end] = new
    with open(path, "wb") as handle:
        handle.write(data)
    return ["log Mu_Scaling", at + 1, mu_scaling]


# ---------------------------------------------------------------------------------------------------
# aimio-py 0.4.1 (AimIO bindings)


class _Aimio:
    def __init__(self):
        import py_aimio  # noqa: WPS433
        from py_aimio import calibration as cal_mod

        self.py_aimio = py_aimio
        self.cal_mod = cal_mod

    @staticmethod
    def _kind(req):
        kind = req.get("kind")
        if kind:
            return kind
        name = req["path"]
        if ";" in name and name.rsplit(";", 1)[1].isdigit():
            name = name.rsplit(";", 1)[0]
        ext = os.path.splitext(name)[1].lower()
        if ext == ".isq":
            return "isq"
        if ext == ".aim":
            return "aim"
        with open(req["path"], "rb") as handle:
            magic = handle.read(16)
        return "isq" if magic.startswith(b"CTDATA-HEADER_V1") else "aim"

    def _aim_calibration(self, log_text):
        out = {"from_log": None, "hu_equation": None, "density_equation": None, "errors": {}}
        try:
            ms, mw, mair, slope, intercept = self.cal_mod.get_aim_calibration_constants_from_processing_log(log_text)
            out["from_log"] = {"mu_scaling": ms, "mu_water_per_cm": mw, "mu_air_per_cm": mair,
                               "density_slope": slope, "density_intercept": intercept}
        except Exception as exc:
            out["errors"]["constants"] = str(exc)
        for name, fn in (("hu_equation", self.cal_mod.get_aim_hu_equation),
                         ("density_equation", self.cal_mod.get_aim_density_equation)):
            try:
                out[name] = list(fn(log_text))
            except Exception as exc:
                out["errors"][name] = str(exc)
        return out

    def _isq_calibration(self, meta):
        out = {"hu_equation": None, "density_equation": None, "errors": {}}
        for name, fn in (("hu_equation", self.cal_mod.get_isq_hu_equation),
                         ("density_equation", self.cal_mod.get_isq_density_equation)):
            try:
                out[name] = list(fn(meta))
            except Exception as exc:
                out["errors"][name] = str(exc)
        return out

    def _info(self, path, kind, meta):
        pa = self.py_aimio
        if kind == "aim":
            raw_meta = pa.aim_info(path)  # keeps the processing log exactly as stored
            log_text = raw_meta["processing_log"]
            info = {
                "format": "aim",
                "meta": _jsonable({k: v for k, v in meta.items() if k not in ("processing_log", "processing_log_raw")}),
                "version": raw_meta["version"],
                "aim_type": raw_meta["aim_type"],
                "buffer_type": raw_meta["buffer_type"],
                "dimensions_xyz": list(raw_meta["dimensions"]),
                "position": list(raw_meta["position"]),
                "offset": list(raw_meta["offset"]),
                "element_size": list(raw_meta["element_size"]),
                "spacing": list(meta["spacing"]),
                "origin": list(meta["origin"]),
                "vtkbone_origin": list(meta["vtkbone_origin"]),
                "direction": list(meta["direction"]),
                "byte_offset": raw_meta["byte_offset"],
                "processing_log_text": log_text,
                "processing_log_dict": _jsonable(pa.log_to_dict(log_text)),
                "processing_log_regenerated": meta.get("processing_log_raw"),
            }
            info["calibration"] = self._aim_calibration(log_text)
        else:
            info = {
                "format": "isq",
                "meta": _jsonable(meta),
                "version": meta.get("version"),
                "data_type": meta.get("data_type"),
                "dimensions_xyz": list(meta["dimensions"]),
                "dimensions_um": list(meta["dimensions_um"]),
                "offset": list(meta["offset"]),
                # AimIO's ISQ spacing is float32(dim_um) / float32(dim_p) in MICROMETRES (z: 1.0 if
                # dim_um z = 0); "spacing" here is that value / 1000 so every oracle speaks mm.
                "spacing": [float(v) / 1000.0 for v in meta["spacing"]],
                "spacing_as_reported": list(meta["spacing"]),
                "spacing_as_reported_unit": "um",
                "origin": list(meta["origin"]),
                "direction": list(meta["direction"]),
                "data_offset": meta.get("data_offset"),  # bytes (AimIO), not blocks
                "mu_scaling": meta.get("mu_scaling"),
                "calibration_block": {k: meta.get(k) for k in (
                    "rescale_type", "rescale_units", "rescale_slope", "rescale_intercept", "mu_water")
                    if k in meta},
            }
            info["calibration"] = self._isq_calibration(meta)
        return info

    def op_aimio_info(self, req, out_dir, index):
        pa = self.py_aimio
        kind = self._kind(req)
        path = os.path.abspath(req["path"])
        meta = pa.aim_info(path) if kind == "aim" else pa.isq_info(path)
        return self._info(path, kind, meta), None

    def op_aimio_read(self, req, out_dir, index):
        pa = self.py_aimio
        kind = self._kind(req)
        path = os.path.abspath(req["path"])
        unit = req.get("unit", "native")
        if kind == "aim":
            if unit == "native":
                arr, meta = pa.read_aim(path)
            elif unit == "hu":
                arr, meta = pa.read_aim(path, hu=True)
            elif unit in ("density", "bmd"):
                arr, meta = pa.read_aim(path, density=True)
            else:
                raise ValueError("unit must be native, hu or density")
        else:
            arr, meta = pa.read_isq(path, unit=unit)
        info = self._info(path, kind, meta)
        info.update({
            "unit": unit,
            "shape_zyx": list(arr.shape),
            "dtype": str(arr.dtype),
            "min": _jsonable(arr.min()) if arr.size else None,
            "max": _jsonable(arr.max()) if arr.size else None,
        })
        return info, _save_array(out_dir, "aimio_%d.npy" % index, arr)

    def op_aimio_write_aim(self, req, out_dir, index):
        pa = self.py_aimio
        arr = np.ascontiguousarray(np.load(req["array"]))
        meta = {
            "element_size": [float(v) for v in req["spacing_mm"]],
            "position": [int(v) for v in req.get("position") or (0, 0, 0)],
            "offset": [int(v) for v in req.get("offset") or (0, 0, 0)],
        }
        if req.get("processing_log") is not None:
            meta["processing_log"] = req["processing_log"]
        path = os.path.abspath(req["path"])
        written = pa.write_aim(path, arr, meta, unit="native")
        info = {"path": path, "file_size": os.path.getsize(path), "written": _jsonable(written)}
        return info, None


# ---------------------------------------------------------------------------------------------------


def main(argv):
    if len(argv) != 2:
        print("usage: oracle_worker.py REQUEST.json", file=sys.stderr)
        return 2
    with open(argv[1], "r", encoding="utf-8") as handle:
        request = json.load(handle)
    out_dir = request["out_dir"]
    library = request["library"]
    if library == "itk":
        lib = _Itk()
    elif library == "aimio":
        lib = _Aimio()
    else:
        raise ValueError("library must be 'itk' or 'aimio'")
    results = []
    for index, req in enumerate(request["ops"]):
        op = req["op"]
        handler = getattr(lib, "op_" + op, None)
        if handler is None:
            results.append({"ok": False, "op": op, "error": "op %r not available for %s" % (op, library),
                            "error_type": "ValueError", "info": None, "array": None})
            continue
        try:
            info, array = handler(req, out_dir, index)
            results.append({"ok": True, "op": op, "info": info, "array": array})
        except Exception as exc:
            results.append({"ok": False, "op": op, "info": None, "array": None,
                            "error": str(exc), "error_type": type(exc).__name__,
                            "traceback": traceback.format_exc(limit=4)})
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(results, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
