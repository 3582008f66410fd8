"""posttrain.search: voting tie-breaks, the MCTS worked example by hand, the step-beam worked example with a
scripted policy, best-of-1 = plain sampling on the real engine, and the scorers = the training code's scores."""

import math

import pytest

from posttrain.search import best_of_n, majority_vote, mcts_search, prm_value, step_beam_search, weighted_vote
from posttrain.search.best_of_n import argmax_first, choose_best, choose_by_vote
from posttrain.search.mcts import Node, backup, expand, final_path, puct, select, uct
from posttrain.search.policy import Policy, Sample, steps_of
from posttrain.search.scorers import AGGREGATES, OutcomeRM, ProcessRM, probability
from posttrain.search.step_beam import Beam, top_beams, unique_by_text


# ---- voting ----------------------------------------------------------------------------------------------------------

def test_majority_vote_ties_go_to_the_answer_seen_first():
    assert majority_vote(["12", None, "13", "13", "12"]) == 0      # 2–2 tie: "12" occurs first
    assert majority_vote(["13", None, "12", "12", "13"]) == 0      # the same counts, the other order: "13"
    assert majority_vote(["12", None, "13", "13"]) == 2            # "13" wins; its first sample is index 2
    assert majority_vote([None, "7"]) == 1
    assert majority_vote([None, None]) is None and majority_vote([]) is None


def test_weighted_vote_docstring_example():
    assert weighted_vote(["12", "13", "13", None], [0.9, 0.3, 0.4, 5.0]) == 0   # 0.9 vs 0.7; None ignored
    assert weighted_vote(["12", "13", "13", None], [0.2, 0.3, 0.4, 0.0]) == 1   # 0.2 vs 0.7
    assert weighted_vote(["12", "13"], [0.5, 0.5]) == 0                         # a tie: first seen
    with pytest.raises(ValueError):
        weighted_vote(["1"], [-0.5])
    with pytest.raises(ValueError):
        weighted_vote(["1"], [math.nan])


def test_choose_best_and_vote_on_candidates():
    samples = [Sample("a answer: 1", 5, 0.0, True), Sample("b answer: 2", 7, 0.0, True),
               Sample("c answer: 2", 3, 0.0, True)]
    assert argmax_first([0.2, 0.9, 0.9]) == 1
    assert choose_best(samples, [0.1, 0.5, 0.5]).completion == "b answer: 2"     # ties → first
    assert choose_best(samples, [0.1, 0.5, 0.5]).generated_tokens == 15          # every sample costs
    assert choose_by_vote(samples, ["1", "2", "2"]).completion == "b answer: 2"
    assert choose_by_vote(samples, ["1", "2", "2"], [0.9, 0.3, 0.4]).completion == "a answer: 1"
    assert choose_by_vote(samples, [None, None, None]).completion == "a answer: 1"


# ---- MCTS: the worked example, by hand -----------------------------------------------------------------------

def worked_example_tree():
    s1 = Node(text="S1", value=50, visits=9)
    s2_1, s2_2 = Node(text="S2-1", value=20, visits=3), Node(text="S2-2", value=30, visits=6)
    s3_1, s3_2 = Node(text="S3-1", value=10, visits=2), Node(text="S3-2", value=10, visits=1)
    s1.children, s2_1.children = [s2_1, s2_2], [s3_1, s3_2]
    return s1, s2_1, s2_2, s3_1, s3_2


def test_mcts_worked_example_uct_select_expand_backup():
    s1, s2_1, s2_2, s3_1, s3_2 = worked_example_tree()
    # the docstring's arithmetic (c = 1)
    assert uct(s2_1, 9, 1.0) == pytest.approx(20 / 3 + math.sqrt(math.log(9) / 3)) == pytest.approx(7.522, abs=1e-3)
    assert uct(s2_2, 9, 1.0) == pytest.approx(5.605, abs=1e-3)
    assert uct(s3_1, 3, 1.0) == pytest.approx(5.741, abs=1e-3)
    assert uct(s3_2, 3, 1.0) == pytest.approx(11.048, abs=1e-3)

    path = select(s1, "uct", c=1.0)
    assert [n.text for n in path] == ["S1", "S2-1", "S3-2"]

    (s4_1,) = expand(s3_2, [Sample("S4-1", 3, -0.5, False)])
    backup(path + [s4_1], 20)
    stats = {n.text: (n.value, n.visits) for n in (s1, s2_1, s2_2, s3_1, s3_2)}
    assert stats == {"S1": (70, 10), "S2-1": (40, 4), "S2-2": (30, 6), "S3-1": (10, 2), "S3-2": (30, 2)}
    assert (s4_1.value, s4_1.visits) == (20, 1) and s4_1.text == "S3-2S4-1\n"


