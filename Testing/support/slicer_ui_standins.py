"""PySide6 stand-ins for the CTK / qMRML widgets used by ScancoUnits.ui, to load and render the panel
without Slicer (``QT_QPA_PLATFORM=offscreen``).

Qt's QUiLoader only builds widget classes it knows; for the custom classes of a Slicer .ui it falls back to
an empty QWidget (titles, paths and sliders vanish). :func:`register_standins` registers small look-alikes
under the exact class names used in the .ui, with the Qt properties the .ui sets, so the loaded panel keeps
its layout and text and can be screenshot. Only a preview aid: Slicer itself uses the real CTK widgets.
"""

from __future__ import annotations

from PySide6 import QtCore, QtGui, QtWidgets


class ctkCollapsibleButton(QtWidgets.QFrame):
    """A header button (arrow + title) above a content area that hides when collapsed."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._text = ""
        self._collapsed = False
        self.setFrameShape(QtWidgets.QFrame.StyledPanel)
        self._header = QtWidgets.QToolButton(self)
        self._header.setToolButtonStyle(QtCore.Qt.ToolButtonTextBesideIcon)
        self._header.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Fixed)
        font = self._header.font()
        font.setBold(True)
        self._header.setFont(font)
        self._header.clicked.connect(lambda: self.setCollapsed(not self._collapsed))
        self._header_height = self._header.sizeHint().height()
        self._update_header()

    def _reserve_header_space(self):
        """Push the content layout below the header (once; QUiLoader builds the layout after __init__)."""
        layout = self.layout()
        if layout is None or getattr(self, "_header_space_reserved", False):
            return
        margins = layout.contentsMargins()
        layout.setContentsMargins(margins.left(), margins.top() + self._header_height + 2,
                                  margins.right(), margins.bottom())
        self._header_space_reserved = True

    def resizeEvent(self, event):  # noqa: N802
        super().resizeEvent(event)
        self._header.setGeometry(0, 0, self.width(), self._header_height)

    def _update_header(self):
        self._header.setArrowType(QtCore.Qt.RightArrow if self._collapsed else QtCore.Qt.DownArrow)
        self._header.setText(self._text)

    def apply_collapsed(self):
        """Hide or show the content (called after the children exist)."""
        self._reserve_header_space()
        self._header.raise_()
        for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
            if child is not self._header:
                child.setVisible(not self._collapsed)
        if self._collapsed:
            self.setMaximumHeight(self._header_height + 4)
        else:
            self.setMaximumHeight(16777215)

    def getText(self):  # noqa: N802
        return self._text

    def setText(self, text):  # noqa: N802
        self._text = text
        self._update_header()

    def getCollapsed(self):  # noqa: N802
        return self._collapsed

    def setCollapsed(self, collapsed):  # noqa: N802
        self._collapsed = bool(collapsed)
        self._update_header()
        self.apply_collapsed()

    text = QtCore.Property(str, getText, setText)
    collapsed = QtCore.Property(bool, getCollapsed, setCollapsed)


class ctkPathLineEdit(QtWidgets.QWidget):
    """An editable path with a browse button, like CTK's (currentPath, nameFilters, filters, settingKey)."""

    currentPathChanged = QtCore.Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._combo = QtWidgets.QComboBox(self)
        self._combo.setEditable(True)
        self._combo.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Fixed)
        self._button = QtWidgets.QToolButton(self)
        self._button.setIcon(self.style().standardIcon(QtWidgets.QStyle.SP_DirOpenIcon))
        layout.addWidget(self._combo)
        layout.addWidget(self._button)
        self._name_filters = []
        self._filters = 0
        self._setting_key = ""
        self._combo.editTextChanged.connect(self.currentPathChanged)

    def comboBox(self):  # noqa: N802
        return self._combo

    def addCurrentPathToHistory(self):  # noqa: N802
        path = self.getCurrentPath()
        if path and self._combo.findText(path) < 0:
            self._combo.insertItem(0, path)

    def getCurrentPath(self):  # noqa: N802
        return self._combo.currentText()

    def setCurrentPath(self, path):  # noqa: N802
        self._combo.setEditText(path)

    def getNameFilters(self):  # noqa: N802
        return list(self._name_filters)

    def setNameFilters(self, filters):  # noqa: N802
        self._name_filters = list(filters)
        self._combo.setToolTip("; ".join(self._name_filters))

    def getFilters(self):  # noqa: N802
        return self._filters

    def setFilters(self, value):  # noqa: N802
        self._filters = int(value) if not isinstance(value, str) else 0

    def getSettingKey(self):  # noqa: N802
        return self._setting_key

    def setSettingKey(self, key):  # noqa: N802
        self._setting_key = key

    currentPath = QtCore.Property(str, getCurrentPath, setCurrentPath)
    nameFilters = QtCore.Property("QStringList", getNameFilters, setNameFilters)
    filters = QtCore.Property(int, getFilters, setFilters)
    settingKey = QtCore.Property(str, getSettingKey, setSettingKey)


