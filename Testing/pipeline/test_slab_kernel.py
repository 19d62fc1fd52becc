"""The fused slab kernel: every output bit-identical to UnitConverter / ResolvedThresholds.mask /
mask_from_char, for both backends, and statistics equal to plain numpy computations."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ScancoUnitsLib.errors import CalibrationMissingError
from ScancoUnitsLib.core.header import Calibration
from ScancoUnitsLib.pipeline.kernels import KernelOutput, KernelStats, SlabKernel, numba_available
from ScancoUnitsLib.core.thresholds import ThresholdSpec, mask_from_char, resolve_thresholds
from ScancoUnitsLib.core.units import UnitConverter

CALIBRATIONS = {
    "ucT": Calibration(mu_scaling=4096, mu_water_per_cm=0.514, density_slope=355.52, density_intercept=-196.6),
    # HU beyond int16 at both ends of the native range
    "clipping": Calibration(mu_scaling=4096, mu_water_per_cm=0.2366, density_slope=1200.0,
                            density_intercept=-250.0),
    # negative slope, non-integer constants
    "negative": Calibration(mu_scaling=1.75, mu_water_per_cm=3.1, density_slope=-17.25, density_intercept=1e4),
    # huge mu_scaling: tiny values, subnormal-free but far from 1
    "huge": Calibration(mu_scaling=9.5e11, mu_water_per_cm=1e-4, density_slope=1e9, density_intercept=-1e9),
}

BACKENDS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(not numba_available(),
                                                                     reason="numba not installed"))]


def outputs(hu_dtype="int16", mask=True, extra=()):
    outs = [KernelOutput("hu", "hu", hu_dtype), KernelOutput("rho", "density_g_cc", "float32"),
            KernelOutput("mg", "density_mg_ha_ccm", "float32"), KernelOutput("mu", "mu", "float32")]
    if mask:
        outs.append(KernelOutput("mask", "mask", "uint8"))
    return outs + list(extra)


def reference(native, cal, outs, resolved):
    conv = UnitConverter(cal)
    ref, clipped = {}, 0
    for o in outs:
        if o.quantity == "mask":
            ref[o.name] = resolved.mask(native)
        elif o.quantity == "char_mask":
            ref[o.name] = mask_from_char(native)
        elif o.quantity == "native":
            ref[o.name] = native.copy()
        elif o.quantity == "float":
            ref[o.name] = native.astype(o.dtype)
        else:
            ref[o.name] = conv.convert(native, o.quantity, hu_dtype=o.dtype.name if o.quantity == "hu" else "int16")
            if o.quantity == "hu":
                clipped += conv.last_hu_clipped_voxels
    return ref, clipped


def expected_range(values):
    if values.dtype.kind == "f":
        finite = values[np.isfinite(values)]
        nonfinite = values.size - finite.size
        return (None, None, nonfinite) if finite.size == 0 else (finite.min().item(), finite.max().item(), nonfinite)
    return values.min().item(), values.max().item(), 0


def run_in_slabs(kernel, native, slabs=3):
    outs = {o.name: np.empty(native.shape, o.dtype) for o in kernel.outputs}
    stats_list = [kernel.new_stats(), kernel.new_stats()]
    edges = np.linspace(0, native.shape[0], slabs + 1).astype(int)
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        sub = {name: arr[a:b] for name, arr in outs.items()}
        kernel.run(native[a:b], sub, stats_list[i % 2])  # two "workers"
    return outs, stats_list[0].merge(stats_list[1])


def check(kernel, native, cal, resolved, hist=True):
    got, stats = run_in_slabs(kernel, native)
    ref, clipped = reference(native, cal, kernel.outputs, resolved)
    for name, expected in ref.items():
        assert got[name].dtype == expected.dtype
        assert got[name].tobytes() == expected.tobytes(), name  # bit-identical, NaN payloads included
        lo, hi, nonfinite = expected_range(expected)
        assert (stats.min[name], stats.max[name], stats.nonfinite_voxels[name]) == (lo, hi, nonfinite), name
        assert type(stats.min[name]) is type(lo)
    assert stats.hu_clipped_voxels == clipped
    masks = [o.name for o in kernel.outputs if o.quantity in ("mask", "char_mask")]
    assert stats.mask_voxels == sum(int(np.count_nonzero(ref[m])) for m in masks)
    assert stats.mask_voxels_of == {o.name: int(np.count_nonzero(ref[o.name])) if o.name in masks else 0
                                    for o in kernel.outputs}
    assert stats.voxels == native.size
    if kernel.uses_tables:
        assert (stats.native_min, stats.native_max) == (native.min().item(), native.max().item())
    if kernel.uses_tables and hist:
        info = np.iinfo(native.dtype)
        expected_hist = np.bincount((native.astype(np.int64) - int(info.min)).ravel(),
                                    minlength=1 << (8 * native.dtype.itemsize))
        assert stats.native_histogram.dtype == np.int64
        np.testing.assert_array_equal(stats.native_histogram, expected_hist)
    else:
        assert stats.native_histogram is None
    return stats


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cal_name", sorted(CALIBRATIONS))
@pytest.mark.parametrize("dtype", ["int16", "uint16"])
def test_full_range_bit_identical(backend, cal_name, dtype):
    cal = CALIBRATIONS[cal_name]
    info = np.iinfo(dtype)
    every = np.arange(int(info.min), int(info.max) + 1, dtype=np.int64).astype(dtype)
    rng = np.random.default_rng(1)
    native = np.concatenate([every, rng.permutation(every)[:7 * 64 * 32]]).reshape(-1, 64, 32)
    resolved = resolve_thresholds(ThresholdSpec(250, 1000, "permille"), cal)
    for hu_dtype, histogram, with_extra in (("int16", True, True), ("float32", True, True),
                                            ("int16", False, True), ("int16", False, False)):
        extra = [KernelOutput("native", "native", dtype), KernelOutput("float", "float", "float32"),
                 KernelOutput("char", "char_mask", "uint8")] if with_extra else []
        kernel = SlabKernel(cal, outputs(hu_dtype, extra=extra), native_dtype=dtype,
                            mask_native_range=resolved, backend=backend, histogram=histogram)
        assert kernel.backend_name == backend
        check(kernel, native, cal, resolved, hist=histogram)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", [ThresholdSpec(-5, 10, "native"), ThresholdSpec(-40000, -33000, "native"),
                                  ThresholdSpec(70000, 80000, "native"), ThresholdSpec(-1000, 600, "hu")])
@pytest.mark.parametrize("dtype", ["int16", "uint16", "int8", "uint8"])
def test_masks_and_small_dtypes(backend, spec, dtype):
    cal = CALIBRATIONS["negative"]
    info = np.iinfo(dtype)
    rng = np.random.default_rng(2)
    native = rng.integers(int(info.min), int(info.max) + 1, size=(4, 33, 17)).astype(dtype)
    # resolved as int32 so that bounds outside the slab's dtype reach the kernel (which clamps them)
    resolved = resolve_thresholds(spec, cal, voxel_type="int32")
    if native.dtype.itemsize == 1 and spec.unit != "native":
        pytest.skip("thresholds in units are refused for char data")
    kernel = SlabKernel(cal, outputs(), native_dtype=dtype, mask_native_range=(resolved.native_low,
                                                                               resolved.native_high),
                        backend=backend, histogram=False)
    check(kernel, native, cal, resolved, hist=False)


def wide_slab(dtype, seed=3):
    rng = np.random.default_rng(seed)
    shape = (5, 40, 37)
    if np.dtype(dtype).kind == "f":
        native = (rng.standard_normal(shape) * 20000).astype(dtype)
        flat = native.reshape(-1)
        flat[:6] = [np.inf, -np.inf, 0.5, -2.5, 8192.0, 32767.0]
        flat[100:110] = rng.integers(-40000, 40000, 10)
        return native
    return rng.integers(-3_000_000_000 // 2, 3_000_000_000 // 2, size=shape).astype(dtype) // \
        np.array(rng.choice([1, 1000, 100000], size=shape)).astype(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cal_name", sorted(CALIBRATIONS))
@pytest.mark.parametrize("dtype", ["int32", "float32", "float64"])
def test_wide_natives_bit_identical(backend, cal_name, dtype):
    cal = CALIBRATIONS[cal_name]
    native = wide_slab(dtype)
    resolved = resolve_thresholds(ThresholdSpec(-1000, 1500, "hu"), cal)
    extra = [KernelOutput("native", "native", dtype), KernelOutput("float", "float", "float64"),
             KernelOutput("char", "char_mask", "uint8")]
    for hu_dtype in ("int16", "float32"):
        if dtype.startswith("float") and hu_dtype == "int16":
            native_int16ok = native.copy()
            native_int16ok[~np.isfinite(native_int16ok)] = 1.0e9  # inf is fine for int16 HU, NaN is not
            slab = native_int16ok
        else:
            slab = native
        kernel = SlabKernel(cal, outputs(hu_dtype, extra=extra), native_dtype=dtype, mask_native_range=resolved,
                            backend=backend)
        assert not kernel.uses_tables
        check(kernel, slab, cal, resolved)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_natives(backend):
    cal = CALIBRATIONS["ucT"]
    native = wide_slab("float32")
    native.reshape(-1)[7:9] = np.nan
    resolved = resolve_thresholds(ThresholdSpec(0, 100, "native"), cal)
    kernel = SlabKernel(cal, outputs("float32"), native_dtype="float32", mask_native_range=resolved,
                        backend=backend)
    stats = check(kernel, native, cal, resolved)
    assert stats.nonfinite_voxels["rho"] >= 2
    kernel = SlabKernel(cal, outputs("int16"), native_dtype="float32", mask_native_range=resolved,
                        backend=backend)
    outs = {o.name: np.empty(native.shape, o.dtype) for o in kernel.outputs}
    with pytest.raises(ValueError, match="NaN"):
        kernel.run(native, outs, kernel.new_stats())


@pytest.mark.parametrize("backend", BACKENDS)
def test_byte_swapped_and_strided_input(backend):
    cal = CALIBRATIONS["ucT"]
    native = np.random.default_rng(5).integers(-32768, 32767, size=(6, 20, 30)).astype(">i2")
    resolved = resolve_thresholds(ThresholdSpec(250, 1000), cal)
    kernel = SlabKernel(cal, outputs(), native_dtype="int16", mask_native_range=resolved, backend=backend)
    got, _ = run_in_slabs(kernel, native[:, :, ::1])
    ref, _ = reference(native.astype("<i2"), cal, kernel.outputs, resolved)
    for name in ref:
        assert got[name].tobytes() == ref[name].tobytes()


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_threads_share_one_kernel(backend):
    cal = CALIBRATIONS["ucT"]
    native = np.random.default_rng(6).integers(-2000, 30000, size=(16, 64, 64)).astype(np.int16)
    resolved = resolve_thresholds(ThresholdSpec(250, 1000), cal)
    kernel = SlabKernel(cal, outputs(), native_dtype="int16", mask_native_range=resolved, backend=backend)
    outs = {o.name: np.empty(native.shape, o.dtype) for o in kernel.outputs}
    stats = [kernel.new_stats(), kernel.new_stats()]

    def work(w):
        for z in range(w, 16, 2):
            kernel.run(native[z:z + 1], {n: a[z:z + 1] for n, a in outs.items()}, stats[w])

    threads = [threading.Thread(target=work, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ref, _ = reference(native, cal, kernel.outputs, resolved)
    for name in ref:
        assert outs[name].tobytes() == ref[name].tobytes()
    merged = stats[0].merge(stats[1])
    np.testing.assert_array_equal(merged.native_histogram,
                                  np.bincount(native.ravel().astype(np.int64) + 32768, minlength=65536))


def test_bad_arguments():
    cal = CALIBRATIONS["ucT"]
    with pytest.raises(ValueError, match="quantity"):
        KernelOutput("x", "bmd", "float32")
    with pytest.raises(ValueError, match="cannot be written"):
        SlabKernel(cal, [KernelOutput("hu", "hu", "uint8")], native_dtype="int16", backend="numpy")
    with pytest.raises(ValueError, match="mask_native_range"):
        SlabKernel(cal, [KernelOutput("m", "mask", "uint8")], native_dtype="int16", backend="numpy")
    with pytest.raises(ValueError, match="unique"):
        SlabKernel(cal, [KernelOutput("m", "mu", "float32")] * 2, native_dtype="int16", backend="numpy")
    with pytest.raises(CalibrationMissingError):
        SlabKernel(Calibration(mu_scaling=4096), [KernelOutput("hu", "hu", "int16")], native_dtype="int16",
                   backend="numpy")
    with pytest.raises(ValueError, match="backend"):
        SlabKernel(cal, [KernelOutput("mu", "mu", "float32")], native_dtype="int16", backend="cuda")
    kernel = SlabKernel(cal, [KernelOutput("mu", "mu", "float32")], native_dtype="int16", backend="numpy")
    with pytest.raises(ValueError, match="outs"):
        kernel.run(np.zeros((2, 3), np.int16), {"mu": np.zeros((2, 3), np.float64)}, kernel.new_stats())
    with pytest.raises(ValueError, match="native dtype"):
        kernel.run(np.zeros((2, 3), np.int32), {"mu": np.zeros((2, 3), np.float32)}, kernel.new_stats())


def test_environment_chooses_backend(monkeypatch):
    cal = CALIBRATIONS["ucT"]
    monkeypatch.setenv("SCANCO_UNITS_KERNEL", "numpy")
    assert SlabKernel(cal, [KernelOutput("mu", "mu", "float32")], native_dtype="int16").backend_name == "numpy"
    monkeypatch.setenv("SCANCO_UNITS_KERNEL", "gpu")
    with pytest.raises(ValueError, match="SCANCO_UNITS_KERNEL"):
        SlabKernel(cal, [KernelOutput("mu", "mu", "float32")], native_dtype="int16")


def test_numba_missing_is_a_clear_error(monkeypatch):
    import builtins
    import sys

    real_import = builtins.__import__

    def no_numba(name, *args, **kwargs):
        if name == "numba" or name.startswith("numba."):
            raise ImportError("no numba here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_numba)
    monkeypatch.delitem(sys.modules, "numba", raising=False)
    monkeypatch.delitem(sys.modules, "ScancoUnitsLib.pipeline.kernels_numba", raising=False)
    import ScancoUnitsLib.pipeline
    monkeypatch.delattr(ScancoUnitsLib.pipeline, "kernels_numba", raising=False)
    monkeypatch.delenv("SCANCO_UNITS_KERNEL", raising=False)
    cal = CALIBRATIONS["ucT"]
    kernel = SlabKernel(cal, [KernelOutput("mu", "mu", "float32")], native_dtype="int16")
    assert kernel.backend_name == "numpy"
    with pytest.raises(ImportError, match=r"scanco-units\[fast\]"):
        SlabKernel(cal, [KernelOutput("mu", "mu", "float32")], native_dtype="int16", backend="numba")


def test_package_import_does_not_import_numba():
    import subprocess
    import sys

    code = ("import sys, ScancoUnitsLib, ScancoUnitsLib.pipeline.kernels, ScancoUnitsLib.pipeline.convert; "
            "print('numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_stats_merge_of_empty():
    a, b = KernelStats(["x"]), KernelStats(["x"])
    b.tally.min["x"], b.tally.max["x"], b.tally.ones["x"] = 3, 5, 7
    a.merge(b)
    assert (a.min["x"], a.max["x"], a.mask_voxels, a.mask_voxels_of) == (3, 5, 7, {"x": 7})
    assert a.native_histogram is None and a.native_min is None


@pytest.mark.parametrize("backend", BACKENDS + [None])
def test_engine_statistics_and_histogram(tmp_path, monkeypatch, backend):
    import ScancoUnitsLib as S
    from ScancoUnitsLib.pipeline.engine import EngineOutput, run_engine
    from ScancoUnitsLib.formats.reader import open_voxels, read_header

    if backend is None:  # the engine's own choice: numpy without a histogram
        monkeypatch.delenv("SCANCO_UNITS_KERNEL", raising=False)
    else:
        monkeypatch.setenv("SCANCO_UNITS_KERNEL", backend)
    histogram = backend is not None
    cal = CALIBRATIONS["clipping"]
    native = np.random.default_rng(8).integers(-32768, 32768, size=(7, 12, 10)).astype(np.int16)
    path = S.write_isq(tmp_path / "e.isq", native, voxel_size_mm=(0.03, 0.03, 0.03), calibration=cal)
    header = read_header(path)
    resolved = resolve_thresholds(ThresholdSpec(250, 1000), cal)

    class Collect:
        def __init__(self):
            self.parts = []

        def write(self, z, slab):
            self.parts.append(np.array(slab))

    sinks = {role: Collect() for role in ("hu", "rho", "mask", "native")}
    outputs = [EngineOutput("hu", "hu", np.dtype("int16"), [sinks["hu"]]),
               EngineOutput("rho", "density_g_cc", np.dtype("float32"), [sinks["rho"]]),
               EngineOutput("mask", "mask", np.dtype("uint8"), [sinks["mask"]]),
               EngineOutput("native", "native", np.dtype("int16"), [sinks["native"]])]
    with open_voxels(header) as source:
        result = run_engine(header, source, outputs, thresholds=resolved, slab_slices=2, histogram=histogram)
    conv = UnitConverter(cal)
    hu = conv.convert(native, "hu")
    expected = {"hu": hu, "rho": conv.convert(native, "density_g_cc"), "mask": resolved.mask(native),
                "native": native}
    for role, ref in expected.items():
        got = np.concatenate(sinks[role].parts)
        assert got.tobytes() == ref.tobytes()
        st = result.statistics[role]
        assert (st.min, st.max) == (ref.min().item(), ref.max().item())
    assert result.statistics["mask"].mask_voxels == int(resolved.mask(native).sum())
    assert result.statistics["hu"].hu_clipped_voxels == conv.hu_clipped_voxels > 0
    assert (result.native_min, result.native_max) == (native.min(), native.max())
    if not histogram:
        assert result.native_histogram is None
        return
    np.testing.assert_array_equal(result.native_histogram,
                                  np.bincount(native.ravel().astype(np.int64) + 32768, minlength=65536))
