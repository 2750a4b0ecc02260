"""A continual-learning method from outside the package, found through the hf_budgetcl.methods entry point."""

from dataclasses import dataclass, field

from hf_budgetcl.methods import ContinualMethod, MethodOptions


@dataclass
class QuarterStreamOptions(MethodOptions):
    quarter_replay_weight: float = field(default=1.0, metadata={"help": "Unused; shows that options reach it."})


class QuarterStream(ContinualMethod):
    """A quarter of each batch from the latest arrivals, the rest drawn uniformly from memory."""

    name = "quarter_stream"
    stream_fraction = 0.25
    Options = QuarterStreamOptions
