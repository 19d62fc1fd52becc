"""``scanco-units sample``: download the seed notebook's sample scan (C0004255.ISQ) into a cache.

The file is verified by its SHA-256 and downloaded once; offline, the command says so in one line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SAMPLE_FILE_NAME = "C0004255.ISQ"
SAMPLE_URL = "https://data.kitware.com/api/v1/file/591e56178d777f16d01e0d20/download"
SAMPLE_SHA256 = "c2a3750c75826cb077d92093d43976cc0350198b55edecd681265eebabfb438b"


class SampleDownloadError(RuntimeError):
    pass


def default_cache_dir() -> Path:
    base = os.environ.get("SCANCO_UNITS_CACHE") or os.environ.get("XDG_CACHE_HOME") or \
        os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / ("" if os.environ.get("SCANCO_UNITS_CACHE") else "scanco-units")


def fetch_sample(*, url: str = SAMPLE_URL, sha256: str = SAMPLE_SHA256, cache_dir=None,
                 file_name: str = SAMPLE_FILE_NAME) -> Path:
    """Path of the sample file in the cache, downloading it first if needed (needs pooch)."""
    try:
        import pooch
    except ImportError:
        raise SampleDownloadError("downloading the sample needs pooch: pip install 'scanco-units[sample]'") from None
    pooch.get_logger().setLevel("WARNING")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    try:
        path = pooch.retrieve(url, known_hash=f"sha256:{sha256}", fname=file_name, path=cache,
                              progressbar=False)
    except ValueError as exc:  # pooch: hash mismatch
        raise SampleDownloadError(f"{url}: downloaded file failed its SHA-256 check ({exc})") from None
    except Exception as exc:  # requests' connection errors and the like
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SampleDownloadError(
            f"cannot download {url} (offline or server unreachable: {reason[:200]})") from None
    return Path(path)


def _cmd_sample(args) -> int:
    try:
        path = fetch_sample(url=args.url, sha256=args.sha256, cache_dir=args.cache)
    except SampleDownloadError as exc:
        print(f"scanco-units: error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def add_sample_command(sub) -> None:
    p = sub.add_parser("sample", help="download the sample scan C0004255.ISQ into a cache and print its path")
    p.add_argument("--cache", default=None, metavar="DIR", help="cache folder (default ~/.cache/scanco-units)")
    p.add_argument("--url", default=SAMPLE_URL, help="download address (a mirror)")
    p.add_argument("--sha256", default=SAMPLE_SHA256, help="expected SHA-256 of the file")
    p.set_defaults(func=_cmd_sample)
