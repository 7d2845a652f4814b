"""The load generator's time slices: how much measured time each server's URL list got."""

from __future__ import annotations

import pytest

from bench.loadgen import slice_seconds


def test_whole_slices_alternate_between_two_lists() -> None:
    # Slices of 1 s from 0: even ones to the first list. Measured window [2, 12): slices 2..11.
    assert slice_seconds(2, 0.0, 1.0, 2.0, 12.0) == pytest.approx([5.0, 5.0])


def test_a_window_that_cuts_slices_counts_only_their_measured_part() -> None:
    # [1.5, 4.25): slice 1 (second list) from 1.5, slices 2 and 3 whole, slice 4 (first list)
    # up to 4.25.
    assert slice_seconds(2, 0.0, 1.0, 1.5, 4.25) == pytest.approx([1.25, 1.5])


def test_three_lists_take_turns() -> None:
    # Slices of 0.5 s from 10; window [10.5, 13): slices 1..5 go to lists 1, 2, 0, 1, 2.
    assert slice_seconds(3, 10.0, 0.5, 10.5, 13.0) == pytest.approx([0.5, 1.0, 1.0])
