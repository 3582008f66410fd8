"""`lookup`: questions about fictional towns whose answer is in exactly one document of a built-in corpus — the
task of the retrieval environment (env.name=search: a `search(query)` tool over the corpus).

The corpus (`corpus()`) is 400 short documents, one per town, generated from a fixed seed, so it exists offline
and no model can know it from pretraining:

    "Varrow is a town on the river Elm. It was founded in 1743 and has 4812 inhabitants. Its mayor is Ida Fenn,
    and it is known for its pottery."

A question asks for one fact of one town — "In what year was Varrow founded?" (answer "1743"), "Who is the mayor
of Varrow?" ("Ida Fenn"), "How many people live in Varrow?" ("4812"), "On which river is Varrow?" ("Elm"), "What
is Varrow known for?" ("pottery"). Splits: one town in ten (a stable hash of its name) is "eval", so a held-out
question is about a town never asked about in training. The verifier: the answer, compared case-insensitively
on word boundaries, appears in the final answer (`score`: 1.0 or 0.0).
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass

from posttrain.tasks.arith import draw_problems, split_by_hash

SYLLABLES = ["var", "row", "mel", "don", "ash", "ford", "lin", "by", "tor", "wick", "ham", "stead", "bel", "mor",
             "cal", "den", "fen", "gar", "hol", "kes", "lar", "nor", "pen", "rid", "sel", "thorn", "ul", "wen"]
RIVERS = ["Elm", "Tarn", "Wey", "Ouse", "Brent", "Kell", "Dove", "Lune", "Aire", "Colne", "Frome", "Hodder"]
FIRST = ["Ida", "Tom", "Nell", "Rhys", "Mara", "Owen", "Lena", "Hugo", "Cora", "Finn", "Ruth", "Amos"]
LAST = ["Fenn", "Ashby", "Crane", "Dale", "Marsh", "Pike", "Rowe", "Stone", "Vale", "Wren", "Holt", "Birch"]
EXPORTS = ["pottery", "wool", "cheese", "glass", "rope", "cider", "timber", "lace", "salt", "honey", "tin", "paper"]
FACTS = {  # fact → the question about it
    "founded": "In what year was {town} founded?", "population": "How many people live in {town}?",
    "mayor": "Who is the mayor of {town}?", "river": "On which river is {town}?",
    "export": "What is {town} known for?"}
NUM_TOWNS = 400


@functools.cache
def towns() -> tuple[dict, ...]:
    """The corpus's towns, each a dict of its facts; deterministic, names unique."""
    rng, seen, out = random.Random("lookup-towns"), set(), []
    while len(out) < NUM_TOWNS:
        name = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
        if name in seen:
            continue
        seen.add(name)
        out.append({"town": name, "river": rng.choice(RIVERS), "founded": str(rng.randint(1100, 1900)),
                    "population": str(rng.randint(300, 90000)), "mayor": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
                    "export": rng.choice(EXPORTS)})
    return tuple(out)


def document(town: dict) -> str:
    return (f"{town['town']} is a town on the river {town['river']}. It was founded in {town['founded']} and has "
            f"{town['population']} inhabitants. Its mayor is {town['mayor']}, and it is known for its "
            f"{town['export']}.")


@functools.cache
def corpus() -> tuple[str, ...]:
    """One document per town."""
    return tuple(document(t) for t in towns())


@dataclass
class LookupTask:
    """Questions answered by one document of the built-in corpus (module docstring).

    >>> task = LookupTask()
    >>> row = task.rows("eval", 1)[0]
    >>> task.score(row["prompt"], f"It is {row['answer']}.", answer=row["answer"])
    1.0
    """

    def problem(self, rng: random.Random) -> tuple[int, str]:
        return rng.randrange(NUM_TOWNS), rng.choice(list(FACTS))

    def problems(self, split: str, n: int, seed: int = 0) -> list[tuple[int, str]]:
        return draw_problems("lookup", self.problem, lambda p: split_by_hash(towns()[p[0]]["town"]), split, n, seed)

    def rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """[{"prompt": "In what year was Varrow founded?", "answer": "1743"}, …]"""
        return [{"prompt": FACTS[fact].format(town=towns()[i]["town"]), "answer": towns()[i][fact]}
                for i, fact in self.problems(split, n, seed)]

    def sft_rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        return [{"messages": [{"role": "user", "content": r["prompt"]},
                              {"role": "assistant", "content": f"The answer is {r['answer']}."}], "answer": r["answer"]}
                for r in self.rows(split, n, seed)]

    def tool_rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """Rows with the search that answers them (posttrain.envs.demonstrations): {"prompt", "answer",
        "calls": [[{"name": "search", "arguments": {"query": "Varrow"}}]], "final": "The answer is 1743."}."""
        return [{**r, "calls": [[{"name": "search", "arguments": {"query": towns()[i]["town"]}}]],
                 "final": f"The answer is {r['answer']}."}
                for r, (i, _) in zip(self.rows(split, n, seed), self.problems(split, n, seed))]

    def text_rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        return [{"text": document(towns()[i])} for i, _ in self.problems(split, n, seed)]

    def extract_answer(self, completion: str) -> str | None:
        return completion.strip() or None

    def score(self, prompt: str, completion: str, answer: str | None = None, **row) -> float | None:
        if not answer:
            return None
        return 1.0 if re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", completion, re.IGNORECASE) else 0.0
