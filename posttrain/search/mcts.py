"""Monte Carlo tree search over reasoning steps.

A node is a partial solution: the root is the empty one, and each child adds one step (one line) sampled from
the policy. Every node holds N (visits) and V (the cumulative value backed up through it), so Q = V / N is its
mean value. One iteration (Kocsis & Szepesvári 2006, UCT; Silver et al. 2017, PUCT in AlphaGo Zero; for LLM
reasoning e.g. Hao et al. 2023 "RAP", arXiv:2305.14992, Zhang et al. 2024 "ReST-MCTS*", arXiv:2406.03816):

    select    from the root, go to the child with the best score until a leaf (no children) or a finished node
                  UCT:   Q + c · sqrt(ln N_parent / N_child)          (an unvisited child scores +inf)
                  PUCT:  Q + c · P · sqrt(N_parent) / (1 + N_child)    P = the policy's prior of the step
              ties go to the first child
    expand    sample k next steps from the leaf; each distinct one becomes a child. PUCT's prior of a child is
              the policy's probability of its step, renormalised over the leaf's children (softmax of the steps'
              summed log-probs)
    evaluate  a value for each new child: the PRM's score of the partial solution, any value function, or a
              rollout — complete the solution by sampling and score it with the RM or PRM. Never the verifier:
              it knows the answer, which a test-time method does not
    backup    V += value and N += 1 on every node of the path, root to the new child

A finished node (its step held the final answer) is never expanded; selecting it backs up its value again
(free: nothing is generated). The tree logic — `select`, `expand`, `backup`, `final_path` — touches no model,
so it is tested on the worked example below by hand.

Worked example (UCT, c = 1): root S1 (V = 50, N = 9) has children S2-1 (20, 3) and S2-2 (30, 6); S2-1 has
children S3-1 (10, 2) and S3-2 (10, 1).
    at S1:    S2-1: 20/3 + sqrt(ln 9 / 3) = 6.667 + 0.856 = 7.522      S2-2: 30/6 + sqrt(ln 9 / 6) = 5 + 0.605 = 5.605
    at S2-1:  S3-1: 10/2 + sqrt(ln 3 / 2) = 5 + 0.741 = 5.741          S3-2: 10/1 + sqrt(ln 3 / 1) = 10 + 1.048 = 11.048
so select returns S1 → S2-1 → S3-2 (a leaf). Expanding it adds S4-1; a rollout from S4-1 is worth 20, and the
backup adds 20 to V and 1 to N along S1 → S2-1 → S3-2 → S4-1:
    S1 (70, 10)   S2-1 (40, 4)   S3-2 (30, 2)   S4-1 (20, 1)            (S2-2 and S3-1 unchanged)

The answer (`final_path`): the most-visited path to a finished solution. From the root, step to the child with
the most visits among those whose subtree holds a finished node (ties: the higher Q, then the first child),
until a finished node. Visits, not Q, because they are the search's considered verdict (AlphaGo Zero plays the
most-visited move): a child with few visits can have a high Q by luck. With no finished node in the tree (the
budget ran out first), the most-visited path to a leaf is followed, and its rollout's completion is the answer —
or, without one, the leaf's partial solution completed by one sample (its tokens counted).

Compute: every expansion's steps and every rollout's tokens count. Each problem stops when its token budget is
spent (checked before each iteration), after max_iterations, or when every path is exhausted. Problems are
searched in lockstep, one engine call per iteration for all of them; the expansion of problem i at iteration t
draws its k steps with the engine seeds derive_seed(seed, step "mcts:t", example i, j) and its rollouts with step
"rollout:t", example i·k + child — streams of their own, apart from best-of-N's (step 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from posttrain.search.best_of_n import argmax_first
from posttrain.search.policy import STEP_SEPARATOR, Policy, Sample, SearchResult, complete_unfinished
from posttrain.search.scorers import Scorer, probability
from posttrain.search.strategies import STRATEGIES


@dataclass(eq=False)
class Node:
    """A partial solution in the search tree."""

    text: str = ""                  # the solution so far (steps, each followed by "\n" unless finished)
    visits: int = 0                 # N
    value: float = 0.0              # V, the sum of the values backed up through this node
    prior: float = 1.0              # P, PUCT's prior (the policy's renormalised step probability)
    logprob: float = 0.0            # log π(step | parent) under the policy
    finished: bool = False          # the step finished the solution
    depth: int = 0                  # steps from the root
    evaluation: float | None = None  # the value it got when it was created (backed up again if re-selected)
    rollout: str | None = None      # the completion its rollout wrote (rollout evaluation only)
    children: list["Node"] = field(default_factory=list)

    @property
    def q(self) -> float:
        """Q = V / N, the mean backed-up value (0 before any visit)."""
        return self.value / self.visits if self.visits else 0.0


# ---- the tree: pure functions, no model ------------------------------------------------------------------------------

def uct(child: Node, parent_visits: int, c: float) -> float:
    """UCT score (Kocsis & Szepesvári 2006): Q + c · sqrt(ln N_parent / N_child); +inf for an unvisited child.
    Example: Q = 20/3, N_parent = 9, N_child = 3, c = 1 → 6.667 + sqrt(2.197 / 3) = 7.522."""
    if child.visits == 0:
        return math.inf
    return child.q + c * math.sqrt(math.log(max(parent_visits, 1)) / child.visits)


def puct(child: Node, parent_visits: int, c: float) -> float:
    """PUCT score (Silver et al. 2017): Q + c · P · sqrt(N_parent) / (1 + N_child).
    Example: Q = 0.5, P = 0.25, N_parent = 16, N_child = 3, c = 1 → 0.5 + 0.25 · 4 / 4 = 0.75."""
    return child.q + c * child.prior * math.sqrt(parent_visits) / (1 + child.visits)


SELECTION: dict[str, Callable[[Node, int, float], float]] = {"uct": uct, "puct": puct}


def select(root: Node, rule: str = "uct", c: float = 1.0) -> list[Node]:
    """The path from the root to the node to expand: the best child by `rule` at every level (ties → the first
    child), down to a leaf or a finished node."""
    score = SELECTION[rule]
    path = [root]
    while path[-1].children and not path[-1].finished:
        node = path[-1]
        path.append(node.children[argmax_first([score(ch, node.visits, c) for ch in node.children])])
    return path


def expand(leaf: Node, steps: list[Sample]) -> list[Node]:
    """Add one child per distinct sampled step (the first of duplicates) and set every child's prior to the
    softmax of the children's step log-probs. Returns the new children.

    Example: steps "a" (log-prob -1), "a" (-1), "b" (-2) → children "a", "b" with priors
    e⁻¹ / (e⁻¹ + e⁻²) = 0.731 and 0.269.
    """
    seen = {ch.text for ch in leaf.children}
    new = []
    for s in steps:
        text = leaf.text + s.text + ("" if s.finished else STEP_SEPARATOR)
        if text not in seen:
            seen.add(text)
            new.append(Node(text=text, logprob=s.logprob, finished=s.finished, depth=leaf.depth + 1))
    leaf.children += new
    if not leaf.children:
        return new
    top = max(ch.logprob for ch in leaf.children)
    weights = [math.exp(ch.logprob - top) for ch in leaf.children]
    for ch, w in zip(leaf.children, weights):
        ch.prior = w / sum(weights)
    return new


def backup(path: list[Node], value: float) -> None:
    """Add `value` to V and 1 to N of every node on the path (root … the evaluated node)."""
    for node in path:
        node.value += value
        node.visits += 1


def has_finished(node: Node) -> bool:
    return node.finished or any(has_finished(ch) for ch in node.children)


def final_path(root: Node) -> list[Node]:
    """The most-visited path to a finished solution (ties: higher Q, then the first child); with no finished
    node in the tree, the most-visited path to a leaf."""
    path = [root]
    while path[-1].children and not path[-1].finished:
        children = [ch for ch in path[-1].children if has_finished(ch)] or path[-1].children
        path.append(children[argmax_first([ch.visits + 1e-9 * _squash(ch.q) for ch in children])])
    return path


def _squash(q: float) -> float:
    """Q mapped into (0, 1), so that as a tie-breaker it can never outweigh one visit."""
    return 0.5 + math.atan(q) / math.pi


# ---- evaluation: a value for each new node ---------------------------------------------------------------------------

# evaluate(problems, jobs, iteration) → per job (value, generated tokens); a job is (problem index, new node, its
# index among that problem's new nodes). Any value function fits — a critic, say:
#     lambda problems, jobs, t: [(critic(problems[i]["prompt"], node.text), 0) for i, node, _ in jobs]
Evaluate = Callable[[list[dict], list[tuple[int, Node, int]], int], list[tuple[float, int]]]


def prm_value(prm: Scorer) -> Evaluate:
    """The PRM's score of the partial solution (nothing generated)."""
    def evaluate(problems, jobs, iteration):
        return [(score, 0) for score in _scores_by_problem(prm, problems, jobs, [node.text for _, node, _ in jobs])]
    return evaluate


