"""The storage rule (what a char mask and a float AIM are stored as, what is a label) is one rule."""

import re
from pathlib import Path

from ScancoUnitsLib.core.quantities import QUANTITIES, is_label, storage_key
from ScancoUnitsLib.formats.writers import get_format

LIB = Path(__file__).resolve().parents[2] / "ScancoUnits" / "ScancoUnitsLib"


def test_the_rule():
    assert storage_key("char_mask") == "mask" and storage_key("float") == "native"
    assert storage_key("hu") == "hu" and storage_key("not a quantity") == "not a quantity"
    assert {k for k in QUANTITIES if is_label(k)} == {"mask", "char_mask"}
    assert {k for k, q in QUANTITIES.items() if q.pass_through} == {"native", "float"}
    aim = get_format("aim")
    assert [k for k in QUANTITIES if aim.accepts(storage_key(k))] == ["native", "mask", "char_mask", "float"]


def test_no_second_copy_of_the_rule_in_the_package():
    # the three copies the redesign issue found: {"char_mask": "mask", "float": "native"} tables and
    # label checks that knew only "mask"
    copies = []
    for path in LIB.rglob("*.py"):
        if path.name == "quantities.py":
            continue
        text = path.read_text(encoding="utf-8")
        if re.search(r"""["']char_mask["']\s*:\s*["']mask["']""", text) or re.search(
                r"""label\s*=\s*spec\.quantity\s*==\s*["']mask["']""", text):
            copies.append(str(path.relative_to(LIB)))
    assert copies == []
