"""Does the fast (reduced-precision) mode find what the exact float32 pass finds?

A detection's score in bfloat16 or float16 moves by a few thousandths, so a query whose float32
score sits at the threshold may be in one list and not the other: that is rounding, not a different
answer. `compare` therefore sorts the differences into those that matter (a detection clear of the
threshold lost, found with another class, or a box moved by more than a few pixels) and those at the
threshold (within `margin` of it in float32), and says which.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..io.postprocess import Detection

__all__ = ["Agreement", "compare"]

# bfloat16 keeps 8 bits of mantissa: a softmax score near 0.9 moves by up to ~0.004 in the tests
# (tests/test_fast.py); 0.05 leaves room for the deeper official models.
SCORE_MARGIN = 0.05


@dataclass(frozen=True)
class Agreement:
    """How the detections of two passes on one image compare at one threshold."""

    compared: int  # detections of the exact pass clear of the threshold (by the margin)
    same: bool  # every one of them found by the fast pass with the same class, nothing clear below found
    lost: tuple[int, ...]  # queries clear above the threshold in float32, missing (or re-classed) in fast
    extra: tuple[int, ...]  # queries the fast pass finds whose float32 score is clear below the threshold
    borderline: tuple[int, ...]  # queries in one list only, within the margin of the threshold: rounding
    max_score_change: float  # over the queries both find
    max_box_change: float  # pixels, largest coordinate change over the queries both find

    def summary(self) -> str:
        """One line for a person."""
        if self.same:
            text = f"fast mode finds the same {self.compared} detections"
            if self.compared:
                text += f" (scores within {self.max_score_change:.3f}, boxes within {self.max_box_change:.1f} px)"
        else:
            parts = []
            if self.lost:
                parts.append(f"loses queries {', '.join(map(str, self.lost))}")
            if self.extra:
                parts.append(f"adds queries {', '.join(map(str, self.extra))}")
            text = "fast mode differs: it " + " and ".join(parts)
        if self.borderline:
            text += f"; queries {', '.join(map(str, self.borderline))} sit at the threshold and flip by rounding"
        return text


def compare(exact: list[Detection], fast: list[Detection], threshold: float, margin: float = SCORE_MARGIN) -> Agreement:
    """Compare the detections of an exact pass and a fast pass at `threshold`.

    `exact` and `fast` must be each pass's detections at `threshold - margin` or lower (so that a
    query just below the threshold in one pass is still known with its score); both lists are
    filtered here."""
    exact_by_query = {d.query: d for d in exact}
    fast_by_query = {d.query: d for d in fast if d.score > threshold}
    clear = {q: d for q, d in exact_by_query.items() if d.score > threshold + margin}
    shown_exact = {q for q, d in exact_by_query.items() if d.score > threshold}
    lost = tuple(
        sorted(q for q, d in clear.items() if q not in fast_by_query or fast_by_query[q].class_id != d.class_id)
    )
    extra = tuple(
        sorted(q for q in fast_by_query if q not in exact_by_query or exact_by_query[q].score < threshold - margin)
    )
    borderline = tuple(sorted((shown_exact ^ set(fast_by_query)) - set(lost) - set(extra)))
    both = [q for q in fast_by_query if q in exact_by_query]
    score_change = max((abs(fast_by_query[q].score - exact_by_query[q].score) for q in both), default=0.0)
    box_change = max(
        (max(abs(a - b) for a, b in zip(fast_by_query[q].box, exact_by_query[q].box, strict=True)) for q in both),
        default=0.0,
    )
    return Agreement(len(clear), not lost and not extra, lost, extra, borderline, score_change, box_change)
