"""Replay buffers of terminal states (config group ``buffer``, docs/spec.md §5).

``ReplayBuffer`` samples stored entries uniformly, ``RewardBuffer`` ∝ exp(β·key), ``RankBuffer`` ∝ 1/(k·N + rank),
``PERBuffer`` is a ``RankBuffer`` keyed by the adaptive teacher's reward instead of log r. A config option names
its class (``conf/buffer/rank.yaml``: ``_target_: sampler.buffers.RankBuffer``); a new buffer is a subclass of
``ReplayBuffer`` (usually overriding ``_compute_weights``) and one YAML file.
"""

from sampler.buffers.base import EVICTIONS, ReplayBuffer
from sampler.buffers.rank import PERBuffer, RankBuffer
from sampler.buffers.reward import RewardBuffer

__all__ = ["EVICTIONS", "PERBuffer", "RankBuffer", "ReplayBuffer", "RewardBuffer"]