def rollout_value(policy: Policy, scorer: Scorer, *, seed: int = 0, children: int = 4) -> Evaluate:
    """Complete each new node's solution by sampling (a finished node is complete already) and score the
    completion with `scorer` (an outcome RM's logit through σ, so values are in (0, 1) like a PRM's).
    The rollout of new node j of problem i at iteration t is seeded by step "rollout:t", example i·children + j.
    """
    def evaluate(problems, jobs, iteration):
        todo = [(i, node, j) for i, node, j in jobs if not node.finished]
        samples = policy.sample([problems[i]["prompt"] for i, _, _ in todo], [n.text for _, n, _ in todo], 1,
                                seed=seed, step=f"rollout:{iteration}",
                                example_ids=[i * children + j for i, _, j in todo]) if todo else []
        tokens = {}
        for (_, node, _), (sample,) in zip(todo, samples):
            node.rollout, tokens[id(node)] = node.text + sample.text, sample.num_tokens
        scores = _scores_by_problem(scorer, problems, jobs, [node.rollout or node.text for _, node, _ in jobs])
        return [(score if scorer.probabilities else probability(score), tokens.get(id(node), 0))
                for score, (_, node, _) in zip(scores, jobs)]
    return evaluate


def _scores_by_problem(scorer: Scorer, problems: list[dict], jobs: list, texts: list[str]) -> list[float]:
    """scorer.scores for each job's text, one call per problem (a batch for the model)."""
    out = [0.0] * len(jobs)
    for i in dict.fromkeys(i for i, _, _ in jobs):
        mine = [k for k, (owner, _, _) in enumerate(jobs) if owner == i]
        for k, score in zip(mine, scorer.scores(problems[i], [texts[k] for k in mine])):
            out[k] = score
    return out


