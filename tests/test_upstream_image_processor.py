"""transformers' ImageProcessingTestMixin on LLaDA2UniImageProcessor, as an upstream image-processor test would run it
(suite from the installed release, see upstream_suites.py; opt-outs in upstream_opt_outs.py)."""

import unittest

import torch

import upstream_opt_outs
from transformers_llada_uni import LLaDA2UniImageProcessor
from transformers_llada_uni.image_processing_llada2_uni import cover_geometry, smart_resize
from upstream_suites import suite

ImageProcessingTestMixin, ImageProcessingTester = suite(
    "test_image_processing_common", "ImageProcessingTestMixin", "ImageProcessingTester")


class LLaDA2UniImageProcessingTester(ImageProcessingTester):
    def __init__(self, parent):
        # Small images (the suite's default reaches 400 px): sides 32-112 px give grids of a few patches. `size` holds
        # the area bounds (min_pixels / max_pixels) in transformers' spelling.
        super().__init__(parent, batch_size=3, min_resolution=32, max_resolution=112, patch_size=16,
                         image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
                         size={"shortest_edge": 32 * 32, "longest_edge": 128 * 128})

    def _get_image_processing_classes(self):
        # Upstream finds the classes from the model folder a test file sits in; ours is registered by config class.
        return {"pil": LLaDA2UniImageProcessor}

    def prepare_image_processor_dict(self):
        return {"patch_size": self.patch_size, "image_mean": self.image_mean, "image_std": self.image_std,
                "size": self.size}

    def expected_grids(self, images) -> list:
        """(h, w) in patches of each image on the understanding path (several images: the multi-image bound)."""
        bound = self.size["longest_edge"] if len(images) == 1 else LLaDA2UniImageProcessor().multi_image_max_pixels
        grids = []
        for image in images:
            if isinstance(image, torch.Tensor) or hasattr(image, "shape"):
                height, width = (image.shape[1], image.shape[2]) if image.shape[0] == 3 else image.shape[:2]
            else:
                width, height = image.size
            target_h, target_w = smart_resize(height, width, self.size["shortest_edge"], bound)
            _, (w, h) = cover_geometry(width, height, target_h, target_w)  # resized to cover, then cropped
            grids.append((h // self.patch_size, w // self.patch_size))
        return grids


class LLaDA2UniImageProcessingTest(ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = LLaDA2UniImageProcessingTester

    # The suite's test_call_* expect one [C, H, W] picture per image; pixel_values here are packed patches
    # [total patches, 3*16*16] with image_grid_thw (the GLM-Image / Qwen2-VL layout), so these versions check that
    # layout instead, the way upstream's Qwen2-VL tests do, on the same inputs (PIL, channels-last numpy, torch CHW).
    def _check_packed(self, **input_kind):
        tester = self.image_processor_tester
        processor = LLaDA2UniImageProcessor(**self.image_processor_dict)
        images = tester.prepare_image_inputs(equal_resolution=False, **input_kind)
        for batch in ([images[0]], images):
            out = processor(batch if len(batch) > 1 else batch[0], return_tensors="pt")
            grids = tester.expected_grids(batch)
            self.assertEqual(out.image_grid_thw.tolist(), [[1, h, w] for h, w in grids])
            self.assertEqual(tuple(out.pixel_values.shape), (sum(h * w for h, w in grids), 3 * 16 * 16))

    def test_call_pil(self):
        self._check_packed()

    def test_call_numpy(self):
        self._check_packed(numpify=True)

    def test_call_pytorch(self):
        self._check_packed(torchify=True)


upstream_opt_outs.apply(LLaDA2UniImageProcessingTest, "image_processor")
