"""ER: experience replay, half of each batch from the latest arrivals and half drawn uniformly from memory."""

from .base import ContinualMethod


class ER(ContinualMethod):
    name = "er"
    stream_fraction = 0.5
