"""The node attributes ScancoUnits writes and reads: one prefix for all of them.

Every attribute the scene code, the histogram chart, the mask export and the Slicer module put on (or look
up in) MRML nodes is named ``ATTRIBUTE_PREFIX + key``; the keys read in more than one place are named here,
so a load, the panel's preview, Save mask as AIM and the file writer agree on them. Standard library only
(imported by the module file when it loads).
"""

from __future__ import annotations

from typing import Dict

#: the prefix of every node attribute ScancoUnits writes
ATTRIBUTE_PREFIX = "ScancoUnits."


def attribute_name(key: str) -> str:
    """The full node attribute name of ``key`` (``"SourcePath"`` -> ``"ScancoUnits.SourcePath"``)."""
    return ATTRIBUTE_PREFIX + key


#: file name of the scan a node was loaded from
SOURCE_FILE = attribute_name("SourceFile")
#: absolute path of that scan (what Save mask as AIM and the file writer need)
SOURCE_PATH = attribute_name("SourcePath")
#: the quantity a volume node holds (hu, density_mg_ha_ccm, density_g_cc, mu, native)
QUANTITY = attribute_name("Quantity")
#: a colour table made for a mask labelmap (removed with it)
MASK_COLORS = attribute_name("MaskColors")
#: a subject-hierarchy folder made by a load (removed when it is empty)
FOLDER = attribute_name("Folder")
#: set on the module's parameter node once it holds the library's defaults
LIBRARY_DEFAULTS_APPLIED = attribute_name("LibraryDefaultsApplied")


def set_attributes(node, attributes: Dict[str, object]) -> None:
    """Set ``attributes`` (key -> value, None skipped) on ``node`` as prefixed string attributes."""
    for key, value in attributes.items():
        if value is None:
            continue
        node.SetAttribute(attribute_name(key), str(value))