# ---- the search ------------------------------------------------------------------------------------------------------

@STRATEGIES.register("mcts", scorer="value", budgeted=True)
def mcts_search(policy: Policy, problems: list[dict], evaluate: Evaluate, *, children: int = 4, rule: str = "puct",
                c: float = 1.0, max_steps: int = 16, max_iterations: int = 64,
                budget_tokens: list[int] | None = None, seed: int = 0) -> list[SearchResult]:
    """MCTS for each problem ({"prompt", …}); see the module docstring. evaluate: prm_value(prm),
    rollout_value(policy, scorer) or any Evaluate. budget_tokens[i]: tokens problem i may generate (None: no
    limit; then max_iterations bounds the search). Returns per problem the chosen completion and tokens spent."""
    if rule not in SELECTION:
        raise ValueError(f"rule must be one of {', '.join(SELECTION)}, got {rule!r}")
    if children < 1 or max_steps < 1 or max_iterations < 1:
        raise ValueError("children, max_steps and max_iterations must be ≥ 1")
    roots = [Node() for _ in problems]
    spent = [0] * len(problems)
    for iteration in range(max_iterations):
        searching = [i for i in range(len(problems)) if budget_tokens is None or spent[i] < budget_tokens[i]]
        paths = {i: select(roots[i], rule, c) for i in searching}
        # ---- a finished (or too deep) leaf: back its value up again, nothing to generate --------------------------
        for i, path in list(paths.items()):
            if path[-1].finished or path[-1].depth >= max_steps:
                backup(path, path[-1].evaluation or 0.0)
                del paths[i]
        if not paths:
            if all(_exhausted(roots[i], max_steps) for i in searching):
                break
            continue
        # ---- expand: k next steps for each problem's leaf, one engine call -----------------------------------------
        order = list(paths)
        samples = policy.sample([problems[i]["prompt"] for i in order], [paths[i][-1].text for i in order], children,
                                seed=seed, step=f"mcts:{iteration}", example_ids=order, one_step=True)
        jobs = []
        for i, steps in zip(order, samples):
            spent[i] += sum(s.num_tokens for s in steps)
            jobs += [(i, node, j) for j, node in enumerate(expand(paths[i][-1], steps))]
        # ---- evaluate the new nodes and back their values up -------------------------------------------------------
        for (i, node, _), (value, tokens) in zip(jobs, evaluate(problems, jobs, iteration)):
            spent[i] += tokens
            node.evaluation = value
            backup(paths[i] + [node], value)
    partials = [_answer_of(final_path(root)[-1]) for root in roots]
    return complete_unfinished(policy, problems, partials, spent, seed=seed)


def _exhausted(root: Node, max_steps: int) -> bool:
    """Nothing left to expand: every leaf is finished or at the depth limit."""
    if not root.children:
        return root.finished or root.depth >= max_steps
    return all(_exhausted(ch, max_steps) for ch in root.children)


def _answer_of(node: Node) -> tuple[str, bool]:
    """(text, complete?) of the final path's end: a finished node's text, else its rollout's completion, else its
    partial text — which complete_unfinished then completes with one sample."""
    if node.finished:
        return node.text, True
    if node.rollout is not None:
        return node.rollout, True
    return node.text, False


__all__ = ["Node", "SELECTION", "backup", "expand", "final_path", "mcts_search", "prm_value", "puct",
           "rollout_value", "select", "uct"]
