"""Models: loading Hugging Face models and tokenizers (full or LoRA), and the embedded tiny model."""

import warnings

# PEFT (0.21) reads transformers' deprecated `is_gradient_checkpointing` property each time it wraps a model
# (peft_model.py). Only PEFT can change that and a user can do nothing about it, so exactly this message from
# exactly that module is hidden; every other warning still shows.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning,
                        module=r"transformers\.modeling_utils")
