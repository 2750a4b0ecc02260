"""Replay: every batch drawn uniformly from memory (the "vanilla" of the aL-SAR ablation)."""

from .base import ContinualMethod


class Replay(ContinualMethod):
    name = "replay"
    stream_fraction = 0.0
