"""aL-SAR: similarity-aware retrieval (:class:`~hf_budgetcl.methods.sar.SAR`) plus adaptive layer freezing (aL)."""

from .sar import SAR


class ALSAR(SAR):
    name = "alsar"
    freeze = "adaptive"
