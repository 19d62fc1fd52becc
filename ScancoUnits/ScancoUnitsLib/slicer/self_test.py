"""The Slicer module's self-test (Reload and Test, SelfTests, ctest), on small ISQ/AIM files written by
ScancoUnitsLib (no download), through the module's own Logic, file reader and file types.

:class:`SelfTestChecks` is a mixin for the module's ``ScancoUnitsTest`` (a ScriptedLoadableModuleTest), which
names the classes and file types to check (``logicClass``, ``readerClass``, ``readerFileType``,
``writerFileType``): the checks live here, the module file only wires them. ``runTest`` and ctest (the
``test_*`` methods) run the same checks. Slicer and VTK are imported inside the methods only.
"""

from __future__ import annotations

import logging
import os
import tempfile
import unittest

import numpy as np

from .node_attributes import SOURCE_PATH, attribute_name


class SelfTestChecks:
    """The checks of the module's self-test (mix into a unittest.TestCase with ``delayDisplay``)."""

    #: set by the module's test class: its Logic and file reader classes and the reader's / writer's file types
    logicClass = None
    readerClass = None
    readerFileType = None
    writerFileType = None

    CALIBRATION = dict(mu_scaling=8192, mu_water_per_cm=0.2409, density_slope=1603.51904,
                       density_intercept=-391.209015, density_unit="mg HA/ccm")
    VOXEL_SIZE_MM = (0.0607, 0.0607, 0.0607)

    def setUp(self):
        import slicer

        slicer.mrmlScene.Clear(0)
        self._tempDir = tempfile.TemporaryDirectory(prefix="ScancoUnitsTest-")
        self.tempDir = self._tempDir.name

    def tearDown(self):
        self._tempDir.cleanup()

    def runTest(self):
        """The same checks as ctest runs (every test_* method), in order."""
        for name in sorted(n for n in dir(self) if n.startswith("test_")):
            self.setUp()
            try:
                getattr(self, name)()
            except unittest.SkipTest as reason:
                logging.info(f"{name} skipped: {reason}")
            finally:
                self.tearDown()

    # ---- helpers -----------------------------------------------------------------------------------
    def _volume(self, shape=(6, 7, 9), seed=4255):
        rng = np.random.default_rng(seed)
        volume = rng.integers(-800, 20000, size=shape).astype(np.int16)
        volume[0, 0, :4] = (8191, 8192, 32767, -32768)   # the per-mille 250 edge and the int16 ends
        return volume

    def _calibration(self):
        from .. import Calibration

        return Calibration(**self.CALIBRATION)

    def _writeIsq(self, volume, name="test.isq"):
        from .. import write_isq

        path = os.path.join(self.tempDir, name)
        write_isq(path, volume, voxel_size_mm=self.VOXEL_SIZE_MM, calibration=self._calibration())
        return path

    def _writeAim(self, volume, name="test.aim", version=30, position=(3, 4, 5), **kwargs):
        from .. import write_aim

        path = os.path.join(self.tempDir, name)
        write_aim(path, volume, version=version, voxel_size_mm=self.VOXEL_SIZE_MM, position_voxels=position,
                  calibration=kwargs.pop("calibration", self._calibration()), **kwargs)
        return path

    def _ijkToRas(self, node):
        import vtk

        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])

    def _checkGeometry(self, node, header):
        sx, sy, sz = header.voxel_size_mm
        ox, oy, oz = header.origin_mm
        expected = np.array([[-sx, 0, 0, -ox], [0, -sy, 0, -oy], [0, 0, sz, oz], [0, 0, 0, 1.0]])
        np.testing.assert_allclose(self._ijkToRas(node), expected, rtol=0, atol=1e-12)

    # ---- tests ---------------------------------------------------------------------------------------
    def test_reader_confidence(self):
        self.delayDisplay("File reader recognises ISQ and AIM by content")
        volume = self._volume()
        reader = self.readerClass(None)
        isq = self._writeIsq(volume, "sample.ISQ;1")
        aim20 = self._writeAim(volume, "a20.AIM", version=20)
        aim30 = self._writeAim(volume, "a30.aim", version=30)
        other = os.path.join(self.tempDir, "not_scanco.isq")
        with open(other, "wb") as f:
            f.write(b"CTDATA-HEADER_V2" + bytes(600))
        for path in (isq, aim20, aim30):
            self.assertGreater(reader.canLoadFileConfidence(path), 0.55, path)
        self.assertEqual(reader.canLoadFileConfidence(other), 0.0)
        self.assertEqual(reader.canLoadFileConfidence(os.path.join(self.tempDir, "missing.isq")), 0.0)

    def test_logic_isq_default_outputs(self):
        self.delayDisplay("Default load of an ISQ: HU, density, mask labelmap and segmentation")
        import slicer
        from ..formats.reader import read_header
        from ..core.units import UnitConverter

        volume = self._volume()
        path = self._writeIsq(volume)
        header = read_header(path)
        nodes = self.logicClass().loadScan(path)
        self.assertEqual(sorted(nodes), ["density", "hu", "mask_labelmap", "mask_segmentation"])
        converter = UnitConverter(header.calibration)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes["hu"]), converter.convert(volume, "hu"))
        # density in g/cc: the one default of the command line, the Python API and Slicer
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes["density"]),
                                      converter.convert(volume, "density_g_cc"))
        for role in ("hu", "density", "mask_labelmap"):
            self._checkGeometry(nodes[role], header)
        expectedMask = (volume >= 8192) & (volume <= 32767)   # 250..1000 per mille
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes["mask_labelmap"]), expectedMask.astype(np.uint8))
        segmentation = nodes["mask_segmentation"].GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 1)
        self.assertEqual(segmentation.GetNthSegment(0).GetName(), "Bone 250-1000 per mille")
        self.assertEqual(nodes["hu"].GetVoxelValueUnits().GetCodeValue(), "[hnsf'U]")
        self.assertEqual(nodes["density"].GetVoxelValueUnits().GetCodeValue(), "g/cm3")
        self.assertEqual(nodes["density"].GetAttribute(attribute_name("MuScaling")), "8192")

    def test_logic_aim_position_and_options(self):
        self.delayDisplay("AIM v020: origin from the position, density in g/cc, HU thresholds")
        import slicer
        from ..formats.reader import read_header
        from ..core.thresholds import ThresholdSpec, resolve_thresholds
        from ..core.units import UnitConverter

        volume = self._volume(seed=7)
        path = self._writeAim(volume, version=20, position=(10, 20, 30))
        header = read_header(path)
        spec = ThresholdSpec(2000.0, 12000.0, "hu")
        nodes = self.logicClass().loadScan(path, outputs=["density", "mu", "mask_labelmap"], thresholds=spec,
                                           densityUnit="g/cc")
        self.assertEqual(sorted(nodes), ["density", "mask_labelmap", "mu"])
        self._checkGeometry(nodes["density"], header)
        self.assertEqual(list(header.origin_mm), [p * s for p, s in zip((10, 20, 30), header.voxel_size_mm)])
        converter = UnitConverter(header.calibration)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes["density"]),
                                      converter.convert(volume, "density_g_cc"))
        resolved = resolve_thresholds(spec, header.calibration)
        expected = (volume >= resolved.native_low) & (volume <= resolved.native_high)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes["mask_labelmap"]), expected.astype(np.uint8))

    def test_subsample_and_region(self):
        self.delayDisplay("Every 2nd voxel of a sub-region keeps the physical frame")
        import slicer
        from ..formats.reader import read_header
        from ..core.units import UnitConverter

        volume = self._volume(shape=(9, 10, 11))
        path = self._writeAim(volume, version=30, position=(1, 2, 3))
        header = read_header(path)
        nodes = self.logicClass().loadScan(path, outputs=["hu"], subsampleStep=2,
                                           region=((1, 8), (2, None), (0, 9)))
        expected = UnitConverter(header.calibration).convert(volume, "hu")[1:8:2, 2::2, 0:9:2]
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes["hu"]), expected)
        sx, sy, sz = header.voxel_size_mm
        ox, oy, oz = header.origin_mm
        matrix = self._ijkToRas(nodes["hu"])
        np.testing.assert_allclose(np.diag(matrix)[:3], [-2 * sx, -2 * sy, 2 * sz], atol=1e-12)
        np.testing.assert_allclose(matrix[:3, 3], [-(ox + 0 * sx), -(oy + 2 * sy), oz + 1 * sz], atol=1e-12)

    def test_uncalibrated_file_loads_native(self):
        self.delayDisplay("A file without calibration: the default outputs are refused, native values load")
        import slicer
        from .. import Calibration, write_isq
        from ..errors import CalibrationMissingError

        volume = self._volume()
        path = os.path.join(self.tempDir, "native.isq")
        write_isq(path, volume, voxel_size_mm=self.VOXEL_SIZE_MM, calibration=Calibration(mu_scaling=8192))
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(CalibrationMissingError):   # as the command line: HU needs mu_water
            self.logicClass().loadScan(path)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        nodes = self.logicClass().loadScan(path, outputs=["native"])
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes["native"]), volume)
        from ..formats.reader import read_header
        from .scene import reader_options_from_properties

        # a drop asks for the native values of such a file
        self.assertEqual(reader_options_from_properties({}, read_header(path))["outputs"], ("native",))

    def test_cancel_removes_nodes(self):
        self.delayDisplay("Cancelling leaves the scene unchanged")
        import slicer
        from .scene import ConversionCancelled

        path = self._writeIsq(self._volume(shape=(12, 5, 6)))
        before = slicer.mrmlScene.GetNumberOfNodes()
        progress = []

        def cancelAfterFirstSlab():
            return len(progress) > 0

        with self.assertRaises(ConversionCancelled):
            self.logicClass().lib.load_scan_into_scene(slicer.mrmlScene, path, slab_slices=4,
                                                       progress=progress.append, cancel=cancelAfterFirstSlab)
        self.assertEqual(len(progress), 1)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)

    def test_empty_mask_and_histogram(self):
        self.delayDisplay("Empty mask: a named empty segment; histogram read once, plotted against its X column")
        volume = self._volume()
        low = np.clip(volume, 0, 8000).astype(np.int16)   # below 250 per mille (native 8192), as on XtremeCT II
        path = self._writeIsq(low, "low.isq")
        logic = self.logicClass()
        nodes = logic.loadScan(path, outputs=["mask_segmentation"])
        segmentation = nodes["mask_segmentation"].GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 1)
        self.assertEqual(segmentation.GetNthSegment(0).GetName(), "Bone 250-1000 per mille")
        header = logic.readHeader(path)
        progress = []
        histogram = logic.histogramOf(header, progressCallback=lambda f, text: progress.append(f), cancel=lambda: False)
        self.assertEqual(histogram.total, low.size)
        self.assertEqual(progress[-1], 1.0)
        self.assertIs(logic.histogramOf(header), histogram)
        chart, table, series = logic.showHistogram(header, logic.resolveThresholds(header, 250, 1000, "permille"))
        for node in series.values():
            self.assertTrue(node.IsXColumnRequired())

    def test_export_matches_nodes(self):
        self.delayDisplay("Full-resolution NRRD export holds what the nodes hold")
        import slicer

        volume = self._volume()
        path = self._writeIsq(volume)
        outDir = os.path.join(self.tempDir, "out")
        nodes, files = self.logicClass().process(path, outputs=["hu", "density", "mask_labelmap"],
                                                 exportDirectory=outDir)
        for role, fileRole in (("hu", "hu"), ("density", "density"), ("mask_labelmap", "mask")):
            storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
            storage.SetFileName(str(files[fileRole]))
            loaded = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
            self.assertTrue(storage.ReadData(loaded), files[fileRole])
            np.testing.assert_array_equal(slicer.util.arrayFromVolume(loaded), slicer.util.arrayFromVolume(nodes[role]))
            np.testing.assert_allclose(self._ijkToRas(loaded), self._ijkToRas(nodes[role]), atol=1e-9)

    def test_reader_plugin(self):
        self.delayDisplay("Loading through Slicer's IO manager (drag and drop path)")
        import slicer

        if not hasattr(slicer, "app"):
            self.skipTest("needs the Slicer application")
        from ..formats.reader import read_header
        from ..core.units import UnitConverter

        volume = self._volume()
        path = self._writeAim(volume, version=30)
        node = slicer.util.loadNodeFromFile(path, self.readerFileType)
        header = read_header(path)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node),
                                      UnitConverter(header.calibration).convert(volume, "hu"))
        self._checkGeometry(node, header)
        loaded = slicer.util.loadNodeFromFile(path, self.readerFileType,
                                              {"units": "density", "mask": "segmentation", "name": "scripted"})
        self.assertIsNotNone(loaded)
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByName("scripted density"))
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByName("scripted mask segmentation"))

        self.delayDisplay("Export to file offers SCANCO AIM for masks (the registered ScancoUnitsFileWriter)")
        ioManager = slicer.app.coreIOManager()
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        labelmap.SetAttribute(SOURCE_PATH, path)   # only masks of a SCANCO scan are offered
        scalar = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        plain = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        self.assertIn("SCANCO AIM (.aim)", ioManager.fileWriterExtensions(labelmap))
        self.assertNotIn("SCANCO AIM (.aim)", ioManager.fileWriterExtensions(scalar))
        self.assertNotIn("SCANCO AIM (.aim)", ioManager.fileWriterExtensions(plain))
        self.assertNotEqual(ioManager.fileWriterExtensions(labelmap)[0], "SCANCO AIM (.aim)")  # NRRD stays default
        self.assertEqual(ioManager.fileWriterFileType(labelmap, "SCANCO AIM (.aim)"), self.writerFileType)
        try:
            from . import mask_aim  # noqa: F401
        except ImportError:
            return
        slicer.util.loadNodeFromFile(path, self.readerFileType, {"units": "hu", "mask": "labelmap",
                                                                 "name": "exported", "show": False})
        maskNode = slicer.mrmlScene.GetFirstNodeByName("exported mask")
        aimPath = os.path.join(self.tempDir, "EXPORTED.AIM")
        self.assertTrue(slicer.util.exportNode(maskNode, aimPath, {"fileFormat": "SCANCO AIM (.aim)"}))
        from ..formats.reader import read_volume

        np.testing.assert_array_equal(read_volume(aimPath) != 0, slicer.util.arrayFromVolume(maskNode) != 0)
