"""Input formats register themselves (formats/inputs.py); the reader, sniffing and discovery ask the registry.

A format defined in this test alone (an ISQ behind another magic) is recognised by content, read and
converted through the command line, with no change to the package.
"""

from __future__ import annotations

import numpy as np
import pytest

from ScancoUnitsLib import Calibration, write_isq
from ScancoUnitsLib.cli.main import main
from ScancoUnitsLib.errors import ScancoFormatError
from ScancoUnitsLib.formats import inputs
from ScancoUnitsLib.formats.isq import ISQ_MAGIC, isq_header_bytes_needed, parse_isq_header
from ScancoUnitsLib.formats.reader import read_header, read_volume, sniff_format

TOY_MAGIC = b"TOYSCAN-HEADER01"
CAL = Calibration(mu_scaling=8192, mu_water_per_cm=0.2409, density_slope=1603.51904,
                  density_intercept=-391.209015, density_unit="mg HA/ccm")


def test_the_registry_holds_isq_and_aim_in_order():
    assert [f.name for f in inputs.input_formats()][:2] == ["ISQ", "AIM"]
    assert inputs.recognise(b"\x10\x00\x00\x00\x5c\x00\x00\x00" + b"\0" * 8)[1].startswith("legacy AIM")
    assert inputs.recognise(b"nothing we know") == (None, None)


@pytest.fixture
def toy_format(monkeypatch):
    monkeypatch.setattr(inputs, "_INPUT_FORMATS", list(inputs._INPUT_FORMATS))
    inputs.register_input_format(inputs.InputFormat(
        "TOY", sniff=lambda head: "TOY" if head[:16] == TOY_MAGIC else None,
        header_bytes_needed=lambda first: isq_header_bytes_needed(ISQ_MAGIC + first[16:]),
        parse_header=lambda head, path, size: parse_isq_header(ISQ_MAGIC + head[16:], path, size)))


def test_a_format_registered_in_a_test_is_read_and_converted(tmp_path, toy_format, capsys):
    volume = (np.arange(3 * 4 * 5) * 1000).astype(np.int16).reshape(3, 4, 5)
    isq = write_isq(tmp_path / "a.ISQ", volume, voxel_size_mm=(0.05,) * 3, calibration=CAL)
    toy = tmp_path / "toy" / "T1.ISQ"
    toy.parent.mkdir()
    toy.write_bytes(TOY_MAGIC + open(isq, "rb").read()[16:])
    assert sniff_format(toy) == "TOY"
    assert read_header(toy).dimensions == (5, 4, 3)
    np.testing.assert_array_equal(read_volume(toy), volume)
    assert main(["convert", str(toy.parent), "-o", str(tmp_path / "out"), "--outputs", "native"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["T1_metadata.json", "T1_native.nrrd"]


def test_without_the_registration_the_same_file_is_refused_in_one_line(tmp_path):
    toy = tmp_path / "T1.ISQ"
    toy.write_bytes(TOY_MAGIC + b"\0" * 1024)
    assert sniff_format(toy) is None
    with pytest.raises(ScancoFormatError, match="unknown magic bytes"):
        read_header(toy)
