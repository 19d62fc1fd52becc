"""The Slicer extension files: CMake metadata and file lists, icons, the panel .ui (rendered with PySide6).

What Slicer's build and the ExtensionsIndex check, checked here without Slicer:
* top-level CMakeLists.txt: project name, every EXTENSION_* variable, raw URLs that point at files of this
  repository, the module subdirectory;
* ScancoUnits/CMakeLists.txt: every ScancoUnitsLib/**/*.py on disk and every file under Resources/ is listed
  (a file that is not listed is not installed), every listed file exists (a missing one breaks the build),
  WITH_GENERIC_TESTS and slicer_add_python_unittest;
* the 128x128 icon; the .ui loads with PySide6 stand-ins for the CTK/qMRML widgets and renders;
* the .ui and ScancoUnits.py agree (parameter names, widget names the code uses).
"""

from __future__ import annotations

import ast
import json
import os
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "ScancoUnits"
LIB_DIR = MODULE_DIR / "ScancoUnitsLib"
RESOURCES = MODULE_DIR / "Resources"
UI_FILE = RESOURCES / "UI" / "ScancoUnits.ui"
MODULE_FILE = MODULE_DIR / "ScancoUnits.py"
RAW_BASE = "https://raw.githubusercontent.com/ScancoUnits/SlicerScancoUnits/main/"
CATALOG_ENTRY = REPO / "ScancoUnits.json"
#: Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json of github:Slicer/Slicer (last changed in commit
#: cf2a70e6331d, 2024-11-26), copied unchanged: the schema ScancoUnits.json names in "$schema"
CATALOG_SCHEMA = REPO / "Testing" / "support" / "slicer-extension-catalog-entry-schema-v1.0.1.json"
EXTENSION_VARIABLES = ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS",
                       "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS",
                       "EXTENSION_DEPENDS")


# ---------------------------------------------------------------------------------------------------
# a small CMake reader: comments, quoted arguments, set(), ${VAR} substitution
# ---------------------------------------------------------------------------------------------------
_COMMAND = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", re.S)


def _strip_comments(text: str) -> str:
    out = []
    for line in text.splitlines():
        in_quote = False
        for i, ch in enumerate(line):
            if ch == '"':
                in_quote = not in_quote
            elif ch == "#" and not in_quote:
                line = line[:i]
                break
        out.append(line)
    return "\n".join(out)


def cmake_commands(text: str):
    """[(command_name_lower, [arguments])] of a CMake file (no nested parentheses needed here)."""
    text = _strip_comments(text)
    commands = []
    pos = 0
    while True:
        match = _COMMAND.search(text, pos)
        if not match:
            break
        depth, i = 1, match.end()
        in_quote = False
        while i < len(text) and depth:
            ch = text[i]
            if ch == '"':
                in_quote = not in_quote
            elif not in_quote and ch == "(":
                depth += 1
            elif not in_quote and ch == ")":
                depth -= 1
            i += 1
        body = text[match.end():i - 1]
        args = [a if a is not None and a != "" else b
                for a, b in re.findall(r'"((?:[^"\\]|\\.)*)"|([^\s"]+)', body)]
        commands.append((match.group(1).lower(), args))
        pos = i
    return commands


def cmake_variables(commands):
    variables = {}

    def expand(value):
        whole = re.fullmatch(r"\$\{([A-Za-z0-9_]+)\}", value)
        if whole and whole.group(1) in variables:   # an unquoted list variable splices its items
            return list(variables[whole.group(1)])
        return [re.sub(r"\$\{([A-Za-z0-9_]+)\}",
                       lambda m: ";".join(variables[m.group(1)]) if m.group(1) in variables else m.group(0), value)]

    for name, args in commands:
        if name == "set" and args:
            variables[args[0]] = [item for a in args[1:] for item in expand(a)]
    return variables


@pytest.fixture(scope="module")
def top_cmake():
    commands = cmake_commands((REPO / "CMakeLists.txt").read_text(encoding="utf-8"))
    return commands, cmake_variables(commands)


