"""``scanco-units demo``: write the phantom scan, convert it, and check the rods' densities."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..phantom import rod_measurement_masks, write_phantom_isq

DEMO_SHAPE_ZYX = (96, 256, 256)


def measure_rods(density_path: Path, unit_scale_to_mg: float, shape_zyx):
    """Mean density (mg HA/ccm) inside each rod, read back from the written density NRRD."""
    from ..formats.nrrd_reading import read_nrrd_volume

    volume = read_nrrd_volume(density_path)
    nz, ny, nx = shape_zyx
    rows = []
    for rod, mask in rod_measurement_masks(ny, nx):
        values = volume[:, mask].astype(np.float64) * unit_scale_to_mg
        rows.append((rod.density_mg_ha_ccm, float(values.mean()), int(values.size)))
    return rows


def run_demo(out_dir, *, report: bool = True, stream=sys.stdout) -> int:
    from ..pipeline.convert import ConversionRequest, convert_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scan = out_dir / "PHANTOM.ISQ"
    print(f"Writing a phantom scan made in code: {scan}", file=stream)
    write_phantom_isq(scan, DEMO_SHAPE_ZYX)
    if report:  # the QC picture needs matplotlib (the report extra); the demo runs without it
        from ..pipeline.report import ReportUnavailableError, require_matplotlib

        try:
            require_matplotlib()
        except ReportUnavailableError as exc:
            print(f"scanco-units: note: no QC report: {exc}", file=sys.stderr)
            report = False
    options = ConversionRequest(outputs=("hu", "density", "mask", "mu"), overwrite=True, report=report)
    try:
        outputs = convert_file(scan, out_dir, options)
    except Exception as exc:  # noqa: BLE001 - one line, no traceback
        print(f"scanco-units: error: demo failed: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print("Outputs:", file=stream)
    for role, path in outputs.items():
        print(f"  {role:10s} {path}", file=stream)
    print("\nCalibration rods (mean of the density output inside each rod):", file=stream)
    print(f"  {'known mg HA/ccm':>16s} {'measured':>10s} {'difference':>11s} {'voxels':>8s}", file=stream)
    worst = 0.0
    for known, measured, count in measure_rods(outputs["density"], 1000.0, DEMO_SHAPE_ZYX):
        worst = max(worst, abs(measured - known))
        print(f"  {known:16.1f} {measured:10.2f} {measured - known:+11.2f} {count:8d}", file=stream)
    verdict = "OK" if worst <= 1.0 else "FAILED"
    print(f"\nLargest rod error: {worst:.3f} mg HA/ccm (limit 1.0): {verdict}", file=stream)
    print(f"All outputs are in {out_dir.resolve()}", file=stream)
    return 0 if worst <= 1.0 else 1


def add_demo_command(sub) -> None:
    p = sub.add_parser("demo", help="write a phantom scan made in code, convert it, check rod densities")
    p.add_argument("-o", "--output", default="demo-output", metavar="DIR")
    p.add_argument("--no-report", action="store_true", help="skip the QC picture")
    p.set_defaults(func=lambda args: run_demo(args.output, report=not args.no_report))
