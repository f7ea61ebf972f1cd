"""transformers' ProcessorTesterMixin on LLaDA2UniProcessor, as an upstream processor test would run it (suite from the
installed release, see upstream_suites.py; opt-outs in upstream_opt_outs.py). The tokenizer is test_processor.py's
in-process one: every special token of the release, a small word-level vocabulary."""

import unittest

import upstream_opt_outs
from test_processor import CODEBOOK, OFFSET, make_tokenizer
from transformers_llada_uni import LLaDA2UniImageProcessor, LLaDA2UniProcessor
from upstream_suites import suite

(ProcessorTesterMixin,) = suite("test_processing_common", "ProcessorTesterMixin")


class LLaDA2UniProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = LLaDA2UniProcessor
    # The understanding template (system and role turns, the image block's header) makes the suite's prompts longer
    # than its default of 76 tokens allows.
    images_unstructured_max_length = 96

    @classmethod
    def _setup_tokenizer(cls):
        return make_tokenizer()

    @classmethod
    def _setup_image_processor(cls):
        # Small images stay small: the understanding path resizes within these bounds.
        return LLaDA2UniImageProcessor(min_pixels=32 * 32, max_pixels=128 * 128)

    @staticmethod
    def prepare_processor_dict():
        return {"image_token_offset": OFFSET, "codebook_size": CODEBOOK}


upstream_opt_outs.apply(LLaDA2UniProcessorTest, "processor")
