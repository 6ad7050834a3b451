"""Work budgets (detr_core/analysis/budget.py): pure estimates, and refusals that say what to lower."""

from __future__ import annotations

import pytest

from detr_core.analysis import budget
from detr_core.analysis.budget import DEFAULT_BUDGETS, Budget, check_budget, estimate, max_tokens

LARGEST = {"min_size": 1600, "max_size": 2666}  # the sidebar's largest preprocessing sizes
PHOTO_40MP_TOKENS = 12_300  # what a 40-megapixel photo gives at those sizes (issue #12)
DEFAULT_DC5_TOKENS = 50 * 84  # R50-DC5 at the default 800/1333: the largest default-size grid


@pytest.mark.parametrize("request_", ["entropy", "rollout", "relevance"])
def test_the_default_sizes_fit_and_the_largest_sizes_on_a_40_megapixel_photo_do_not(request_):
    assert check_budget(request_, DEFAULT_DC5_TOKENS).ok
    verdict = check_budget(request_, PHOTO_40MP_TOKENS, **LARGEST)
    assert not verdict.ok and verdict.max_tokens < PHOTO_40MP_TOKENS
    assert "12,300 feature cells" in verdict.message and f"At most {verdict.max_tokens:,} cells fit" in verdict.message
    assert "now 1600/2666" in verdict.message  # what to lower, and from what
    low_min, low_max = verdict.suggested_sizes
    assert low_min < 1600 and low_max < 2666
    # the suggested sizes give about the cells that fit (cells scale with the square of the sizes)
    assert PHOTO_40MP_TOKENS * (low_min / 1600) ** 2 <= verdict.max_tokens * 1.01


def test_a_rollout_click_must_answer_in_seconds_and_says_what_else_to_pick():
    verdict = check_budget("rollout", PHOTO_40MP_TOKENS, **LARGEST)
    assert verdict.cost.seconds > DEFAULT_BUDGETS["rollout"].seconds
    assert "instead of rollout" in verdict.message


def test_max_tokens_is_the_edge_of_the_budget():
    for request_ in ("entropy", "rollout", "relevance"):
        n = max_tokens(request_)
        assert check_budget(request_, n).ok and not check_budget(request_, n + 1).ok


def test_costs_grow_with_the_square_of_the_tokens_and_with_layers_and_heads():
    a, b = estimate("entropy", 2000), estimate("entropy", 4000)
    assert b.seconds == pytest.approx(4 * a.seconds)
    assert estimate("rollout", 3000, layers=12).seconds == pytest.approx(2 * estimate("rollout", 3000).seconds)
    assert estimate("rollout", 3000, heads=4).seconds == pytest.approx(estimate("rollout", 3000).seconds / 2)
    assert estimate("relevance", 0).seconds == budget.COSTS["relevance"].seconds_fixed


def test_a_budget_below_the_fixed_cost_fits_nothing_and_says_so():
    verdict = check_budget("relevance", 100, Budget(seconds=0.5, gigabytes=4))
    assert not verdict.ok and verdict.max_tokens == 0
    assert "does not fit this server's limits at any size" in verdict.message


def test_memory_alone_can_refuse():
    verdict = check_budget("relevance", 6000, Budget(seconds=1e9, gigabytes=2.0))
    assert not verdict.ok and "GB of memory" in verdict.message and " s (the limit" not in verdict.message
    assert "lower the preprocessing sizes (shorter and longer side)" in verdict.message  # no sizes given


@pytest.mark.parametrize(("args", "error"), [(("banana", 10), "unknown analysis"), (("rollout", -1), "tokens >= 0")])
def test_bad_arguments_are_value_errors(args, error):
    with pytest.raises(ValueError, match=error):
        estimate(*args)


def test_the_module_is_pure():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(budget.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "math", "dataclasses", "typing"}, imported


def test_relevance_for_r50_dc5_at_800x1066_is_offered_and_a_much_larger_request_is_not():
    """R50-DC5 at 800/1333 on a 4:3 image: 800 x 1066 -> 50 x 67 = 3,350 cells, within the targets of
    issue #15 (8 s, 1.5 GB above a captured pass); a 40-megapixel photo at the largest sizes is refused."""
    dc5_800x1066 = 50 * 67
    verdict = check_budget("relevance", dc5_800x1066, min_size=800, max_size=1333)
    assert verdict.ok and verdict.message is None
    assert verdict.cost.seconds <= 8.0 and verdict.cost.gigabytes <= 1.5
    too_big = check_budget("relevance", PHOTO_40MP_TOKENS, **LARGEST)
    assert not too_big.ok and "a relevance map at 12,300 feature cells" in too_big.message
    assert dc5_800x1066 < too_big.max_tokens < PHOTO_40MP_TOKENS
