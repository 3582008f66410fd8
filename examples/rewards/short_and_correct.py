"""A user reward for `posttrain rl reward.function=examples/rewards/short_and_correct.py:reward`.

The contract: reward(prompt, completion, **row) -> float | None. `row` holds the prompt row's other columns (the
built-in task gives `answer`). Return None when the completion cannot be scored: the sample is then left out of the
baselines and counted, not treated as a zero. The function runs in a separate process with a timeout.
"""

import re


def reward(prompt: str, completion: str, answer: str | None = None, **row) -> float | None:
    if answer is None:
        return None
    numbers = re.findall(r"-?\d+", completion)
    correct = bool(numbers) and numbers[-1] == answer
    return (1.0 if correct else 0.0) - 0.01 * len(completion)  # right, and no longer than needed