def test_uct_prefers_unvisited_and_puct_example():
    parent = Node(visits=4)
    assert uct(Node(), parent.visits, 1.0) == math.inf
    child = Node(value=1.5, visits=3, prior=0.25)                 # Q = 0.5
    assert puct(child, 16, 1.0) == pytest.approx(0.5 + 0.25 * 4 / 4)


def test_puct_follows_the_policy_prior_where_uct_follows_q():
    likely, unlikely = Node(text="a", value=1.0, visits=2, prior=0.9), Node(text="b", value=1.5, visits=2, prior=0.1)
    root = Node(visits=4, children=[likely, unlikely])
    # PUCT: a 0.5 + 0.9·2/3 = 1.1 > b 0.75 + 0.1·2/3 = 0.817;  UCT: equal visits, so b's higher Q (0.75) wins
    assert [n.text for n in select(root, "puct", c=1.0)] == ["", "a"]
    assert [n.text for n in select(root, "uct", c=1.0)] == ["", "b"]


def test_expand_dedupes_and_sets_softmax_priors():
    leaf = Node(text="x\n")
    new = expand(leaf, [Sample("a", 1, -1.0, False), Sample("a", 1, -1.0, False), Sample("b", 1, -2.0, True)])
    assert [n.text for n in new] == ["x\na\n", "x\nb"]             # a finished step gets no separator
    assert new[0].prior == pytest.approx(0.731, abs=1e-3) and new[1].prior == pytest.approx(0.269, abs=1e-3)
    assert new[1].finished and new[0].depth == 1


def test_final_path_is_the_most_visited_path_to_a_finished_node():
    root = Node(visits=10)
    busy, quiet = Node(text="busy", visits=7, value=6), Node(text="quiet", visits=3, value=1)
    busy.children = [Node(text="busy-leaf", visits=7, value=6)]                    # no finished node below
    quiet.children = [Node(text="done", visits=2, value=1, finished=True)]
    root.children = [busy, quiet]
    assert [n.text for n in final_path(root)] == ["", "quiet", "done"]
    quiet.children[0].finished = False                                               # now nothing finished
    assert [n.text for n in final_path(root)] == ["", "busy", "busy-leaf"]


# ---- a scripted policy: the search logic without a model -------------------------------------------------------------

class ScriptedPolicy:
    """policy.sample's contract: per (prompt, prefix) n Samples, here read from a script prefix → steps.
    A step is (text, finished); its cost is len(text) + 1 tokens (the newline or eos)."""

    def __init__(self, script):
        self.script, self.calls = script, []

    def sample(self, prompts, prefixes, n, *, seed, step, example_ids, one_step=False, temperature=None):
        self.calls.append((list(prefixes), n, step, list(example_ids)))
        return [[Sample(text, len(text) + 1, -1.0, done) for text, done in self.script[prefix][:n]]
                for prefix in prefixes]


class TableScorer:
    name, oracle, probabilities = "table", False, True

    def __init__(self, table):
        self.table = table

    def scores(self, problem, completions):
        return [self.table[c] for c in completions]


A, B = "7+5=12 carry 1\n", "7+5=11 carry 1\n"
A1, A2 = A + "4+8+1=13 carry 1\n", A + "4+8+1=14 carry 1\n"
BEAM_SCRIPT = {
    "": [("7+5=12 carry 1", False), ("7+5=12 carry 1", False), ("7+5=11 carry 1", False)],
    A: [("4+8+1=13 carry 1", False), ("4+8+1=14 carry 1", False), ("4+8+1=13 carry 1", False)],
    B: [("4+8+1=13 carry 1", False), ("answer: 121", True), ("answer: 121", True)],
    A1: [("answer: 132", True)] * 3,
    A2: [("answer: 142", True)] * 3,
}
BEAM_SCORES = {A: 0.9, B: 0.2, A1: 0.85, A2: 0.3, B + "4+8+1=13 carry 1\n": 0.2, B + "answer: 121": 0.1,
               A1 + "answer: 132": 0.8, A2 + "answer: 142": 0.3}


