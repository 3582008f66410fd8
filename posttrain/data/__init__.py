"""The data layer: load rows, recognise and validate their format, tokenize with loss masks, pack and collate.

    rows = load_rows("train.jsonl", columns={"question": "prompt"})   # Rows: dicts + file/row provenance
    rows = normalize(rows, kind="sft")                                  # canonical schema, validated
    examples, report = build_sft_examples(rows, tokenizer, max_length=1024, truncation="drop")
    batch = collate(examples[:8], pad_id=tokenizer.pad_token_id, packing=True)
"""

from posttrain.data.formats import ACCEPTED_FORMATS, detect_format, normalize
from posttrain.data.loading import SUPPORTED_EXTENSIONS, Rows, load_rows
from posttrain.data.packing import best_fit_decreasing, collate
from posttrain.data.tokenize import (IGNORE_INDEX, TRUNCATION_POLICIES, DropReport, build_sft_examples,
                                     tokenize_sft)

__all__ = [
    "ACCEPTED_FORMATS", "IGNORE_INDEX", "SUPPORTED_EXTENSIONS", "TRUNCATION_POLICIES",
    "DropReport", "Rows",
    "best_fit_decreasing", "build_sft_examples", "collate", "detect_format", "load_rows", "normalize",
    "tokenize_sft",
]
