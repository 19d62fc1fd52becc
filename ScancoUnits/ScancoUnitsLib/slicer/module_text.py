"""The texts of the module's Help & Acknowledgement section: what the module does, the formulas of its units,
its geometry, and whose conventions it follows. Translated in the module's context (:mod:`.translation`).
"""

from __future__ import annotations

from .translation import tr


def help_text() -> str:
    """The module's help (HTML): drop, panel and Save mask as AIM; the unit formulas; geometry and attributes."""
    return tr("""
Open SCANCO micro-CT files (.ISQ, .AIM) as calibrated volumes.
<ul>
<li><b>Drag and drop</b> (or Add Data): one volume, fast: HU for a calibrated file, native values for an
uncalibrated one, a labelmap for a SCANCO mask AIM. No mask: its thresholds are chosen here first (the default
250-1000 per mille gives an empty mask on some scanners' data, e.g. XtremeCT II).</li>
<li><b>This panel</b>: pick a file, check the thresholds against the histogram, choose the outputs (HU,
density, 1/cm, native, mask labelmap and segmentation) and press Apply.</li>
<li><b>Save mask as AIM</b>: a labelmap or segment (e.g. edited in Segment Editor) back to a SCANCO char AIM on
the grid of its scan, for IPL; also offered as "SCANCO AIM" in Export to file.</li>
</ul>
<ul>
<li><b>Attenuation</b> mu [1/cm] = native / mu_scaling (mu_scaling from the header).</li>
<li><b>HU</b> = 1000 (mu - mu_water) / mu_water = native * 1000 / (mu_scaling * mu_water) - 1000;
stored as integers (rounded to nearest) unless float HU are asked for.</li>
<li><b>Density</b> [mg HA/ccm] = slope * mu + intercept, the scanner's hydroxyapatite calibration from the
header; g/cc = mg HA/ccm / 1000.</li>
<li><b>Per mille</b> (SCANCO IPL's threshold unit): 1000 per mille = native 32767, the largest 16-bit value,
whatever the calibration. A threshold is first turned into a native integer, rounded to the nearest
(250 per mille = 8191.75 -> 8192); HU, mu and density thresholds likewise. The mask is
native_low &lt;= native &lt;= native_high, exactly as IPL does it.</li>
</ul>
Geometry follows ITK (what Slicer's built-in reader does): AIM origin = position x voxel size, ISQ origin 0,
LPS turned into Slicer's RAS. Calibration constants and units are stored in node attributes (ScancoUnits.*)
and as voxel value units (UCUM). Files without calibration load as native values with a warning.
For files too large to load, load a sub-region or every n-th voxel while the NRRD export is written at full
resolution, slab by slab.
See the <a href="https://github.com/ScancoUnits/SlicerScancoUnits">project page</a>.
""")


def acknowledgement_text() -> str:
    """Whose file conventions and geometry the module follows (SCANCO, ITK's IOScanco)."""
    return tr("""
The file formats and conversions follow the conventions of SCANCO Medical AG (ISQ/AIM headers, IPL per-mille
thresholds, hydroxyapatite density calibration) as documented by their users, and the geometry of ITK's
IOScanco module (InsightSoftwareConsortium/ITKIOScanco, derived from David Gobbi's vtkScancoCTReader), which
3D Slicer itself uses to read ISQ files. ScancoUnits is an independent project, not affiliated with SCANCO.
""")
