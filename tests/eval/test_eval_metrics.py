"""eval.metrics: pass@k against the closed form and brute force, maj@k, accuracy, accuracy per level — each docstring
example."""

import itertools
import math

import pytest

from posttrain.eval.metrics import (accuracy, by_group, correct_counts, maj_at_k, mean_over_problems,
                                     paired_sign_test, pass_at_k, wins)


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """The definition: the fraction of all k-subsets of n samples (c correct) holding a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_docstring_example():
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert 1 - math.comb(3, 2) / math.comb(4, 2) == pytest.approx(0.5)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_closed_form_and_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            closed_form = 1 - math.comb(n - c, k) / math.comb(n, k)  # comb(m, k) = 0 when m < k
            assert pass_at_k(n, c, k) == pytest.approx(closed_form, abs=1e-12)
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_edge_cases():
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 0, 10) == 0.0        # nothing right
    assert pass_at_k(10, 8, 3) == 1.0                                           # n − c = 2 < k: every subset hits
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)                            # pass@1 = c / n
    # large n: the binomials would overflow a float, the product does not
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)
    assert 0.0 < pass_at_k(5000, 3, 10) < 1.0
    for bad in ((3, 4, 1), (3, 1, 0), (3, 1, 4), (3, -1, 1)):
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_maj_at_k_docstring_example():
    answers, scores = ["5", "7", "5", None], [1, 0, 1, 0]
    assert maj_at_k(answers, scores, 3) == 1.0
    assert maj_at_k(answers, scores, 2) == 1.0      # a 1–1 tie goes to "5", seen first
    assert maj_at_k(["7", "5", "5"], [0, 1, 1], 2) == 0.0   # the same tie, "7" first
    assert maj_at_k(["7", "5", "5"], [0, 1, 1], 3) == 1.0
    assert maj_at_k([None, None], [0, 0], 2) == 0.0
    with pytest.raises(ValueError):
        maj_at_k(["1"], [1], 2)


def test_accuracy_and_helpers():
    assert accuracy([1.0, 0.0, None, 1.0]) == 0.5
    assert accuracy([]) == 0.0
    assert correct_counts([[1.0, 0.0, None], [1.0, 1.0]]) == [(3, 1), (2, 2)]
    assert mean_over_problems([0.5, 1.0]) == 0.75 and mean_over_problems([]) == 0.0


# ---- paired sign test ------------------------------------------------------------------------------------------------

def test_sign_test_worked_examples():
    a = [0] * 5 + [1] + [1, 0] * 3  # b wins the first 5, a the 6th, the rest agree
    b = [1] * 5 + [0] + [1, 0] * 3
    assert paired_sign_test(a, b) == pytest.approx(2 * 7 / 64)
    assert paired_sign_test(b, a) == pytest.approx(2 * 7 / 64)  # two-sided: symmetric
    assert paired_sign_test([0] * 9 + [1], [1] * 9 + [0]) == pytest.approx(2 * 11 / 1024)
    assert paired_sign_test([1, 0, 1], [1, 0, 1]) == 1.0
    assert paired_sign_test([0, 1], [1, 0]) == 1.0  # a 1-1 split: the tail holds everything, capped at 1


def test_wins_counts_each_sides_wins_with_none_as_wrong():
    assert wins([1, 0, 0], [0, 1, 1]) == (1, 2)  # the docstring's example
    assert wins([1, None, 1, 0], [None, 1, 1, 0]) == (1, 1)  # agreements count for neither


def test_sign_test_matches_enumeration():
    """The p-value is the probability, under fair coin flips on the m disagreements, of a split at least as far
    from even as the one seen — counted here over all 2^m outcomes."""
    for a_wins, b_wins in [(0, 4), (1, 6), (3, 3), (2, 7)]:
        m = a_wins + b_wins
        seen = abs(b_wins - m / 2)
        extreme = sum(1 for flips in itertools.product([0, 1], repeat=m) if abs(sum(flips) - m / 2) >= seen)
        a = [1] * a_wins + [0] * b_wins
        b = [0] * a_wins + [1] * b_wins
        assert paired_sign_test(a, b) == pytest.approx(min(1.0, extreme / 2 ** m))


def test_sign_test_rejects_unpaired_scores():
    with pytest.raises(ValueError, match="one score per problem"):
        paired_sign_test([1, 0], [1])


def test_by_group_docstring_example_and_its_edges():
    assert by_group([{"level": 1}, {"level": 2}, {"level": 2}], [1.0, 0.0, 1.0]) == {"level_1": 1.0, "level_2": 0.5}
    # numeric levels in numeric order (10 after 2), None counted as wrong, rows without a level left out
    rows = [{"level": 10}, {"level": 2}, {"level": 2}, {"prompt": "no level"}, {"level": 10}]
    assert by_group(rows, [1.0, None, 1.0, 1.0, 0.0]) == {"level_2": 0.5, "level_10": 0.5}
    assert by_group([{"prompt": "a"}, {"prompt": "b"}], [1.0, 0.0]) == {}  # no levels: nothing more reported
    assert by_group([{"difficulty": "hard"}, {"difficulty": "easy"}], [1.0, 0.0], field="difficulty") == \
        {"difficulty_easy": 0.0, "difficulty_hard": 1.0}
    with pytest.raises(ValueError, match="one value per row"):
        by_group([{"level": 1}], [])
