"""Argument parsers of the feedback commands (`tether sample`, `tether label`, `tether judge`),
kept here so that ``tether.cli`` registers them with one call."""

from __future__ import annotations


def add_feedback_commands(sub) -> None:
    from tether.feedback.sample import add_sample_command

    add_sample_command(sub)


__all__ = ["add_feedback_commands"]
