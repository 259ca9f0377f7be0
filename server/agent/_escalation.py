"""Escalation: switching a run once to a stronger model when its budget runs out or the
model gives up."""

from __future__ import annotations

from collections.abc import Sequence

from ._records import Message

__all__ = ["REASONS", "escalation_note", "gave_up"]

#: Why a run escalated, and how the note to the stronger model says it.
REASONS = {
    "max_iterations": "ran out of model turns",
    "budget": "ran out of its token budget",
    "gave_up": "gave up",
}


def gave_up(answer: str, markers: Sequence[str]) -> bool:
    """An empty answer, or one holding a give-up marker (case-insensitive)."""
    text = answer.strip().lower()
    return not text or any(marker.lower() in text for marker in markers)


def escalation_note(model: str, reason: str) -> Message:
    """The message telling the escalation model why it takes over."""
    return {"role": "user", "content": f"Escalated to {model}: the previous model "
                                       f"{REASONS[reason]}. Continue the task from here."}