def test_step_beam_worked_example():
    policy = ScriptedPolicy(BEAM_SCRIPT)
    (result,) = step_beam_search(policy, [{"prompt": "47+85="}], TableScorer(BEAM_SCORES), beam_width=2,
                                 expansions=3)
    assert result.completion == "7+5=12 carry 1\n4+8+1=13 carry 1\nanswer: 132"
    # round 1: 3 samples of 15 tokens; round 2: A and B expanded (3 × 17 + 17 + 2 × 12); round 3: A1, A2 (6 × 12)
    assert result.generated_tokens == 3 * 15 + (3 * 17 + 17 + 2 * 12) + 6 * 12
    assert [c[0] for c in policy.calls] == [[""], [A, B], [A1, A2]]            # B was pruned after round 2
    assert [c[3] for c in policy.calls] == [[0], [0, 1], [0, 1]]               # example id = problem·B + beam


def test_step_beam_stops_at_the_budget():
    policy = ScriptedPolicy(BEAM_SCRIPT)
    (result,) = step_beam_search(policy, [{"prompt": "47+85="}], TableScorer(BEAM_SCORES), beam_width=2,
                                 expansions=3, budget_tokens=[45])
    assert [c[0] for c in policy.calls] == [[""], [A]] and policy.calls[1][2] == "complete"
    # nothing finished within the budget: the best beam, completed by one sample whose 17 tokens count too
    assert result.completion == A + "4+8+1=13 carry 1" and result.generated_tokens == 45 + 17


def test_top_beams_and_unique_by_text():
    beams = [Beam("w", 0.5, False), Beam("x", 0.9, False), Beam("y", 0.5, False), Beam("z", 0.7, False)]
    assert [b.text for b in top_beams(beams, 3)] == ["x", "z", "w"]
    assert [b.text for b in unique_by_text([Beam("a", 1, False), Beam("a", 2, False), Beam("b", 0, False)])] == \
        ["a", "b"]


MCTS_SCRIPT = {"": [("good", False), ("bad", False)], "good\n": [("answer: 1", True)] * 2,
               "bad\n": [("answer: 2", True)] * 2}
MCTS_SCORES = {"good\n": 0.9, "bad\n": 0.1, "good\nanswer: 1": 0.9, "bad\nanswer: 2": 0.1}


def test_mcts_search_with_a_scripted_policy():
    policy = ScriptedPolicy(MCTS_SCRIPT)
    (result,) = mcts_search(policy, [{"prompt": "1+0="}], prm_value(TableScorer(MCTS_SCORES)), children=2,
                            rule="uct", max_iterations=4)
    # it 0: root → good (0.9), bad (0.1); it 1: UCT picks good (0.9 + 0.833 > 0.1 + 0.833), expands it to one
    # distinct finished child; it 2, 3: good again (e.g. 0.9 + sqrt(ln 3 / 2) = 1.641 > 0.1 + sqrt(ln 3) = 1.148),
    # its finished child is backed up again for free
    assert result.completion == "good\nanswer: 1"
    assert result.generated_tokens == (5 + 4) + 2 * 10                      # 2 root steps, 2 samples under good
    assert [c[0] for c in policy.calls] == [[""], ["good\n"]]


def test_mcts_stops_at_the_budget():
    policy = ScriptedPolicy(MCTS_SCRIPT)
    (result,) = mcts_search(policy, [{"prompt": "1+0="}], prm_value(TableScorer(MCTS_SCORES)), children=2,
                            rule="uct", budget_tokens=[9])
    # nothing finished within the budget: the most-visited leaf, completed by one sample (10 more tokens)
    assert [c[0] for c in policy.calls] == [[""], ["good\n"]] and policy.calls[1][2] == "complete"
    assert result.completion == "good\nanswer: 1" and result.generated_tokens == 9 + 10


def test_strategies_registry_names_each_strategy_and_what_it_needs():
    import inspect

    from posttrain.search import STRATEGIES, best_of_n, mcts_search, step_beam_search, vote

    assert {n: STRATEGIES.get(n) for n in STRATEGIES} == {"best_of_n": best_of_n, "vote": vote,
                                                          "step_beam": step_beam_search, "mcts": mcts_search}
    for name in STRATEGIES:  # budgeted: it takes a per-problem token budget (the two tests above stop at it)
        takes_budget = "budget_tokens" in inspect.signature(STRATEGIES.get(name)).parameters
        assert STRATEGIES.entry(name).budgeted == takes_budget, name
    assert STRATEGIES.select(scorer="process") == ["step_beam"] and STRATEGIES.entry("vote").scorer == "optional"


