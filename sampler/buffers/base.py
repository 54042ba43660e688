"""The replay buffer of terminal states (config group ``buffer``, docs/spec.md §5), with uniform priorities.

Storage is preallocated: states ``[capacity, d]``, keys ``[capacity]`` (log-reward or another priority key) and
insertion ids ``[capacity]``; the stored entries always occupy slots ``[0, len)``. Every ``sample`` call draws
fresh indices from the current weights, so an entry added just before is eligible at once. Subclasses change
only :meth:`ReplayBuffer._compute_weights` (see ``reward.py`` and ``rank.py``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

EVICTIONS = ("fifo", "lowest")


class ReplayBuffer:
    """Fixed-capacity buffer of terminal states ``x`` with priority keys, sampled uniformly.

    Args:
        capacity: maximum number of stored entries.
        dim: dimension d of the states.
        eviction: ``"fifo"`` overwrites the oldest entries when full; ``"lowest"`` replaces the entries with the
            lowest keys (on equal keys the older entry stays), so a new entry lower than everything stored is dropped.
        device: where the storage lives; ``sample`` needs a generator on the same device.
    """

    prioritised: bool = False
    #: what a training run stores as the key of a forward step's terminal states: ``"log_reward"`` (log r), or
    #: ``"teacher_reward"`` (R_T of the student's TB error, see :class:`sampler.buffers.PERBuffer`)
    keyed_by: str = "log_reward"

    def __init__(self, capacity: int, dim: int, eviction: str = "fifo", device: str | torch.device = "cpu"):
        capacity = _positive_int(capacity, "buffer.capacity")
        dim = _positive_int(dim, "buffer dim (the energy's dim)")
        if eviction not in EVICTIONS:
            raise ValueError(f"buffer.eviction must be one of {list(EVICTIONS)} (got {eviction!r})")
        self.capacity, self.dim, self.eviction = capacity, dim, eviction
        device = torch.device(device)
        self._x = torch.zeros(capacity, dim, device=device)  # [C, d]
        self._key = torch.zeros(capacity, device=device)  # [C]
        self._id = torch.zeros(capacity, dtype=torch.long, device=device)  # [C] insertion id of each slot
        self._size = 0  # entries stored, in slots [0, size)
        self._next_id = 0  # insertion id of the next entry offered; FIFO writes slot next_id % capacity
        self._weights: Tensor | None = None  # cache of weights(), dropped on every change

    # ------------------------------------------------------------------------------------------------ storing
    def add(self, x: Tensor, key: Tensor) -> int:
        """Store states with their keys.

        Args:
            x: states, shape ``[n, d]``.
            key: priority keys (log-reward, loss, ...), shape ``[n]``; all must be finite.

        Returns:
            How many of the ``n`` new entries are in the buffer after the call (fewer than ``n`` when ``n`` exceeds
            the capacity, or when ``eviction="lowest"`` drops entries below everything stored).

        Raises:
            ValueError: on wrong shapes or non-finite keys/states (the buffer is left unchanged).
        """
        x = x.detach().to(self._x.device, self._x.dtype)
        key = key.detach().to(self._key.device, self._key.dtype)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"buffer.add expects states of shape [n, {self.dim}] (got {list(x.shape)})")
        if key.shape != (x.shape[0],):
            raise ValueError(f"buffer.add expects keys of shape [{x.shape[0]}] (got {list(key.shape)})")
        n = x.shape[0]
        bad_key = int((~torch.isfinite(key)).sum())
        if bad_key:
            raise ValueError(f"buffer.add: {bad_key} of {n} keys are non-finite; replay-buffer keys must be finite")
        bad_x = int((~torch.isfinite(x).all(dim=1)).sum())
        if bad_x:
            raise ValueError(f"buffer.add: {bad_x} of {n} states are non-finite")
        if n == 0:
            return 0
        ids = torch.arange(self._next_id, self._next_id + n, device=self._id.device)  # [n]
        self._next_id += n
        self._weights = None
        if self.eviction == "fifo":
            return self._add_fifo(x, key, ids)
        return self._add_lowest(x, key, ids)

    def _add_fifo(self, x: Tensor, key: Tensor, ids: Tensor) -> int:
        keep = min(x.shape[0], self.capacity)  # earlier entries of an oversized batch would be overwritten anyway
        x, key, ids = x[-keep:], key[-keep:], ids[-keep:]
        slots = ids % self.capacity
        self._x[slots], self._key[slots], self._id[slots] = x, key, ids
        self._size = min(self._size + keep, self.capacity)
        return keep

    def _add_lowest(self, x: Tensor, key: Tensor, ids: Tensor) -> int:
        first_id = int(ids[0])
        free = self.capacity - self._size
        n_fill = min(free, x.shape[0])
        if n_fill:
            slots = torch.arange(self._size, self._size + n_fill, device=self._x.device)
            self._x[slots], self._key[slots], self._id[slots] = x[:n_fill], key[:n_fill], ids[:n_fill]
            self._size += n_fill
        x, key, ids = x[n_fill:], key[n_fill:], ids[n_fill:]
        m = x.shape[0]
        if m == 0:
            return n_fill
        # Only the m lowest stored entries can lose their slot; take every entry tied with the m-th lowest too,
        # so the tie-break below (higher key, then older) is exact.
        threshold = torch.kthvalue(self._key, min(m, self.capacity)).values
        slots = torch.nonzero(self._key <= threshold).squeeze(1)  # [c], c >= min(m, C)
        pool_x = torch.cat([self._x[slots], x])
        pool_key = torch.cat([self._key[slots], key])
        pool_id = torch.cat([self._id[slots], ids])
        best = best_first_order(pool_key, pool_id)[: slots.numel()]
        self._x[slots], self._key[slots], self._id[slots] = pool_x[best], pool_key[best], pool_id[best]
        return int((self._id >= first_id).sum())  # new entries kept (some filled above may just have lost out)

    # ----------------------------------------------------------------------------------------------- sampling
    def weights(self) -> Tensor:
        """Unnormalised sampling weights of the stored entries, shape ``[len]`` (float64)."""
        if self._weights is None:
            self._weights = self._compute_weights()
        return self._weights

    def _compute_weights(self) -> Tensor:
        return torch.ones(self._size, dtype=torch.float64, device=self._key.device)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``n`` entries with replacement, with probability proportional to the current weights.

        Args:
            n: number of draws.
            generator: the only source of randomness (on the buffer's device); ``None`` uses the global RNG.

        Returns:
            (states ``[n, d]``, keys ``[n]``), copies of the stored entries.

        Raises:
            RuntimeError: when the buffer is empty.
        """
        if self._size == 0:
            raise RuntimeError(f"cannot sample {n} entries from an empty {type(self).__name__}; add() entries first")
        idx = torch.multinomial(self.weights(), n, replacement=True, generator=generator)  # [n]
        return self._x[idx], self._key[idx]

    def __len__(self) -> int:
        return self._size

    def stats(self) -> dict[str, float]:
        """Size and key summary (``size``, ``key_mean``, ``key_max``, ``key_min``; ``ess`` for prioritised buffers).

        ``ess`` = (Σw)² / Σw², the effective number of entries the weights draw from (1 ≤ ess ≤ size).
        """
        out = {"size": float(self._size)}
        keys = self._key[: self._size]
        empty = self._size == 0
        out["key_mean"] = math.nan if empty else float(keys.mean())
        out["key_max"] = math.nan if empty else float(keys.max())
        out["key_min"] = math.nan if empty else float(keys.min())
        if self.prioritised:
            w = self.weights()
            out["ess"] = math.nan if empty else float(w.sum() ** 2 / w.pow(2).sum())
        return out

    # ------------------------------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Tensor]:
        """The full state as tensors (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "x": self._x.clone(),
            "key": self._key.clone(),
            "id": self._id.clone(),
            "size": torch.tensor(self._size),
            "next_id": torch.tensor(self._next_id),
            "fifo": torch.tensor(self.eviction == "fifo"),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` exactly (entries, insertion order, FIFO position).

        Raises:
            ValueError: when the state's capacity, dim or eviction differs from this buffer's.
        """
        if tuple(state["x"].shape) != (self.capacity, self.dim):
            raise ValueError(
                f"buffer state holds [capacity, dim] = {list(state['x'].shape)}, but this buffer has"
                f" [{self.capacity}, {self.dim}]; set buffer.capacity to match the checkpoint"
            )
        if "fifo" in state and bool(state["fifo"]) != (self.eviction == "fifo"):
            saved = "fifo" if bool(state["fifo"]) else "lowest"
            raise ValueError(f"buffer state was saved with buffer.eviction={saved}, this buffer has {self.eviction}")
        dev = self._x.device
        self._x = state["x"].to(dev, self._x.dtype).clone()
        self._key = state["key"].to(dev, self._key.dtype).clone()
        self._id = state["id"].to(dev, torch.long).clone()
        self._size = int(state["size"])
        self._next_id = int(state["next_id"])
        self._weights = None

    def to(self, device: str | torch.device) -> ReplayBuffer:
        """Move the storage to ``device``; returns ``self``."""
        self._x, self._key, self._id = self._x.to(device), self._key.to(device), self._id.to(device)
        self._weights = None
        return self

    def insertion_order(self) -> Tensor:
        """Slots of the stored entries from oldest to newest, shape ``[len]``."""
        if self.eviction == "fifo":  # slot i holds id ≡ i (mod C): a rotation, no sort needed
            start = self._next_id % self.capacity if self._size == self.capacity else 0
            return torch.arange(self._size, device=self._id.device).roll(-start)
        return torch.argsort(self._id[: self._size])

    def best_first(self) -> Tensor:
        """Slots of the stored entries by key descending, equal keys oldest first, shape ``[len]``."""
        by_age = self.insertion_order()
        return by_age[torch.argsort(self._key[by_age], descending=True, stable=True)]

    @property
    def device(self) -> torch.device:
        return self._x.device

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self._size}, capacity={self.capacity}, eviction={self.eviction!r})"


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__") or value.__index__() <= 0:
        raise ValueError(f"{name} must be a positive integer (got {value!r})")
    return value.__index__()


def best_first_order(key: Tensor, ids: Tensor) -> Tensor:
    """Permutation sorting entries by key descending, ties by insertion id ascending (older first)."""
    by_id = torch.argsort(ids, stable=True)
    return by_id[torch.argsort(key[by_id], descending=True, stable=True)]
