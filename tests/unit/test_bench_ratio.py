"""The query benchmark's API / bare ratio: each API run against the bare run next to it."""

from __future__ import annotations

import pytest

from bench.common import paired_ratio


def _runs(*rps: float) -> list[dict[str, float]]:
    return [{"rps": r} for r in rps]


def test_a_slow_spell_falls_on_both_runs_of_a_pair() -> None:
    # Pairs 1,000/2,000, 900/1,000, 1,200/1,500: ratios 0.5, 0.9, 0.8. A ratio of medians
    # would set 1,000 (the API's median) against 1,500 (the bare median): 0.667.
    ratio = paired_ratio(_runs(1000, 900, 1200), _runs(2000, 1000, 1500))
    assert ratio == pytest.approx(0.8)


def test_an_even_number_of_pairs_takes_the_middle_two() -> None:
    assert paired_ratio(_runs(80, 60, 90, 70), _runs(100, 100, 100, 100)) == pytest.approx(0.75)


def test_runs_must_pair_up() -> None:
    with pytest.raises(ValueError):
        paired_ratio(_runs(1, 2), _runs(1))
