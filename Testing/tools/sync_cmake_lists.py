"""Rewrite the file lists of ScancoUnits/CMakeLists.txt from what is on disk.

MODULE_PYTHON_SCRIPTS = ScancoUnits.py + every ScancoUnits/ScancoUnitsLib/**/*.py (the sub-packages too; sorted by
path, ``__init__.py`` first in each folder);
MODULE_PYTHON_RESOURCES = every file under ScancoUnits/Resources. Testing/scene/test_slicer_files.py checks the
same thing; run this after adding or removing a Lib file or a resource.

    .venv/bin/python Testing/tools/sync_cmake_lists.py          # rewrite
    .venv/bin/python Testing/tools/sync_cmake_lists.py --check  # exit 1 when out of date
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[2] / "ScancoUnits"
CMAKE = MODULE_DIR / "CMakeLists.txt"


def synced_text(text: str) -> str:
    name = "ScancoUnits"
    lib_dir = MODULE_DIR / f"{name}Lib"
    lib = sorted((p.relative_to(lib_dir) for p in lib_dir.rglob("*.py") if "__pycache__" not in p.parts),
                 key=lambda rel: rel.as_posix().replace("__init__.py", "\0"))
    lib = [rel.as_posix() for rel in lib]
    scripts = [f"{name}.py"] + [f"{name}Lib/{n}" for n in lib]
    resources = sorted(p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*")
                       if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith("."))
    resources = [r.replace(f"/{name}.", "/${MODULE_NAME}.") for r in resources]
    for variable, items in (("MODULE_PYTHON_SCRIPTS", scripts), ("MODULE_PYTHON_RESOURCES", resources)):
        block = "".join(f"  {i.replace(name, '${MODULE_NAME}', 1) if i.startswith(name) else i}\n" for i in items)
        text, count = re.subn(rf"(set\({variable}\n)(.*?)(  \))", lambda m: m.group(1) + block + m.group(3), text,
                              flags=re.S)
        if count != 1:
            raise SystemExit(f"{CMAKE}: cannot find set({variable} ...)")
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether the lists are up to date")
    args = parser.parse_args(argv)
    text = CMAKE.read_text(encoding="utf-8")
    new = synced_text(text)
    if args.check:
        print("up to date" if new == text else f"{CMAKE} is out of date")
        return 0 if new == text else 1
    if new != text:
        CMAKE.write_text(new, encoding="utf-8")
        print(f"updated {CMAKE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
