"""Tabular RL: hand-solved values, the book's gridworld, planning methods that must agree, learning that reaches the
goal, and exact resume."""

import json
import shutil

import numpy as np
import pytest
from conftest import run_cli

from posttrain.classic import common, tabular


def test_returns_hand_computed():
    assert tabular.episode_returns([4, 3, 5, 2], 1.0) == [14, 10, 7, 2]
    assert tabular.episode_returns([4, 3, 5, 2], 0.5) == [7, 6, 6, 2]


def chain_mdp():
    """0 → 1 → 2 (terminal). Action 0 moves right for reward 1; action 1 stays for reward 0."""
    return {0: {0: [(1.0, 1, 1.0, False)], 1: [(1.0, 0, 0.0, False)]},
            1: {0: [(1.0, 2, 1.0, True)], 1: [(1.0, 1, 0.0, False)]},
            2: {0: [(1.0, 2, 0.0, True)], 1: [(1.0, 2, 0.0, True)]}}


def test_value_iteration_on_a_hand_solved_mdp():
    # V(1) = 1 (one move to the end), V(0) = 1 + 0.9·V(1) = 1.9; staying gives 0.9·V(s) < V(s)
    V, policy, _ = tabular.value_iteration(chain_mdp(), 3, 2, gamma=0.9)
    np.testing.assert_allclose(V, [1.9, 1.0, 0.0], atol=1e-9)
    assert policy[:2].tolist() == [0, 0]


def test_stochastic_hand_solved_mdp():
    # one state, action 0: reward 1 and end with p = 0.5 or stay with p = 0.5; action 1: reward 0.4 and end.
    # V = max(1 + 0.5·γ·V, 0.4); with γ = 1: V = 1 + V/2 → V = 2
    P = {0: {0: [(0.5, 0, 1.0, True), (0.5, 0, 1.0, False)], 1: [(1.0, 0, 0.4, True)]}}
    V, policy, _ = tabular.value_iteration(P, 1, 2, gamma=1.0, theta=1e-12, max_sweeps=10_000)
    assert V[0] == pytest.approx(2.0, abs=1e-9) and policy[0] == 0


def test_gridworld_random_policy_values_match_the_book():
    """Sutton & Barto figure 4.1: the uniform random policy's values on the 4×4 gridworld, γ = 1."""
    env = common.GridWorld()
    V = tabular.evaluate_policy(env.P, np.full((16, 4), 0.25), 16, gamma=1.0)
    book = [0, -14, -20, -22, -14, -18, -20, -20, -20, -20, -18, -14, -22, -20, -14, 0]
    np.testing.assert_allclose(V, book, atol=1e-6)


def test_gridworld_optimal_values_are_minus_the_distance_to_a_corner():
    V, _, _ = tabular.value_iteration(common.GridWorld().P, 16, 4, gamma=1.0)
    distance = [min(r + c, 6 - r - c) for r in range(4) for c in range(4)]
    np.testing.assert_allclose(V, [-d for d in distance])


def test_policy_iteration_agrees_with_value_iteration_on_slippery_frozenlake():
    env = common.make_env("FrozenLake-v1", is_slippery=True)
    P = env.unwrapped.P
    V_vi, pi_vi, _ = tabular.value_iteration(P, 16, 4, gamma=0.95, theta=1e-12)
    V_pi, pi_pi, _ = tabular.policy_iteration(P, 16, 4, gamma=0.95, theta=1e-12)
    np.testing.assert_allclose(V_vi, V_pi, atol=1e-8)
    np.testing.assert_allclose(tabular.evaluate_policy(P, pi_vi, 16, 0.95), V_vi, atol=1e-8)
    assert V_vi[0] > 0.1  # the start state can reach the goal


def test_n_step_td_hand_computed():
    # states 0 → 1 → 2 (terminal), rewards [1, 2], V = [0.5, 0.5, 0], α = 1, γ = 1
    V = np.array([0.5, 0.5, 0.0])
    tabular.n_step_td(V, [0, 1, 2], [1.0, 2.0], terminated=True, n=1, alpha=1.0, gamma=1.0)
    assert V.tolist() == [1.5, 2.0, 0.0]  # TD(0): V(0) ← 1 + V(1) = 1.5 (V(1) still 0.5), then V(1) ← 2
    V = np.array([0.5, 0.5, 0.0])
    tabular.n_step_td(V, [0, 1, 2], [1.0, 2.0], terminated=True, n=2, alpha=1.0, gamma=1.0)
    assert V.tolist() == [3.0, 2.0, 0.0]  # 2-step: V(0) ← 1 + 2, the full return


@pytest.mark.parametrize("algo", ["q_learning", "sarsa"])
def test_td_control_reaches_the_goal_every_time_on_deterministic_frozenlake(tmp_path, algo):
    proc = run_cli("classic", algo, "--env", "FrozenLake-v1", f"output_dir={tmp_path}", "log.progress=false",
                   check=True)
    summary = json.loads((tmp_path / "final" / "summary.json").read_text())
    assert summary["eval/return"] == 1.0 and summary["eval/return_min"] == 1.0, proc.stdout  # 20 of 20 succeed
    assert summary["eval/length"] == 6  # the shortest path


# measured over seeds 0–2: mc 0.6 after 2,000 episodes; TD(0) 1.0–1.3 and 3-step TD 0.9–2.5 after 5,000
@pytest.mark.parametrize("algo,extra,bound", [("mc", ["total_steps=2000"], 1.0),
                                              ("td", ["total_steps=5000", "tabular.alpha=0.01"], 2.0),
                                              ("td", ["total_steps=5000", "tabular.alpha=0.01", "tabular.n=3"], 3.0)])
def test_evaluation_methods_approach_the_exact_values(tmp_path, algo, extra, bound):
    run_cli("classic", algo, "--env", "GridWorld", "gamma=1.0", f"output_dir={tmp_path}",
            "log.progress=false", *extra, check=True)
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    errors = [r["value_error"] for r in records]
    assert errors[-1] < bound < errors[0]  # values run from about 14–22 in size: a bound of 1–2.5 is learned


def test_q_learning_resume_equals_the_uninterrupted_run(tmp_path):
    args = ["classic", "q_learning", "--env", "FrozenLake-v1", "tabular.slippery=true", "total_steps=300",
            "checkpoint.every=100", "checkpoint.keep_last=5", "log.progress=false", "eval_every=150"]
    full, part = tmp_path / "full", tmp_path / "part"
    run_cli(*args, f"output_dir={full}", check=True)
    shutil.copytree(full, part)
    shutil.rmtree(part / "final")
    (part / "checkpoints" / "latest").write_text("step_000100\n")
    run_cli(*args, f"output_dir={part}", "checkpoint.resume=true", check=True)

    def records(d):
        return [{k: v for k, v in json.loads(x).items() if k != "time"}
                for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert records(part) == records(full)
    assert len(records(full)) == 300
