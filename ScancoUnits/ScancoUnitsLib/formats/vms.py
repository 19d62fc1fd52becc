"""OpenVMS encodings used by SCANCO files: VAX F/G floating point and VMS dates.

* VAX F (4 bytes): swap the two 16-bit halves, read an IEEE little-endian float32, divide by 4.
* VAX G (8 bytes): reverse the order of the four 16-bit words, read an IEEE float64, divide by 4.
* VMS date: unsigned 64-bit count of 100 ns ticks since 1858-11-17 00:00:00 (local scanner time).
* Text dates in AIM logs: ``DD-MMM-YYYY hh:mm:ss.cc`` with hundredths of a second.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import struct
from typing import Optional

import numpy as np

VMS_EPOCH = _dt.datetime(1858, 11, 17)
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


class VmsEncodingError(ValueError):
    """A value cannot be represented or decoded (reserved operand, overflow, bad date)."""


# ---- VAX F (float32) ------------------------------------------------------------------------------
def vax_f_to_float(raw: bytes) -> float:
    """Decode one 4-byte VAX F-float."""
    if len(raw) != 4:
        raise VmsEncodingError("VAX F-float needs 4 bytes")
    swapped = raw[2:4] + raw[0:2]
    exponent_is_zero = not (swapped[3] & 0x7F or swapped[2] & 0x80)
    if exponent_is_zero:
        if swapped[3] & 0x80:
            raise VmsEncodingError("VAX F-float reserved operand (sign set, exponent zero)")
        return 0.0  # VAX: exponent zero means zero, whatever the fraction bits
    return struct.unpack("<f", swapped)[0] / 4.0


def float_to_vax_f(value: float) -> bytes:
    """Encode a float as a 4-byte VAX F-float (0.0 -> four zero bytes)."""
    if not math.isfinite(value):
        raise VmsEncodingError(f"{value!r} has no VAX F-float representation")
    if value == 0:
        return b"\x00\x00\x00\x00"
    try:
        ieee = struct.pack("<f", value * 4.0)
    except OverflowError as exc:
        raise VmsEncodingError(f"{value!r} is too large for a VAX F-float") from exc
    return ieee[2:4] + ieee[0:2]


def vax_f_array_to_float32(raw: np.ndarray) -> np.ndarray:
    """Decode an array of VAX F-floats given as uint8 (length multiple of 4) into float32.

    Swapping the 16-bit halves and dividing the IEEE reading by 4 is exact for VAX exponents 3-254.
    The others are decoded from their bit fields: exponent 0 is zero (a reserved operand, sign set,
    becomes NaN), 1-2 fall below float32's normal range (rounded to the nearest subnormal) and 255,
    which IEEE reads as inf/NaN, is a finite VAX number up to 1.7e38.
    """
    halves = np.frombuffer(raw, dtype="<u2").reshape(-1, 2)[:, ::-1]
    bits = np.ascontiguousarray(halves).view("<u4").reshape(-1)
    with np.errstate(invalid="ignore", over="ignore"):
        values = bits.view("<f4") / np.float32(4.0)
    exponent = (bits >> np.uint32(23)) & np.uint32(0xFF)
    special = (exponent < 3) | (exponent == 255)
    if special.any():
        b = bits[special]
        e = ((b >> np.uint32(23)) & np.uint32(0xFF)).astype(np.int64)
        fraction = (b & np.uint32(0x7FFFFF)).astype(np.float64)
        negative = (b >> np.uint32(31)).astype(bool)
        exact = np.ldexp(0.5 + fraction / 2.0**24, e - 128)  # float64 holds every VAX F value exactly
        exact[negative] = -exact[negative]
        exact[e == 0] = 0.0
        exact[(e == 0) & negative] = np.nan
        values[special] = exact.astype(np.float32)
    return values


# ---- VAX G (float64) ------------------------------------------------------------------------------
def vax_g_to_float(raw: bytes) -> float:
    """Decode one 8-byte VAX G-float from its bit fields.

    Exponent zero is zero (a reserved operand when the sign is set: VmsEncodingError); exponent
    2047, which the swap-and-divide trick would read as IEEE inf/NaN, is a finite VAX number.
    """
    if len(raw) != 8:
        raise VmsEncodingError("VAX G-float needs 8 bytes")
    w0, w1, w2, w3 = struct.unpack("<4H", raw)
    sign, exponent = w0 >> 15, (w0 >> 4) & 0x7FF
    if exponent == 0:
        if sign:
            raise VmsEncodingError("VAX G-float reserved operand (sign set, exponent zero)")
        return 0.0
    fraction = ((w0 & 0xF) << 48) | (w1 << 32) | (w2 << 16) | w3
    value = math.ldexp(0.5 + fraction / 2.0**53, exponent - 1024)  # exact: 53 significant bits
    return -value if sign else value


def float_to_vax_g(value: float) -> bytes:
    """Encode a float as an 8-byte VAX G-float."""
    if not math.isfinite(value):
        raise VmsEncodingError(f"{value!r} has no VAX G-float representation")
    if value == 0:
        return b"\x00" * 8
    if not math.isfinite(value * 4.0):
        raise VmsEncodingError(f"{value!r} is too large for this VAX G-float encoder")
    ieee = struct.pack("<d", value * 4.0)
    words = [ieee[i:i + 2] for i in range(0, 8, 2)]
    return b"".join(reversed(words))


# ---- VMS binary dates ------------------------------------------------------------------------------
def vms_date_to_datetime(ticks: int) -> _dt.datetime:
    """100 ns ticks since 1858-11-17 (unsigned) -> naive datetime (scanner local time)."""
    if ticks < 0:
        ticks &= (1 << 64) - 1
    try:
        return VMS_EPOCH + _dt.timedelta(microseconds=ticks // 10)
    except OverflowError as exc:
        raise VmsEncodingError(f"VMS date {ticks} is out of range") from exc


def vms_date_to_iso(ticks: int) -> str:
    return vms_date_to_datetime(ticks).isoformat()


def datetime_to_vms_date(when: _dt.datetime) -> int:
    delta = when - VMS_EPOCH
    ticks = (delta.days * 86400 + delta.seconds) * 10_000_000 + delta.microseconds * 10
    if not 0 <= ticks < 1 << 64:
        raise VmsEncodingError(f"{when.isoformat()} cannot be stored as a VMS date")
    return ticks


# ---- text dates (AIM processing log) ----------------------------------------------------------------
_TEXT_DATE = re.compile(
    r"^\s*(\d{1,2})-([A-Za-z]{3})-(\d{4})\s+(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?\s*$"
)


def log_date_to_iso(text: str) -> Optional[str]:
    """`` 8-APR-2017 15:52:50.25`` -> ``2017-04-08T15:52:50.250000``; None if it is not a date."""
    match = _TEXT_DATE.match(text)
    if not match:
        return None
    day, month, year, hour, minute, second, fraction = match.groups()
    try:
        month_number = _MONTHS.index(month.upper()) + 1
        micro = int((fraction or "0").ljust(6, "0"))
        return _dt.datetime(int(year), month_number, int(day), int(hour), int(minute), int(second),
                            micro).isoformat()
    except ValueError:
        return None


def datetime_to_log_date(when: _dt.datetime) -> str:
    """Scanco style: day padded with a space, upper-case month, hundredths of a second."""
    hundredths = when.microsecond // 10_000
    return (f"{when.day:2d}-{_MONTHS[when.month - 1]}-{when.year:04d} "
            f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}.{hundredths:02d}")
