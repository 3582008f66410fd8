"""The policy as test-time search sees it: a prompt and a partial solution in, sampled continuations out, with
the number of tokens each one cost.

    policy = Policy(engine, tokenizer, use_chat_template=True, temperature=0.7, max_new_tokens=72)
    policy.sample(["47+85="], [""], n=8, seed=0, step=0, example_ids=[0])             # whole solutions
    policy.sample(["47+85="], ["7+5=12 carry 1\\n"], n=4, ..., one_step=True)          # next steps (one line)

A continuation's prompt is the formatted prompt (`rollout.format_prompt`, as `posttrain generate` sees it)
followed by the tokens of the partial solution written so far. For a character-level tokenizer (the embedded
tiny model's) this is exactly the sequence the model produced; for a BPE tokenizer it is the canonical
tokenization of the same text, which can split a word differently from how it was sampled — the model still
continues the same text.

Reasoning steps are lines: `one_step=True` stops at "\\n" (the stop string is cut from the text, and the partial
solution then gets "\\n" appended), and a step FINISHES the solution when it contains the task's final-answer
marker ("answer:" in the arithmetic task's steps format), when it ended at eos, or when it hit the step length
limit (a runaway line is not continued).

Randomness is explicit: sample j of prompt i is drawn with the engine's seed derive_seed(seed, step,
example_ids[i], j), so every strategy's samples are reproducible and independent of batching. Search
strategies give each expansion its own (step, example id).

Token accounting: `Sample.num_tokens` is the number of tokens the engine generated for it (the stop string's
and eos's tokens included). Every strategy adds up the tokens of everything it sampled, so strategies can be
compared at equal generated tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.rollout import Engine, SamplingParams, completion_text, format_prompt, stop_check
from posttrain.rollout.samplers import derive_seed

STEP_SEPARATOR = "\n"


@dataclass
class Sample:
    """One sampled continuation."""

    text: str            # decoded, the stop string cut off
    num_tokens: int      # tokens generated
    logprob: float       # Σ log π(token) under the raw model (T = 1): the step's log-probability
    finished: bool       # ended the solution: eos, the final-answer marker, or (one_step) the step length limit


@dataclass
class SearchResult:
    """What every strategy returns per problem: the chosen completion and the generated tokens it cost (all
    samples, expansions and rollouts together)."""

    completion: str
    generated_tokens: int


@dataclass
class Policy:
    """An engine (rollout.backends), its tokenizer, and how to sample from it.

    max_new_tokens bounds a whole solution; max_step_tokens one step (a line). answer_marker: the text that
    marks a solution's final step.
    """

    engine: Engine
    tokenizer: object
    use_chat_template: bool
    temperature: float = 1.0
    top_p: float = 1.0
    min_p: float = 0.0
    max_new_tokens: int = 64
    max_step_tokens: int = 32
    answer_marker: str = "answer:"

    def sample(self, prompts: list, prefixes: list[str], n: int, *, seed: int, step: int | str,
               example_ids: list[int], one_step: bool = False, temperature: float | None = None) -> list[list[Sample]]:
        """n continuations of each (prompts[i], prefixes[i]) → per i a list of n Samples, in sample order.

        prefixes[i] is the partial solution so far ("" = start from the prompt); a continuation gets up to
        max_new_tokens (one_step: max_step_tokens) new tokens, whatever the prefix's length, so a sample does not
        depend on the other prefixes in the call. temperature: None = the policy's.
        """
        tokenizer = self.tokenizer
        ids = [format_prompt(tokenizer, p, self.use_chat_template) + tokenizer(x, add_special_tokens=False)["input_ids"]
               for p, x in zip(prompts, prefixes)]
        params = SamplingParams(temperature=self.temperature if temperature is None else temperature,
                                top_p=self.top_p, min_p=self.min_p, n=n,
                                max_new_tokens=self.max_step_tokens if one_step else self.max_new_tokens,
                                stop_strings=[STEP_SEPARATOR] if one_step else [])
        # a step ends at the separator: 8 decoded tokens hold a "\n" (the default window is for longer strings)
        generations = self.engine.generate(ids, params, seed=seed, step=_as_int(step), example_ids=example_ids,
                                           stop_sequence=stop_check(tokenizer, params.stop_strings, window=8))
        out: list[list[Sample]] = [[] for _ in prompts]
        for g in generations:
            text = completion_text(tokenizer, g, params.stop_strings)
            finished = g.finish_reason == "stop" or (one_step and (self.answer_marker in text
                                                                    or g.finish_reason == "length"))
            out[g.prompt_index].append(Sample(text, len(g.completion_ids), float(sum(g.logprobs)), finished))
        return out


def complete_unfinished(policy: Policy, problems: list[dict], partials: list[tuple[str, bool]], spent: list[int],
                        *, seed: int) -> list[SearchResult]:
    """Search results from each problem's chosen partial solution (text, finished): a finished one as it is, an
    unfinished one (the budget ran out first) completed by one sample from the policy, its tokens added to spent.
    The completion of problem i is seeded by step "complete", example i."""
    todo = [i for i, (_, finished) in enumerate(partials) if not finished]
    samples = policy.sample([problems[i]["prompt"] for i in todo], [partials[i][0] for i in todo], 1, seed=seed,
                            step="complete", example_ids=todo) if todo else []
    texts = [text for text, _ in partials]
    spent = list(spent)
    for i, (sample,) in zip(todo, samples):
        texts[i] += sample.text
        spent[i] += sample.num_tokens
    return [SearchResult(text, tokens) for text, tokens in zip(texts, spent)]


def steps_of(text: str) -> list[str]:
    """The reasoning steps of a (partial) solution: its non-empty lines, as a process reward model scores them.

    Example: "7+5=12 carry 1\\n\\n4+8+1=13 carry 1\\nanswer: 132" → ["7+5=12 carry 1", "4+8+1=13 carry 1",
    "answer: 132"].
    """
    return [line for line in text.split(STEP_SEPARATOR) if line.strip()]


def _as_int(step: int | str) -> int:
    """Engines take an integer step; search names its streams ("beam:3", "rollout:3") and hashes the name to one,
    so no two strategies draw with the same seeds."""
    return step if isinstance(step, int) else derive_seed(0, step)


__all__ = ["Policy", "STEP_SEPARATOR", "Sample", "SearchResult", "complete_unfinished", "steps_of"]
