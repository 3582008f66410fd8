"""Evaluation: held-out loss and perplexity, task accuracy by greedy generation."""