@pytest.fixture(scope="module")
def module_cmake():
    commands = cmake_commands((MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8"))
    variables = cmake_variables(commands)
    # expand ${MODULE_NAME} inside the lists too
    name = variables["MODULE_NAME"][0]
    for key, values in variables.items():
        variables[key] = [v.replace("${MODULE_NAME}", name) for v in values]
    return commands, variables


# ---------------------------------------------------------------------------------------------------
# CMake
# ---------------------------------------------------------------------------------------------------
def test_cmake_reader_understands_the_syntax_it_is_used_on():
    commands = cmake_commands('set(A "x # not a comment" y) # comment\nset(B ${A} "z w")\nfoo(bar)')
    variables = cmake_variables(commands)
    assert variables["A"] == ["x # not a comment", "y"]
    assert variables["B"] == ["x # not a comment", "y", "z w"]
    assert commands[-1] == ("foo", ["bar"])


def test_top_level_cmake_has_extension_metadata(top_cmake):
    commands, variables = top_cmake
    names = [c for c, _ in commands]
    assert ("project", ["ScancoUnits"]) in commands, "project() must be the extension name (= catalog JSON name)"
    assert not "ScancoUnits".lower().startswith("slicer")
    for key in EXTENSION_VARIABLES:
        assert key in variables and variables[key] and all(v.strip() for v in variables[key]), f"{key} is empty"
    assert variables["EXTENSION_CATEGORY"] == ["Quantification"]
    assert variables["EXTENSION_DEPENDS"] == ["NA"]
    assert variables["EXTENSION_HOMEPAGE"][0].startswith("https://github.com/ScancoUnits/SlicerScancoUnits")
    assert len(" ".join(variables["EXTENSION_DESCRIPTION"])) > 40
    assert ("find_package", ["Slicer", "REQUIRED"]) in commands
    assert ("add_subdirectory", ["ScancoUnits"]) in commands
    assert names.index("find_package") < names.index("add_subdirectory")
    includes = [args[0] for c, args in commands if c == "include"]
    assert includes == ["${Slicer_USE_FILE}", "${Slicer_EXTENSION_GENERATE_CONFIG}", "${Slicer_EXTENSION_CPACK}"]


def test_extension_urls_point_at_files_of_this_repository(top_cmake):
    _, variables = top_cmake
    urls = variables["EXTENSION_ICONURL"] + " ".join(variables["EXTENSION_SCREENSHOTURLS"]).split()
    assert len(urls) >= 2
    for url in urls:
        assert url.startswith(RAW_BASE), url
        relative = url[len(RAW_BASE):]
        target = REPO / relative
        assert target.is_file(), f"{url} -> {relative} is not in the repository"
        assert target.suffix.lower() in (".png", ".jpg", ".jpeg", ".gif")
        assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{relative} is not a PNG"


def _png_size(path: Path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_extension_icon_is_a_real_128_pixel_icon():
    icon = REPO / "ScancoUnits.png"
    assert _png_size(icon) == (128, 128)
    mpimg = pytest.importorskip("matplotlib.image")
    import numpy as np

    pixels = mpimg.imread(icon)
    colours = np.unique((pixels[..., :3] * 255).round().astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 200, "the icon looks like a flat placeholder"
    assert pixels[..., 3].min() == 0 and pixels[..., 3].max() == 1, "expected a transparent-cornered tile"
    module_icon = RESOURCES / "Icons" / "ScancoUnits.png"
    assert module_icon.is_file() and _png_size(module_icon)[0] >= 64


def test_module_cmake_lists_every_lib_file_and_resource(module_cmake):
    commands, variables = module_cmake
    scripts = variables["MODULE_PYTHON_SCRIPTS"]
    resources = variables["MODULE_PYTHON_RESOURCES"]
    on_disk_lib = sorted(f"ScancoUnitsLib/{p.relative_to(LIB_DIR).as_posix()}" for p in LIB_DIR.rglob("*.py")
                         if "__pycache__" not in p.parts)
    assert "ScancoUnitsLib/core/header.py" in on_disk_lib  # the sub-packages are found
    assert "ScancoUnitsLib/__init__.py" in on_disk_lib
    missing = [f for f in on_disk_lib if f not in scripts]
    assert not missing, f"ScancoUnits/CMakeLists.txt does not list (so would not install): {missing}"
    assert "ScancoUnits.py" in scripts
    on_disk_resources = sorted(
        p.relative_to(MODULE_DIR).as_posix() for p in RESOURCES.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith("."))
    assert on_disk_resources, "no resources found"
    missing = [f for f in on_disk_resources if f not in resources]
    assert not missing, f"ScancoUnits/CMakeLists.txt does not list these resources: {missing}"
    assert len(set(scripts)) == len(scripts) and len(set(resources)) == len(resources), "duplicates"


def test_every_file_the_module_cmake_lists_exists(module_cmake):
    _, variables = module_cmake
    listed = variables["MODULE_PYTHON_SCRIPTS"] + variables["MODULE_PYTHON_RESOURCES"]
    missing = [f for f in listed if not (MODULE_DIR / f).is_file()]
    assert not missing, f"listed in ScancoUnits/CMakeLists.txt but absent (the Slicer build would fail): {missing}"


def test_module_cmake_builds_a_scripted_module_with_tests(module_cmake):
    commands, variables = module_cmake
    assert variables["MODULE_NAME"] == ["ScancoUnits"]
    build = [args for c, args in commands if c == "slicermacrobuildscriptedmodule"]
    assert len(build) == 1
    args = build[0]
    for keyword in ("NAME", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS"):
        assert keyword in args, keyword
    assert args[args.index("SCRIPTS") + 1] == "${MODULE_PYTHON_SCRIPTS}"
    assert args[args.index("RESOURCES") + 1] == "${MODULE_PYTHON_RESOURCES}"
    unittests = [args for c, args in commands if c == "slicer_add_python_unittest"]
    assert unittests == [["SCRIPT", "${MODULE_NAME}.py"]]
    if_args = [args for c, args in commands if c == "if"]
    assert ["BUILD_TESTING"] in if_args


# ---------------------------------------------------------------------------------------------------
# module file and .ui agree
# ---------------------------------------------------------------------------------------------------
def _ui_tree():
    return ET.parse(UI_FILE).getroot()


def _ui_widgets():
    return {w.get("name"): w.get("class") for w in _ui_tree().iter("widget")}


def _ui_parameter_names():
    names = {}
    for widget in _ui_tree().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                names[prop.find("string").text] = widget.get("class")
    return names


def _parameter_node_fields():
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "ScancoUnitsParameterNode":
            return {stmt.target.id: ast.unparse(stmt.annotation) for stmt in node.body
                    if isinstance(stmt, ast.AnnAssign)}
    raise AssertionError("ScancoUnitsParameterNode not found")


def test_module_file_defines_the_classes_slicer_looks_up():
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    # Slicer looks up <module>FileReader and <module>FileWriter in the module file
    # (qSlicerScriptedFileWriter::setPythonSource: className = moduleName + "FileWriter")
    for name in ("ScancoUnits", "ScancoUnitsWidget", "ScancoUnitsLogic", "ScancoUnitsFileReader",
                 "ScancoUnitsFileWriter", "ScancoUnitsTest", "ScancoUnitsParameterNode"):
        assert name in classes, name


def test_ui_parameter_names_match_the_parameter_node():
    fields = _parameter_node_fields()
    bound = _ui_parameter_names()
    manual = {"inputFilePath", "exportDirectory"}   # ctkPathLineEdit <-> str, synchronised by the widget
    assert set(bound) == set(fields) - manual, (sorted(set(bound) ^ (set(fields) - manual)))
    # the parameterNodeWrapper connectors match exact widget classes
    allowed = {"bool": {"QCheckBox"}, "float": {"QDoubleSpinBox", "ctkSliderWidget"}, "int": {"QSpinBox", "QSlider"}}
    for name, cls in bound.items():
        annotation = fields[name]
        base = annotation.split("[", 1)[1].split(",")[0] if annotation.startswith("Annotated") else annotation
        if base in allowed:
            assert cls in allowed[base], f"{name}: {cls} cannot be bound to {base}"
        else:  # enums
            assert cls == "QComboBox", f"{name}: enum {base} needs a QComboBox, not {cls}"


def test_widget_code_only_uses_widgets_that_exist_in_the_ui():
    used = set(re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", MODULE_FILE.read_text(encoding="utf-8")))
    widgets = _ui_widgets()
    assert used, "the widget uses no .ui widget?"
    missing = sorted(used - set(widgets))
    assert not missing, f"ScancoUnits.py uses widgets absent from the .ui: {missing}"


def test_ui_has_the_panel_the_issue_asks_for():
    widgets = _ui_widgets()
    assert widgets["ScancoUnits"] == "qMRMLWidget"
    assert widgets["inputFileSelector"] == "ctkPathLineEdit"
    for name in ("headerSummaryLabel", "calibrationWarningLabel", "thresholdUnitComboBox", "lowerThresholdSpinBox",
                 "upperThresholdSpinBox", "thresholdEquivalentsLabel", "createHUCheckBox", "createDensityCheckBox",
                 "densityUnitComboBox", "createAttenuationCheckBox", "createMaskLabelmapCheckBox",
                 "createMaskSegmentationCheckBox", "exportDirectorySelector", "applyButton", "loadModeComboBox",
                 "subsampleStepSpinBox", "regionZFirstSpinBox", "histogramCollapsibleButton", "showHistogramButton",
                 "saveMaskCollapsibleButton", "maskNodeSelector", "maskSegmentComboBox", "saveMaskAsAimButton"):
        assert name in widgets, name
    assert widgets["maskNodeSelector"] == "qMRMLNodeComboBox"
    customs = {c.find("class").text for c in _ui_tree().iter("customwidget")}
    used_custom = {cls for cls in widgets.values() if cls.startswith(("ctk", "qMRML"))}
    assert used_custom <= customs, used_custom - customs


def _ctk_validator_pattern(name_filters):
    """The pattern ctkPathLineEdit gives its QRegularExpressionValidator (CTK Libs/Core/ctkUtils.cpp
    nameFiltersToRegExpPattern, nameFilterToExtensions and extensionToRegExp, transcribed)."""
    parts = []
    for name_filter in name_filters:
        match = re.search(r"\(([^)]*)\)", name_filter)
        for extension in (match.group(1).split() if match else []):
            ext = re.match(r"\*\.(\w+)", extension)
            if ext:
                parts.append(".*\\." + ext.group(1) + "?$")
    return "(" + "|".join(parts) + ")" if parts else ".+"


def test_path_fields_let_any_name_through():
    """ctkPathLineEdit turns nameFilters into a validator and emits currentPathChanged only for text it
    accepts: with the filters the .ui once had, C0004255.ISQ;1, x.AIM;3, x.iSQ and an empty field were refused,
    so Apply stayed disabled and the field could not be cleared. The .ui sets no nameFilters and the widget
    follows the text of the path's combo box (every change, empty included) and judges the file by content."""
    old_filters = ["SCANCO files (*.isq *.ISQ *.Isq *.aim *.AIM *.Aim *.isq;* *.ISQ;* *.aim;* *.AIM;*)",
                   "All files (*)"]
    old = re.compile(_ctk_validator_pattern(old_filters))
    for name in ("C0004255.ISQ;1", "x.AIM;3", "x.iSQ", ""):
        assert not old.fullmatch(name), name   # the bug, reproduced from CTK's rules
    assert old.fullmatch("C0004255.ISQ")
    for widget in _ui_tree().iter("widget"):
        if widget.get("class") == "ctkPathLineEdit":
            names = {p.get("name") for p in widget.findall("property")}
            assert "nameFilters" not in names, f"{widget.get('name')}: nameFilters becomes a validator"
            assert "settingKey" in names, widget.get("name")
    code = MODULE_FILE.read_text(encoding="utf-8")
    assert "currentPathChanged" not in code.replace("emits currentPathChanged", "")
    for selector in ("inputFileSelector", "exportDirectorySelector"):
        assert f'self.ui.{selector}.comboBox().connect("editTextChanged(QString)"' in code, selector
        assert f"self.ui.{selector}.addCurrentPathToHistory()" in code, selector   # history is saved


def test_mask_selector_offers_the_writer_node_classes():
    tree = _ui_tree()
    selector = next(w for w in tree.iter("widget") if w.get("name") == "maskNodeSelector")
    node_types = [s.text for p in selector.findall("property") if p.get("name") == "nodeTypes"
                  for s in p.iter("string")]
    module = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    classes = next(ast.literal_eval(node.value) for node in module.body if isinstance(node, ast.Assign)
                   and any(getattr(t, "id", None) == "MASK_NODE_CLASSES" for t in node.targets))
    assert tuple(node_types) == classes


# ---------------------------------------------------------------------------------------------------
# PySide6 render
# ---------------------------------------------------------------------------------------------------
def _render(out: Path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run([sys.executable, str(REPO / "Testing" / "tools" / "render_panel.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_panel_ui_loads_and_renders_with_pyside6(tmp_path):
    pytest.importorskip("PySide6")
    out = tmp_path / "panel.png"
    summary = _render(out)
    assert summary["top_class"] == "qMRMLWidget"
    classes = summary["classes"]
    assert classes["inputFileSelector"] == "ctkPathLineEdit", "stand-in not used: custom widget rendered blank"
    assert classes["inputCollapsibleButton"] == "ctkCollapsibleButton"
    assert classes["lowerThresholdSpinBox"] == "QDoubleSpinBox"
    assert summary["collapsible_titles"] == ["Input", "Thresholds (mask)", "Outputs", "Large volumes", "NRRD export",
                                             "Histogram", "Save mask as AIM", "Regions"]
    assert summary["collapsed"]["histogramCollapsibleButton"] is True
    assert summary["collapsed"]["saveMaskCollapsibleButton"] is True
    assert summary["threshold_units"] == ["per mille", "native", "1/cm", "HU", "mg HA/ccm"]
    from ScancoUnitsLib import defaults
    from ScancoUnitsLib.core import quantities

    # the defaults shown are the library's (the .ui holds no threshold value and no default unit)
    assert (summary["lower_threshold"], summary["upper_threshold"]) == defaults.THRESHOLDS_PERMILLE
    assert quantities.canonical_density_unit(summary["density_unit"]) == \
        quantities.canonical_density_unit(defaults.DENSITY_UNIT)
    assert set(summary["parameter_names"]) == set(_ui_parameter_names())
    assert summary["filled_from_library"]
    # 250 per mille is native 8192 (round to nearest of 8191.75) and 1000 per mille native 32767
    assert "8192" in summary["equivalents_text"] and "32767" in summary["equivalents_text"]
    width, height = _png_size(out)
    assert (width, height) == (summary["width"], summary["height"])
    assert width >= 400 and height >= 600
    mpimg = pytest.importorskip("matplotlib.image")

    pixels = mpimg.imread(out)
    assert pixels[..., :3].std() > 0.05, "the render is blank"
    shot = REPO / "Screenshots" / "panel.png"
    if os.environ.get("SCANCO_UPDATE_SCREENSHOTS") == "1":
        shot.write_bytes(out.read_bytes())
    assert shot.is_file(), "Screenshots/panel.png is missing: run Testing/tools/render_panel.py"
    assert _png_size(shot)[0] == width, "Screenshots/panel.png is stale: run Testing/tools/render_panel.py"


def test_ui_holds_no_default_thresholds():
    """The threshold spin boxes get their values from the parameter node, which takes the library's
    defaults: a value written into the .ui would be a second copy that stays behind."""
    widgets = {w.get("name"): w for w in _ui_tree().iter("widget")}
    for name in ("lowerThresholdSpinBox", "upperThresholdSpinBox"):
        values = [p for p in widgets[name].findall("property") if p.get("name") == "value"]
        assert values == [], name
    density = widgets["densityUnitComboBox"]
    assert not [p for p in density.findall("property") if p.get("name") == "currentIndex"]


# ---------------------------------------------------------------------------------------------------
# Extensions Index catalog entry (ScancoUnits.json)
# ---------------------------------------------------------------------------------------------------
_JSON_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "number": (int, float),
               "integer": int, "null": type(None)}


def schema_errors(instance, schema, where="$"):
    """The draft-07 keywords the catalog schema uses (type, required, properties, additionalProperties,
    enum, minimum, maximum, items): a list of "where: problem" (empty = valid)."""
    errors = []
    kind = schema.get("type")
    if kind is not None:
        expected = _JSON_TYPES[kind]
        is_bool = isinstance(instance, bool)
        if not isinstance(instance, expected) or (is_bool and kind in ("integer", "number")):
            return [f"{where}: {instance!r} is not of type {kind}"]
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{where}: {instance!r} is not one of {schema['enum']}")
    if "minimum" in schema and instance < schema["minimum"]:
        errors.append(f"{where}: {instance!r} is below the minimum {schema['minimum']}")
    if "maximum" in schema and instance > schema["maximum"]:
        errors.append(f"{where}: {instance!r} is above the maximum {schema['maximum']}")
    if isinstance(instance, dict):
        for name in schema.get("required", []):
            if name not in instance:
                errors.append(f"{where}: {name!r} is a required property")
        properties = schema.get("properties", {})
        for name, value in instance.items():
            if name in properties:
                errors += schema_errors(value, properties[name], f"{where}.{name}")
            elif schema.get("additionalProperties", True) is False:
                errors.append(f"{where}: additional property {name!r} is not allowed")
    if isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(instance):
            errors += schema_errors(item, schema["items"], f"{where}[{i}]")
    return errors


def test_schema_validator_finds_what_the_schema_forbids():
    schema = json.loads(CATALOG_SCHEMA.read_text(encoding="utf-8"))
    good = {"$schema": "x", "category": "Quantification", "scm_url": "https://example.org/r.git"}
    assert schema_errors(good, schema) == []
    bad = [dict(good, tier=0), dict(good, tier=6), dict(good, tier="3"), dict(good, tier=True),
           dict(good, scm_type="svn"), dict(good, build_dependencies=[1]), dict(good, homepage="x"),
           {k: v for k, v in good.items() if k != "scm_url"}, dict(good, enabled="yes")]
    for entry in bad:
        assert schema_errors(entry, schema), entry
    keywords = set()

    def collect(node):
        if isinstance(node, dict):
            keywords.update(node)
            for key, value in node.items():
                if key != "properties":
                    collect(value)
            for value in node.get("properties", {}).values():
                collect(value)

    collect(schema)
    understood = {"$schema", "$id", "type", "title", "description", "required", "additionalProperties",
                  "properties", "enum", "default", "minimum", "maximum", "items", "additionalItems"}
    assert keywords <= understood, f"the schema uses keywords this validator does not check: {keywords - understood}"


def test_catalog_entry_is_valid_against_the_extensions_index_schema(top_cmake):
    entry = json.loads(CATALOG_ENTRY.read_text(encoding="utf-8"))
    schema = json.loads(CATALOG_SCHEMA.read_text(encoding="utf-8"))
    assert schema["$id"].startswith(entry["$schema"].rstrip("#")), "ScancoUnits.json names another schema"
    assert schema_errors(entry, schema) == []
    try:
        import jsonschema
    except ImportError:
        pass
    else:   # the reference implementation, when it is installed
        jsonschema.validate(entry, schema)
    for key in ("$schema", "scm_url", "scm_revision", "build_dependencies", "category", "tier"):
        assert key in entry, key
    _, variables = top_cmake
    # the Index checks that the file is named after project(); the rest must agree with the CMake metadata
    assert CATALOG_ENTRY.stem == "ScancoUnits"
    assert entry["category"] == variables["EXTENSION_CATEGORY"][0]
    assert entry["scm_url"] == variables["EXTENSION_HOMEPAGE"][0] + ".git"
    assert entry["build_dependencies"] == [] and variables["EXTENSION_DEPENDS"] == ["NA"]


def test_repository_address_is_set_in_one_place(top_cmake):
    """The homepage, icon and screenshot URLs are made from one CMake variable; the module's help link and the
    README use the same address."""
    _, variables = top_cmake
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    repository = variables["SCANCOUNITS_REPOSITORY"][0]
    assert text.count(repository) == 1, "the repository address is written more than once in CMakeLists.txt"
    assert variables["EXTENSION_HOMEPAGE"] == [f"https://github.com/{repository}"]
    for key in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert all(url.startswith(f"https://raw.githubusercontent.com/{repository}/") for url in
                   " ".join(variables[key]).split()), key
    homepage = variables["EXTENSION_HOMEPAGE"][0]
    from ScancoUnitsLib.slicer.module_text import help_text   # the module's help (ScancoUnits.py shows it)

    assert homepage in help_text()
    links = set(re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", (REPO / "README.md").read_text(encoding="utf-8")))
    ours = {link for link in links if "ScancoUnits" in link}
    assert ours <= {homepage, homepage + ".git"}, ours


def test_readme_names_the_licence_and_the_panel_picture():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    licence = (REPO / "LICENSE.txt").read_text(encoding="utf-8")
    assert "Apache License" in licence and "Version 2.0" in licence
    assert re.search(r"Apache License,? (Version )?2\.0", readme), "the README does not name the licence"
    assert "LICENSE.txt" in readme
    from ScancoUnitsLib import defaults

    section = readme[readme.index("## Use in 3D Slicer"):]
    section = section[:section.index("\n## ", 5)]
    assert "stand-in" in section and ".ui" in section   # where the panel picture comes from
    assert f"default {defaults.DENSITY_UNIT}" in section or \
        f"{defaults.DENSITY_UNIT} by default" in section
