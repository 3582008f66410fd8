"""The reward kill_torture.py's grpo and ppo runs are scored with (reward.function=…:digits, reward.verifier=false):
the fraction of a completion's characters that are digits. Untrained models rarely answer right, so the task's
verifier would give every sample 0 and every advantage 0; this reward differs between samples from the first step,
so the updates are real, and it runs in the reward worker that a kill must not leave behind."""


def digits(prompt: str, completion: str, **row) -> float:
    return sum(c.isdigit() for c in completion) / max(1, len(completion))
