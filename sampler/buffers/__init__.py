"""Replay buffers of terminal states (config group ``buffer``, docs/spec.md §5) and the registry configs name them by.

``uniform`` samples stored entries uniformly, ``reward`` ∝ exp(β·key), ``rank`` / ``per`` ∝ 1/(k·N + rank).
"""

from __future__ import annotations

import inspect

import torch

from sampler.buffers.base import EVICTIONS, ReplayBuffer
from sampler.buffers.rank import RankBuffer
from sampler.buffers.reward import RewardBuffer

BUFFERS: dict[str, type[ReplayBuffer]] = {
    "uniform": ReplayBuffer,
    "reward": RewardBuffer,
    "rank": RankBuffer,
    "per": RankBuffer,
}


def build_buffer(name: str, capacity: int, dim: int, device: str | torch.device = "cpu", **kw) -> ReplayBuffer | None:
    """The buffer called ``name`` (a key of :data:`BUFFERS`), or ``None`` for ``"none"``.

    Args:
        name: ``"none"``, ``"uniform"``, ``"reward"``, ``"rank"`` or ``"per"``.
        capacity: maximum number of stored entries.
        dim: state dimension d.
        device: where the storage lives.
        **kw: ``eviction`` and the priority's own options (``beta`` for reward, ``k`` for rank).

    Returns:
        The buffer, or ``None`` when ``name == "none"``.

    Raises:
        ValueError: for an unknown name or a bad option (the message names the ``buffer.*`` key).
    """
    if name == "none":
        return None
    if name not in BUFFERS:
        raise ValueError(f"buffer.name must be one of {['none', *BUFFERS]} (got {name!r})")
    cls = BUFFERS[name]
    allowed = [p for p in inspect.signature(cls).parameters if p not in ("capacity", "dim", "device")]
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise ValueError(f"buffer.{unknown[0]} does not apply to buffer={name} (its options: {', '.join(allowed)})")
    return cls(capacity, dim, device=device, **kw)


__all__ = ["BUFFERS", "EVICTIONS", "RankBuffer", "ReplayBuffer", "RewardBuffer", "build_buffer"]
