"""posttrain: post-training for language models and the classic RL underneath.

Read DESIGN-level overview in README.md; the package layout follows it:
config → data → model → loop → checkpoint/metrics.
"""

__version__ = "0.1.0"
