"""transformers' ImageProcessingTestMixin on LLaDA2UniImageProcessor, as an upstream image-processor test would run it
(suite from the installed release, see upstream_suites.py; opt-outs in upstream_opt_outs.py)."""

import unittest

import upstream_opt_outs
from transformers_llada_uni import LLaDA2UniImageProcessor
from upstream_suites import suite

ImageProcessingTestMixin, ImageProcessingTester = suite(
    "test_image_processing_common", "ImageProcessingTestMixin", "ImageProcessingTester")


class LLaDA2UniImageProcessingTester(ImageProcessingTester):
    def __init__(self, parent):
        # Small images (the suite's default reaches 400 px): sides 32-112 px give grids of a few patches.
        super().__init__(parent, batch_size=3, min_resolution=32, max_resolution=112, patch_size=16,
                         image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], min_pixels=32 * 32,
                         max_pixels=128 * 128)

    def _get_image_processing_classes(self):
        # Upstream finds the classes from the model folder a test file sits in; ours is registered by config class.
        return {"pil": LLaDA2UniImageProcessor}

    def prepare_image_processor_dict(self):
        return {"patch_size": self.patch_size, "image_mean": self.image_mean, "image_std": self.image_std,
                "min_pixels": self.min_pixels, "max_pixels": self.max_pixels}


class LLaDA2UniImageProcessingTest(ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = LLaDA2UniImageProcessingTester


upstream_opt_outs.apply(LLaDA2UniImageProcessingTest, "image_processor")
