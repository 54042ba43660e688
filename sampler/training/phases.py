"""Which kind of trajectories each training step uses (docs/spec.md §3): the phase schedule.

``forward``: on-policy or explored rollouts; ``backward``: Brownian-bridge trajectories from target terminal
states (exact samples now; replay and local-search buffers plug in through ``train.backward_source``);
``both_ways``: even steps forward, odd steps backward. A pure function of the step: nothing to checkpoint.
"""

from __future__ import annotations


class PhaseSchedule:
    """``phase(step) -> "forward" | "backward"`` for ``kind`` in ``forward | backward | both_ways``."""

    KINDS = ("forward", "backward", "both_ways")

    def __init__(self, kind: str = "forward"):
        if kind not in self.KINDS:
            raise ValueError(f"train.phases must be one of {', '.join(self.KINDS)} (got {kind})")
        self.kind = kind

    def __call__(self, step: int) -> str:
        if self.kind == "both_ways":
            return "forward" if step % 2 == 0 else "backward"
        return self.kind
