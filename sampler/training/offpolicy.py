"""Off-policy machinery of a training run (docs/spec.md §5–§7): the replay buffer that forward steps fill, the local
search that refines buffer samples, and where backward steps take their terminal states from.

All state is tensors (buffers, MALA step size, the PER threshold), saved in the checkpoint by the module.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from sampler.buffers import RankBuffer, ReplayBuffer, build_buffer
from sampler.gfn.trajectories import Trajectories
from sampler.local_search import MALA
from sampler.teacher import initial_threshold, student_delta, teacher_reward

THRESHOLD_SAMPLES = 500  # student samples whose 0.9-quantile of log r is the PER/teacher threshold (docs/spec.md §7)


class OffPolicy:
    """Buffer, local search and backward-state source of one run.

    Args:
        cfg: the run config (``buffer``, ``local_search``, ``train.backward_source``, ``train.batch_size``).
        dim: state dimension.
    """

    def __init__(self, cfg: DictConfig, dim: int, store_forward: str = "always"):
        b = {k: v for k, v in cfg.buffer.items() if k not in ("name", "capacity")}
        self.buffer_name = cfg.buffer.name
        self.buffer: ReplayBuffer | None = (
            build_buffer(cfg.buffer.name, int(cfg.buffer.capacity), dim, **b) if cfg.buffer.name != "none" else None
        )
        ls = cfg.local_search
        self.mala: MALA | None = None
        self.ls_buffer: RankBuffer | None = None
        if ls.name == "mala":
            self.mala = MALA(
                int(ls.n_steps),
                int(ls.burn_in),
                float(ls.step_size),
                float(ls.target_accept),
                bool(ls.adapt),
                int(ls.every),
            )
            self.ls_buffer = RankBuffer(int(ls.capacity), dim, k=float(ls.k))
        self.source = cfg.train.backward_source
        self.batch_size = int(cfg.train.batch_size)
        self.threshold: torch.Tensor | None = None  # PER/teacher key threshold, set at the first forward step
        self.store_forward = store_forward  # "always", or "first" (teacher runs: only the first batch seeds it)
        self.stored_batches = 0
        self.quantile = float(cfg.teacher.get("quantile", 0.9))

    def ensure_threshold(self, gfn, generator: torch.Generator) -> float:
        """The log-reward threshold of R_T: the quantile of log r over 500 initial student samples (docs/spec.md §7)."""
        if self.threshold is None:
            with torch.no_grad():
                probe = gfn.rollout_forward(THRESHOLD_SAMPLES, generator=generator)
            self.threshold = torch.tensor(initial_threshold(probe.log_reward, self.quantile), dtype=torch.float64)
        return float(self.threshold)

    # ------------------------------------------------------------------------------------------------- filling
    def store(self, traj: Trajectories, gfn, generator: torch.Generator) -> None:
        """Add a forward batch's terminal states to the buffer, keyed by log r (or by R_T for ``buffer=per``)."""
        if self.buffer is None or (self.store_forward == "first" and self.stored_batches > 0):
            return
        x = traj.terminal_states.detach()
        if self.buffer_name == "per":
            threshold = self.ensure_threshold(gfn, generator)
            key = teacher_reward(student_delta(traj).detach(), traj.log_reward.detach(), threshold)
        else:
            key = traj.log_reward.detach()
        self.buffer.add(x, key)
        self.stored_batches += 1

    # ---------------------------------------------------------------------------------------------- backward
    def terminals(self, n: int, step: int, energy, generator: torch.Generator) -> torch.Tensor:
        """``n`` terminal states for a backward step, from ``train.backward_source``."""
        if self.source == "exact":
            return energy.sample(n, generator=generator)
        if self.buffer is None or len(self.buffer) == 0:
            raise RuntimeError(
                f"train.backward_source={self.source} at step {step}: the replay buffer is empty "
                "(backward steps need a forward step first; use train.phases=both_ways)"
            )
        if self.source == "buffer":
            return self.buffer.sample(n, generator)[0]
        if len(self.ls_buffer) == 0 or step % self.mala.every < 2:
            start, _ = self.buffer.sample(self.batch_size, generator)
            x, log_r = self.mala.run(start, energy, generator)
            if len(x):
                self.ls_buffer.add(x, log_r)
            if len(self.ls_buffer) == 0:
                raise RuntimeError(f"local search at step {step} accepted no proposal (η={self.mala.step_size:.3g})")
        return self.ls_buffer.sample(n, generator)[0]

    # ------------------------------------------------------------------------------------------------- state
    def to(self, device) -> OffPolicy:
        for buf in (self.buffer, self.ls_buffer):
            if buf is not None:
                buf.to(device)
        return self

    def stats(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.buffer is not None:
            s = self.buffer.stats()
            out["buffer_size"] = s["size"]
            if "ess" in s:
                out["buffer_ess"] = s["ess"]
        if self.mala is not None:
            out.update({f"ls_{k}": v for k, v in self.mala.stats().items()})
            out["ls_buffer_size"] = float(len(self.ls_buffer))
        return out

    def state_dict(self) -> dict:
        state: dict = {}
        if self.buffer is not None:
            state["buffer"] = self.buffer.state_dict()
        if self.mala is not None:
            state["mala"] = self.mala.state_dict()
            state["ls_buffer"] = self.ls_buffer.state_dict()
        if self.threshold is not None:
            state["threshold"] = self.threshold
        state["stored_batches"] = torch.tensor(self.stored_batches)
        return state

    def load_state_dict(self, state: dict) -> None:
        if self.buffer is not None and "buffer" in state:
            self.buffer.load_state_dict(state["buffer"])
        if self.mala is not None and "mala" in state:
            self.mala.load_state_dict(state["mala"])
            self.ls_buffer.load_state_dict(state["ls_buffer"])
        self.threshold = state.get("threshold")
        self.stored_batches = int(state.get("stored_batches", torch.tensor(0)))
