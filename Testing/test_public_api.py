"""The package's public names: each resolves to what it names, whatever was imported before it."""

import importlib
import pkgutil
import subprocess
import sys
import types

import ScancoUnitsLib


def test_no_public_name_is_shadowed_by_a_submodule():
    # importing a submodule sets the package attribute of that name; a public function with the
    # same name as a module would then resolve to the module (it did: region_statistics)
    submodules = {info.name for info in pkgutil.iter_modules(ScancoUnitsLib.__path__)}
    assert not submodules & set(ScancoUnitsLib.__all__)


def test_every_public_name_resolves_after_every_module_is_loaded():
    code = (
        "import importlib, pkgutil, types, ScancoUnitsLib\n"
        "for info in pkgutil.iter_modules(ScancoUnitsLib.__path__):\n"
        "    try:\n"
        "        importlib.import_module('ScancoUnitsLib.' + info.name)\n"
        "    except ImportError:\n"
        "        pass  # an optional extra that is not installed\n"
        "bad = [n for n in ScancoUnitsLib.__all__ if isinstance(getattr(ScancoUnitsLib, n), types.ModuleType)]\n"
        "assert not bad, bad\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr


def test_public_names_come_from_the_module_the_map_names():
    for name in ScancoUnitsLib.__all__:
        if name == "__version__":
            continue
        try:
            value = getattr(ScancoUnitsLib, name)
        except ImportError:
            continue  # defined in a module of an optional extra that is not installed
        assert not isinstance(value, types.ModuleType), name
        module = importlib.import_module(f"ScancoUnitsLib.{ScancoUnitsLib._EXPORTS[name]}")
        assert getattr(module, name) is value
