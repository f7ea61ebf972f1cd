"""Every transformers common test this project opts out of, with the reason, in one place.

`apply(cls, suite)` replaces each listed test of a tester class by a skip carrying its reason; a listed name that the
class does not have fails the class's `test_opt_outs_are_current`, so the list cannot outlive the tests it names.
Everything not listed here runs and must pass.
"""

import unittest

# Reasons used more than once.
RESIZE_BELOW_CODES = ("resize_token_embeddings adds text ids below the image codes (the top `codebook_size` ids, "
                      "which keep their rows: tests/test_vocab_resize.py); the test reads the last rows as the new "
                      "ones, which are image codes here (its size, type and forward checks pass)")
NOT_AUTOREGRESSIVE = ("generate() is block-diffusion sampling, not GenerationMixin's autoregressive search, and "
                      "transformers' GenerationTesterMixin is not in its source distribution; generate's conventions "
                      "are covered by test_one_door.py and test_generation_config.py")
STRICT_LOADING = ("from_pretrained is strict by design (DESIGN.md: a checkpoint whose config and weights disagree is "
                  "refused, never half-loaded); this test loads a checkpoint with weights missing on purpose and "
                  "expects them to be reported, not refused")

OPT_OUTS: dict[str, dict[str, str]] = {
    "llada2_moe": {
        "test_generation_tester_mixin_inheritance": NOT_AUTOREGRESSIVE,
        "test_causal_lm_loss_honors_shift_labels": "logits are unshifted by design (masked diffusion: position i "
                                                   "predicts token i), so there is nothing to shift",
        "test_base_model_prefix_loads_base_weights": STRICT_LOADING,
        "test_correct_missing_keys": STRICT_LOADING,
        "test_model_weights_reload_no_missing_tied_weights": STRICT_LOADING,
    },
    "llada2_uni": {
        "test_generation_tester_mixin_inheritance": NOT_AUTOREGRESSIVE,
        "test_model_weights_reload_no_missing_tied_weights": STRICT_LOADING,
        "test_config_from_pretrained_custom_kwargs": "the check reloads the composite with a 20-id text vocabulary, "
                                                     "which cannot hold the image codes and special ids; the config "
                                                     "refuses it by design",
        "test_model_base_model_prefix": "the checkpoint keeps the backbone (`model.`), the vision tower (`visual.`) "
                                        "and the codebook (`vqmodel.`) side by side, as the original release does; "
                                        "no one base model holds them",
        "test_multimodal_outputs_are_returned": "the vision tower is a frozen image tokenizer: images enter as VQ code "
                                                "ids, so there are no image features to return",
        "test_resize_tokens_embeddings": RESIZE_BELOW_CODES,
        "test_resize_embeddings_untied": RESIZE_BELOW_CODES,
    },
    "processor": {
        "test_subprocessor_defaults_0_text": "the processor wraps text in its task's prompt template (system and role "
                                             "turns), so its ids are not the tokenizer's ids of the bare text",
    },
    "image_processor": {
        "test_call_numpy_4_channels": "images are always made RGB (an alpha channel is composited on white, as the "
                                      "original does), so 4-channel pixels with do_convert_rgb=False and 4-channel "
                                      "means are refused; the packed patch layout is checked by test_call_numpy",
        "test_new_models_require_torchvision_backend": "torchvision cannot be used in this project's environment "
                                                       "(ecosystem.md H5), so the PIL backend is the one; the check "
                                                       "also names the model after the test's folder",
    },
}


def apply(cls, suite: str):
    """Skip the tests `OPT_OUTS[suite]` names on `cls` (a unittest.TestCase built on an upstream mixin)."""
    table = OPT_OUTS[suite]
    stale = sorted(name for name in table if not callable(getattr(cls, name, None)))

    for name, reason in table.items():
        if name not in stale:
            setattr(cls, name, _skipped(reason))

    def test_opt_outs_are_current(self):
        # When the suites could not be loaded the class has only the failing availability test: say nothing more.
        if stale and not hasattr(cls, "test_upstream_suite_available"):
            self.fail(f"OPT_OUTS[{suite!r}] names tests {cls.__name__} does not have: {stale}")

    cls.test_opt_outs_are_current = test_opt_outs_are_current
    return cls


def _skipped(reason: str):
    @unittest.skip(f"opt-out: {reason}")
    def test(self):
        pass

    return test
