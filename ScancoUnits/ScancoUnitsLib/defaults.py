"""The defaults every entry point starts from, defined once.

The command line, the Python API (``ConversionRequest``, ``convert_file``, ``load_scan_into_scene``),
drag-and-drop into Slicer and the module panel all read these names; none of them holds a copy.
``Testing/test_defaults.py`` edits this file in a copy of the package and checks that each entry point
follows. The name ends of the files a conversion makes besides its volumes are here too, so that
every layer names them the same way. This module imports nothing, so every layer may read it.
"""

#: the seed notebook's mask: 250 to 1000 per mille (SCANCO IPL: 1000 per mille = native 32767)
THRESHOLDS_PERMILLE = (250.0, 1000.0)
#: unit of the default thresholds (one of core.quantities.THRESHOLD_UNITS)
THRESHOLD_UNIT = "permille"
#: what 1000 per mille means (one of core.thresholds.PERMILLE_REFERENCES)
PERMILLE_REFERENCE = "32767"
#: unit of the density output (canonical spelling; the seed notebook writes g/cc)
DENSITY_UNIT = "g/cc"
#: the unit of a file's density calibration when the file names none (SCANCO's own unit)
FILE_DENSITY_UNIT_WHEN_ABSENT = "mg HA/ccm"
#: the files made when no outputs are asked for: the seed notebook's _HU, _RHO and _BWmask
FILE_ROLES = ("hu", "density", "mask")
#: the same set as Slicer nodes, the mask also as a segmentation
NODE_ROLES = ("hu", "density", "mask_labelmap", "mask_segmentation")
#: voxel type of the HU output
HU_DTYPE = "int16"
#: output format
OUTPUT_FORMAT = "nrrd"
#: where a batch's outputs go below -o (one of batch.discovery.LAYOUTS)
LAYOUT = "mirror"
#: name end of a conversion's metadata file: ``<stem>_metadata.json``
METADATA_SUFFIX = "_metadata.json"
#: name end of a conversion's QC picture: ``<stem>_report.png``
REPORT_SUFFIX = "_report.png"
