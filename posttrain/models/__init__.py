"""Models: loading to train and for inference, heads, the shared forward passes, the embedded tiny model.

    loading.py     load_model (full, LoRA, a new head), load_tokenizer, resolve_model_path, model_head
    heads.py       HEADS: lm / score (outcome RM) / token (PRM, critic), and how a saved model shows its head
    logits.py      forward_logits, target_logprobs (the output layer in chunks), sequence_logps, padded_forward: the
                   forward passes loops and scorers share
    inference.py   load_for_inference (frozen, eval mode), export_model (a plain Hugging Face directory)
    tiny.py        the embedded ~1.1M-parameter Llama and its character-level tokenizer
    gguf.py        .gguf files and named models (NAMED_MODELS), converted once to a cached Hugging Face directory
"""
