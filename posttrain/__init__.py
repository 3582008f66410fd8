"""posttrain: post-training for language models and the classic RL underneath.

Read DESIGN-level overview in README.md; the package layout follows it:
config → data → model → loop → checkpoint/metrics.
"""

__version__ = "0.1.0"

import warnings as _warnings


def _hide_library_deprecations() -> None:
    """PEFT (0.21) reads transformers' deprecated `is_gradient_checkpointing` property each time it wraps a model
    (peft_model.py), in every command that loads a LoRA adapter. Only PEFT can change that and a user can do
    nothing about it, so exactly this message from exactly that module is hidden; every other warning shows."""
    _warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning,
                             module=r"transformers\.modeling_utils")


_hide_library_deprecations()
