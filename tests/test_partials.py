"""Stable prefixes of interim results."""

from __future__ import annotations

from pipeline.partials import PartialTracker, common_prefix


def test_common_prefix_ignores_case_and_punctuation_and_handles_chinese() -> None:
    assert common_prefix("Turn on the kitchen", "turn on the, kitchen lights.") == "turn on the, kitchen"
    assert common_prefix("Turn off", "Turn on the lights") == "Turn"
    assert common_prefix("把客厅的灯", "把客厅的灯打开") == "把客厅的灯"
    assert common_prefix("", "anything") == ""


def test_stable_text_never_shrinks_and_starts_again_with_each_utterance() -> None:
    t = PartialTracker()
    assert t.update("kitchen", "k-1", "Turn on") == ""
    assert t.update("kitchen", "k-1", "Turn on the kitchen") == "Turn on"
    assert t.update("kitchen", "k-1", "Turn on the kitchen lights") == "Turn on the kitchen"
    assert t.update("kitchen", "k-1", "Turn off the kitchen lights") == "Turn on the kitchen"  # kept, not shrunk
    assert t.update("hall", "h-1", "Hello") == ""  # rooms are separate
    assert t.update("kitchen", "k-2", "Good night") == ""