class ctkDirectoryButton(QtWidgets.QPushButton):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setIcon(self.style().standardIcon(QtWidgets.QStyle.SP_DirIcon))

    def getDirectory(self):  # noqa: N802
        return self.text()

    def setDirectory(self, directory):  # noqa: N802
        self.setText(directory)

    directory = QtCore.Property(str, getDirectory, setDirectory)


class ctkSliderWidget(QtWidgets.QWidget):
    """Slider + spin box with float minimum/maximum/value/singleStep/decimals."""

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._slider = QtWidgets.QSlider(QtCore.Qt.Horizontal, self)
        self._spin = QtWidgets.QDoubleSpinBox(self)
        layout.addWidget(self._slider)
        layout.addWidget(self._spin)
        self._spin.valueChanged.connect(self._sync_slider)

    def _sync_slider(self, value):
        span = self._spin.maximum() - self._spin.minimum()
        self._slider.setValue(int(round(1000 * (value - self._spin.minimum()) / span)) if span > 0 else 0)

    def _get(name):
        return lambda self: getattr(self._spin, name)()

    def _set(name):
        def setter(self, value):
            getattr(self._spin, name)(value)
            self._slider.setRange(0, 1000)
            self._sync_slider(self._spin.value())
        return setter

    minimum = QtCore.Property(float, _get("minimum"), _set("setMinimum"))
    maximum = QtCore.Property(float, _get("maximum"), _set("setMaximum"))
    value = QtCore.Property(float, _get("value"), _set("setValue"))
    singleStep = QtCore.Property(float, _get("singleStep"), _set("setSingleStep"))
    decimals = QtCore.Property(int, _get("decimals"), _set("setDecimals"))
    del _get, _set


class qMRMLNodeComboBox(QtWidgets.QComboBox):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._node_types = []
        self.addItem("None")

    def getNodeTypes(self):  # noqa: N802
        return list(self._node_types)

    def setNodeTypes(self, types):  # noqa: N802
        self._node_types = list(types)

    def setMRMLScene(self, scene):  # noqa: N802
        pass

    def _flag(name):
        return QtCore.Property(bool, lambda self: bool(getattr(self, "_" + name, False)),
                               lambda self, value: setattr(self, "_" + name, bool(value)))

    nodeTypes = QtCore.Property("QStringList", getNodeTypes, setNodeTypes)
    noneEnabled = _flag("noneEnabled")
    addEnabled = _flag("addEnabled")
    removeEnabled = _flag("removeEnabled")
    del _flag


class qMRMLWidget(QtWidgets.QWidget):
    mrmlSceneChanged = QtCore.Signal(object)

    def setMRMLScene(self, scene):  # noqa: N802
        self.mrmlSceneChanged.emit(scene)


STANDINS = (ctkCollapsibleButton, ctkPathLineEdit, ctkDirectoryButton, ctkSliderWidget, qMRMLNodeComboBox,
            qMRMLWidget)


def register_standins(loader) -> None:
    """Register every stand-in with a ``QUiLoader``."""
    for cls in STANDINS:
        loader.registerCustomWidget(cls)


def finish_loading(root: QtWidgets.QWidget) -> None:
    """Apply state that needs the children (collapsed sections)."""
    for button in root.findChildren(ctkCollapsibleButton):
        button.apply_collapsed()


def load_ui(path, parent=None) -> QtWidgets.QWidget:
    """Load a Slicer .ui file with the stand-ins (a QApplication must exist)."""
    from PySide6 import QtUiTools

    loader = QtUiTools.QUiLoader()
    register_standins(loader)
    ui_file = QtCore.QFile(str(path))
    if not ui_file.open(QtCore.QFile.ReadOnly):
        raise OSError(f"cannot open {path}")
    try:
        widget = loader.load(ui_file, parent)
    finally:
        ui_file.close()
    if widget is None:
        raise RuntimeError(f"QUiLoader could not load {path}: {loader.errorString()}")
    finish_loading(widget)
    return widget


def render(widget: QtWidgets.QWidget, path, width: int = 420) -> QtGui.QImage:
    """Lay out ``widget`` at ``width`` pixels and its natural height, and save a PNG."""
    widget.setAttribute(QtCore.Qt.WA_DontShowOnScreen, True)
    widget.show()
    widget.resize(width, widget.sizeHint().height())
    widget.adjustSize()
    widget.resize(width, max(widget.sizeHint().height(), widget.minimumSizeHint().height()))
    QtWidgets.QApplication.processEvents()
    image = widget.grab().toImage()
    if not image.save(str(path)):
        raise OSError(f"could not write {path}")
    return image
