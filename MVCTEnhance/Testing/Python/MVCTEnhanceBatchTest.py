"""The batch script inside real Slicer, without a main window: files, report and exit codes."""

import importlib.util
import json
import os
import tempfile
import unittest

import slicer


def _loadBatchScript():
    moduleDir = os.path.dirname(slicer.util.modulePath("MVCTEnhance"))
    path = os.path.join(moduleDir, "Scripts", "mvct_enhance_batch.py")
    spec = importlib.util.spec_from_file_location("mvct_enhance_batch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class MVCTEnhanceBatchTest(unittest.TestCase):
    def setUp(self):
        import MVCTEnhance

        self.batch = _loadBatchScript()
        files = MVCTEnhance.sampleDataFiles()
        self.assertIsNotNone(files, "sample data is not installed")
        self.mvct = str(files[0])
        self.model = str(MVCTEnhance.resourceFile("models/" + MVCTEnhance.TINY_MODEL_FILE))

    def test_writesVolumesMapsAndReport(self):
        with tempfile.TemporaryDirectory() as out:
            code = self.batch.main(["--input", self.mvct, "--output-dir", out, "--model", self.model,
                                    "--device", "cpu"])
            self.assertEqual(code, 0)
            names = set(os.listdir(out))
            self.assertTrue(names >= {"sample_mvct_dig.nrrd", "sample_mvct_enhanced.nrrd",
                                      "sample_mvct_nselfssim.nrrd", "sample_mvct_report.json"}, names)
            with open(os.path.join(out, "sample_mvct_report.json")) as f:
                report = json.load(f)
            self.assertEqual(report["model"]["card"]["name"], "mvctenhance-tiny-test")
            enhanced = slicer.util.loadVolume(os.path.join(out, "sample_mvct_enhanced.nrrd"))
            original = slicer.util.loadVolume(self.mvct)
            self.assertEqual(enhanced.GetImageData().GetDimensions(), original.GetImageData().GetDimensions())
            # Existing outputs are refused without --overwrite: user error, nothing replaced.
            code = self.batch.main(["--input", self.mvct, "--output-dir", out, "--model", self.model,
                                    "--device", "cpu"])
            self.assertEqual(code, 2)

    def test_userErrorsExitWithTwo(self):
        with tempfile.TemporaryDirectory() as out:
            self.assertEqual(self.batch.main(["--output-dir", out]), 2)
            self.assertEqual(self.batch.main(["--input", os.path.join(out, "missing.nrrd"), "--output-dir", out,
                                              "--model", self.model]), 2)
            self.assertEqual(os.listdir(out), [])