# ---- on the real engine and models (the embedded tiny model) ---------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    from posttrain.config import LoraConfig, ModelConfig
    from posttrain.models.loading import load_model, load_tokenizer
    from posttrain.rollout import HFEngine

    tokenizer = load_tokenizer("tiny")
    model = load_model(ModelConfig(name_or_path="tiny"), LoraConfig()).eval()
    engine = HFEngine(model, [tokenizer.eos_token_id], tokenizer.pad_token_id, batch_size=3)
    return model, tokenizer, engine


PROBLEMS = [{"prompt": "12+7=", "answer": "19"}, {"prompt": "3+45=", "answer": "48"}]


def test_best_of_1_is_plain_sampling(tiny):
    from posttrain.rollout import SamplingParams, generate_text

    _, tokenizer, engine = tiny
    plain = generate_text(engine, tokenizer, [p["prompt"] for p in PROBLEMS],
                          SamplingParams(temperature=0.8, max_new_tokens=12), use_chat_template=True, seed=7)
    policy = Policy(engine, tokenizer, use_chat_template=True, temperature=0.8, max_new_tokens=12)
    constant = TableScorer({})
    constant.scores = lambda problem, completions: [0.0] * len(completions)   # every tie → the first sample
    for n in (1, 3):
        results = best_of_n(policy, PROBLEMS, constant, n, seed=7)
        assert [r.completion for r in results] == [text for _, text in plain]
    one = best_of_n(policy, PROBLEMS, constant, 1, seed=7)
    assert [r.generated_tokens for r in one] == [len(g.completion_ids) for g, _ in plain]


def test_one_step_samples_stop_at_a_line(tiny):
    _, tokenizer, engine = tiny
    policy = Policy(engine, tokenizer, use_chat_template=True, temperature=1.0, max_step_tokens=6)
    (samples,) = policy.sample(["12+7="], ["2+7=9\n"], 4, seed=0, step=0, example_ids=[0], one_step=True)
    for s in samples:
        assert "\n" not in s.text and 1 <= s.num_tokens <= 6
        if not s.finished:  # it ended at a newline: the separator's token is generated, counted and cut
            assert s.num_tokens == len(tokenizer(s.text, add_special_tokens=False)["input_ids"]) + 1


def test_scorers_use_the_training_codes_tokenization_and_scores(tiny):
    from posttrain.config import LoraConfig, ModelConfig
    from posttrain.data.preference import response_example
    from posttrain.models.loading import load_model
    from posttrain.rewards import ModelReward, step_scores
    from posttrain.rewards.model import scores

    _, tokenizer, _ = tiny
    completions = ["2+7=9\n1+0=1\nanswer: 19", "answer: 18", ""]
    prm_model = load_model(ModelConfig(name_or_path="tiny"), LoraConfig(), head="token", seed=1).eval()
    for aggregate in AGGREGATES:
        prm = ProcessRM(prm_model, tokenizer, aggregate=aggregate, batch_size=2)
        got = prm.scores(PROBLEMS[0], completions)
        expected = [AGGREGATES[aggregate](step_scores(prm_model, tokenizer, "12+7=", steps_of(c)))
                    for c in completions[:2]]
        assert got[:2] == pytest.approx(expected, abs=1e-6) and got[2] == 0.0
    assert AGGREGATES["min"]([0.9, 0.2, 0.8]) == 0.2
    assert AGGREGATES["product"]([0.9, 0.2, 0.8]) == pytest.approx(0.144)
    assert AGGREGATES["last"]([0.9, 0.2, 0.8]) == 0.8

    rm_model = load_model(ModelConfig(name_or_path="tiny"), LoraConfig(), head="score", seed=1).eval()
    rm = OutcomeRM(ModelReward(rm_model, tokenizer))
    got = rm.scores(PROBLEMS[0], completions[:2])
    examples = [response_example("12+7=", c, tokenizer) for c in completions[:2]]
    expected = [scores(rm_model, [e], tokenizer.pad_token_id).item() for e in examples]
    assert got == pytest.approx(expected, abs=1e-5)
    assert probability(0.0) == 0.5 and probability(-800.0) == 0.0 and probability(800.0) == 1.0
