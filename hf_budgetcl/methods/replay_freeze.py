"""Replay + adaptive freezing: the aL-only ablation of aL-SAR (uniform retrieval, every batch from memory)."""

from .replay import Replay


class ReplayFreeze(Replay):
    name = "replay+freeze"
    freeze = "adaptive"
