"""Learning an energy-based model from data: the contrastive loss, PCD/CD negatives from Langevin chains or from a
diffusion GFN trained on the current energy, and :class:`EBMRecipe`, one optimisation step of E_θ.

Like :class:`sampler.recipe.Recipe`, everything is built from plain objects and all randomness comes from the
``generator`` passed to :meth:`EBMRecipe.step`; the recipe's own state (the chain buffer, the GFN sampler and its
optimiser, counters) is in :meth:`EBMRecipe.state_dict`. With E_θ's parameters, its optimiser and the generator's
state saved beside it, a resumed run is bit-identical to an uninterrupted one on CPU. Persistent contrastive
divergence on two moons with the EBM guide's settings (Tieleman 2008; Du & Mordatch 2019)::

    data = toy_data("moons")
    net = MLPEnergy(2)
    recipe = EBMRecipe(net, LangevinNegatives(buffer=ChainBuffer(8192, 2, 0.05, data.bounds)), data.train)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for step in range(2000):
        stats = recipe.step(step, opt, generator=gen)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import nn

from sampler.ebm.langevin import check_chain_settings, langevin
from sampler.ebm.nets import EBMEnergy
from sampler.energies.base import counting_energy_calls
from sampler.recipe import NonFiniteLossError, Recipe

log = logging.getLogger(__name__)

#: The EBM guide's chain and buffer settings.
N_STEPS, STEP_SIZE, NOISE_SCALE = 60, 0.01, 0.005
CAPACITY, REINIT_PROB, ALPHA = 8192, 0.05, 0.01


class NonFiniteEBMLossError(NonFiniteLossError):
    """The EBM's contrastive loss is NaN/inf (its energies diverged): θ is not updated."""


def contrastive_loss(e_pos: torch.Tensor, e_neg: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """The PCD objective ``mean E(x⁺) − mean E(x⁻) + α·(mean E(x⁺)² + mean E(x⁻)²)``.

    Its gradient lowers the energy of data and raises that of the sampler's negatives (the maximum-likelihood
    gradient when the negatives are model samples); the α term keeps the energies near 0.

    Args:
        e_pos: energies of data points ``[B]``.
        e_neg: energies of negatives ``[B']``.
        alpha: weight of the energy regulariser.

    Returns:
        The scalar loss.
    """
    return e_pos.mean() - e_neg.mean() + alpha * (e_pos.pow(2).mean() + e_neg.pow(2).mean())


# ---------------------------------------------------------------------------------------------------- buffer
class ChainBuffer:
    """The persistent chains of PCD: ``capacity`` states, each restarted from uniform noise on the data box with
    probability ``reinit_prob`` when drawn.

    Chains are drawn without replacement (a batch never holds one chain twice, so writing them back is
    unambiguous), and every draw consumes the same random numbers whatever is restarted. The buffer is filled with
    noise at the first draw, from the generator of that draw.

    Args:
        capacity: number of chains.
        dim: state dimension d.
        reinit_prob: probability that a drawn chain restarts from noise, in [0, 1].
        bounds: ``(lo, hi)``: noise is uniform on [lo, hi]^d.
        data_reinit: share of the restarts that start at a data point of the batch instead of noise (0: the EBM
            guide). Chains rarely cross between modes, so the share of chains in each mode follows the restarts;
            restarting some at data points keeps those shares near the data's mode weights.
    """

    def __init__(self, capacity: int = CAPACITY, dim: int = 2, reinit_prob: float = REINIT_PROB,
                 bounds: tuple[float, float] = (-1.0, 1.0), data_reinit: float = 0.0):  # fmt: skip
        if int(capacity) < 1:
            raise ValueError(f"buffer capacity must be ≥ 1 (got {capacity})")
        if not 0.0 <= float(reinit_prob) <= 1.0:
            raise ValueError(f"reinit_prob must be in [0, 1] (got {reinit_prob})")
        if not 0.0 <= float(data_reinit) <= 1.0:
            raise ValueError(f"data_reinit must be in [0, 1] (got {data_reinit})")
        if not float(bounds[0]) < float(bounds[1]):
            raise ValueError(f"buffer bounds must be (lo, hi) with lo < hi (got {bounds})")
        self.capacity, self.dim, self.reinit_prob = int(capacity), int(dim), float(reinit_prob)
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self.data_reinit = float(data_reinit)
        self.states = torch.zeros(self.capacity, self.dim)
        self.age = torch.zeros(self.capacity, dtype=torch.long)  # chain updates since the last restart
        self.filled = False
        self.last_reinit = 0.0

    def noise(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """``n`` uniform points on the box ``[n, d]``."""
        lo, hi = self.bounds
        u = torch.rand(n, self.dim, generator=generator, device=self.states.device)
        return lo + (hi - lo) * u

    def draw(
        self, n: int, generator: torch.Generator | None, data: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` distinct chains, restarting each with probability ``reinit_prob``.

        Args:
            n: number of chains.
            generator: the source of the choices and the noise.
            data: the data batch ``[n, d]`` restarts may start at (with ``data_reinit > 0``).

        Returns:
            ``(states [n, d], their indices [n])``.
        """
        if n > self.capacity:
            raise ValueError(f"cannot draw {n} chains from a buffer of capacity {self.capacity}")
        if not self.filled:
            self.states = self.noise(self.capacity, generator)
            self.filled = True
        idx = torch.randperm(self.capacity, generator=generator, device=self.states.device)[:n]
        restart = torch.rand(n, generator=generator, device=self.states.device) < self.reinit_prob
        fresh = self.noise(n, generator)
        if self.data_reinit > 0 and data is not None:
            at_data = torch.rand(n, generator=generator, device=fresh.device) < self.data_reinit
            fresh = torch.where(at_data[:, None], data[:n].to(fresh), fresh)
        x = torch.where(restart[:, None], fresh, self.states[idx])
        self.age[idx[restart]] = 0
        self.last_reinit = float(restart.float().mean())
        return x, idx

    def update(self, idx: torch.Tensor, x: torch.Tensor) -> None:
        """Write the advanced chains back."""
        self.states[idx] = x.detach().to(self.states.dtype)
        self.age[idx] += 1

    def stats(self) -> dict[str, float]:
        """``buffer_size``, ``buffer_mean_age`` (updates since restart), ``buffer_max_age``, ``buffer_reinit`` (share
        restarted at the last draw), ``buffer_spread`` (mean per-dimension std of the states)."""
        return {
            "buffer_size": float(self.capacity),
            "buffer_mean_age": float(self.age.float().mean()),
            "buffer_max_age": float(self.age.max()),
            "buffer_reinit": self.last_reinit,
            "buffer_spread": float(self.states.std(0).mean()) if self.filled else 0.0,
        }

    def to(self, device) -> ChainBuffer:
        """Move the chains to ``device``; returns ``self``."""
        self.states, self.age = self.states.to(device), self.age.to(device)
        return self

    def state_dict(self) -> dict:
        """Tensors only."""
        return {"states": self.states, "age": self.age, "filled": torch.tensor(self.filled),
                "last_reinit": torch.tensor(self.last_reinit)}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (a buffer of another shape is an error naming both shapes)."""
        states = state["states"]
        if tuple(states.shape) != (self.capacity, self.dim):
            raise ValueError(
                f"checkpointed chain buffer has shape {tuple(states.shape)}, this one ({self.capacity}, {self.dim})"
            )
        self.states = states.clone().to(self.states.device)
        self.age = state["age"].clone().to(self.age.device)
        self.filled = bool(state["filled"])
        self.last_reinit = float(state.get("last_reinit", torch.tensor(0.0)))


# ------------------------------------------------------------------------------------------------ negatives
class LangevinNegatives:
    """Negatives by Langevin chains on E_θ: from the chain buffer (PCD) or, without one, from the data batch
    (contrastive divergence, CD-k).

    Args:
        n_steps, step_size, noise_scale: the chain's length, η and σ (:func:`sampler.ebm.langevin.langevin`).
        buffer: the persistent chains, or ``None`` for CD.
        grad_clip: clip each chain's gradient to this norm, or ``None``.
        clamp: keep the states in this box (image data), or ``None``.
        metropolis: accept/reject each step (MALA).
    """

    kind = "langevin"

    def __init__(
        self,
        n_steps: int = N_STEPS,
        step_size: float = STEP_SIZE,
        noise_scale: float = NOISE_SCALE,
        buffer: ChainBuffer | None = None,
        grad_clip: float | None = None,
        clamp: tuple[float, float] | None = None,
        metropolis: bool = False,
    ):
        check_chain_settings(n_steps, step_size, noise_scale, grad_clip)
        self.n_steps, self.step_size, self.noise_scale = int(n_steps), float(step_size), float(noise_scale)
        self.buffer, self.grad_clip, self.clamp, self.metropolis = buffer, grad_clip, clamp, bool(metropolis)
        self.n_energy_calls = 0

    def sample(self, energy: EBMEnergy, x_pos: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Negatives ``[B, d]`` for the data batch ``x_pos [B, d]``, and the chain's stats."""
        if self.buffer is not None:
            x0, idx = self.buffer.draw(x_pos.shape[0], generator, x_pos)
        else:
            x0, idx = x_pos, None
        x, cs, _ = langevin(
            energy, x0, self.n_steps, self.step_size, self.noise_scale, generator,
            grad_clip=self.grad_clip, clamp=self.clamp, metropolis=self.metropolis,
        )  # fmt: skip
        if idx is not None:
            self.buffer.update(idx, x)
        self.n_energy_calls += cs.n_energy_calls
        stats = {"chain_accept": cs.acceptance, "chain_step_norm": cs.step_norm, "chain_grad_norm": cs.grad_norm,
                 "chain_clipped": cs.clipped}  # fmt: skip
        if self.buffer is not None:
            stats.update(self.buffer.stats())
        return x, stats

    def to(self, device) -> LangevinNegatives:
        if self.buffer is not None:
            self.buffer.to(device)
        return self

    def state_dict(self) -> dict:
        state = {"n_energy_calls": torch.tensor(self.n_energy_calls)}
        if self.buffer is not None:
            state["buffer"] = self.buffer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.n_energy_calls = int(state.get("n_energy_calls", torch.tensor(0)))
        if self.buffer is not None and "buffer" in state:
            self.buffer.load_state_dict(state["buffer"])


class GFNNegatives:
    """Negatives drawn by a diffusion GFN trained alongside the EBM on the log-reward −E_θ(x).

    Before each EBM step the GFN takes ``steps_per_ebm_step`` steps of its own :class:`~sampler.recipe.Recipe`
    (any of the platform's losses, exploration, replay and local search) on the current energy with its own
    optimiser; then ``gfn.rollout_forward`` draws the negatives (on-policy, no exploration).

    Args:
        recipe: the GFN's recipe; ``recipe.gfn.energy`` must be the :class:`EBMEnergy` of the network being learned.
        optimizer: the GFN's optimiser (``torch.optim.Adam(param_groups(gfn, ...))``).
        steps_per_ebm_step: GFN steps per EBM step (≥ 1).

    Raises:
        ValueError: a GFN whose target is not an :class:`EBMEnergy`, or backward steps that need exact samples
            of the target (the learned energy has none: use a replay buffer or the local search).
    """

    kind = "gfn"

    def __init__(self, recipe: Recipe, optimizer: torch.optim.Optimizer, steps_per_ebm_step: int = 5):
        if int(steps_per_ebm_step) < 1:
            raise ValueError(f"steps_per_ebm_step must be ≥ 1 (got {steps_per_ebm_step})")
        if not isinstance(recipe.gfn.energy, EBMEnergy) or recipe.energy is not recipe.gfn.energy:
            raise ValueError("the GFN negative sampler must target the EBM: build its DiffusionGFN on EBMEnergy(net)")
        backward = any(recipe.phases(k) != "forward" for k in range(4))
        if backward and recipe.offpolicy.source == "exact":
            raise ValueError(
                "the learned energy has no exact sampler: GFN backward steps need backward_source=buffer or "
                "local_search (with a replay buffer), or phases=forward"
            )
        self.recipe, self.optimizer, self.steps_per_ebm_step = recipe, optimizer, int(steps_per_ebm_step)
        self.gfn = recipe.gfn
        self.gfn_steps = 0
        self.n_energy_calls = 0

    def sample(self, energy: EBMEnergy, x_pos: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Train the GFN ``steps_per_ebm_step`` steps on the current energy, then draw ``B`` negatives ``[B, d]``."""
        if energy is not self.gfn.energy:
            raise ValueError("GFNNegatives.sample got another energy than the one its GFN targets")
        before = energy.n_energy_calls
        with counting_energy_calls(energy):
            for _ in range(self.steps_per_ebm_step):
                gstats = self.recipe.step(self.gfn_steps, self.optimizer, generator=generator)
                self.gfn_steps += 1
            with torch.no_grad():
                traj = self.gfn.rollout_forward(x_pos.shape[0], generator=generator)
        self.n_energy_calls += energy.n_energy_calls - before
        stats = {"gfn_loss": float(gstats["loss"]), "gfn_steps": float(self.gfn_steps)}
        if "log_Z" in gstats:
            stats["gfn_log_Z"] = float(gstats["log_Z"])
        return traj.terminal_states.detach(), stats

    def to(self, device) -> GFNNegatives:
        self.gfn.to(device)
        self.recipe.to(device)
        return self

    def state_dict(self) -> dict:
        """The GFN's parameters, its optimiser, its recipe's state and the counters."""
        return {
            "gfn": self.gfn.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "recipe": self.recipe.state_dict(),
            "gfn_steps": torch.tensor(self.gfn_steps),
            "n_energy_calls": torch.tensor(self.n_energy_calls),
        }

    def load_state_dict(self, state: dict) -> None:
        self.gfn.load_state_dict(state["gfn"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.recipe.load_state_dict(state["recipe"])
        self.gfn_steps = int(state["gfn_steps"])
        self.n_energy_calls = int(state["n_energy_calls"])


# ----------------------------------------------------------------------------------------------- monitoring
class EnergyMonitor:
    """One-line warnings, at most one per kind every ``every`` steps: a negative energy gap (negatives scoring
    lower energy than data: the sampler is not keeping up) and energies beyond ``limit`` in magnitude.

    Args:
        every: the fewest steps between two warnings of the same kind.
        limit: the largest |E| that is not called an explosion.
    """

    def __init__(self, every: int = 500, limit: float = 1e4):
        self.every, self.limit = int(every), float(limit)
        self.last: dict[str, int] = {}
        self.counts: dict[str, int] = {}

    def _warn(self, kind: str, step: int, message: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if step - self.last.get(kind, -(10**12)) >= self.every:
            n = self.counts[kind]
            log.warning("%s (%d step%s since the last warning)", message, n, "" if n == 1 else "s")
            self.last[kind], self.counts[kind] = step, 0

    def check(self, step: int, e_pos: torch.Tensor, e_neg: torch.Tensor) -> None:
        """Warn about the energies of one step (``e_pos [B]``, ``e_neg [B']``)."""
        gap = float(e_neg.mean() - e_pos.mean())
        if gap < 0:
            self._warn("gap", step, f"step {step}: energy gap E(fake) − E(real) = {gap:.3g} < 0")
        worst = float(torch.cat([e_pos.abs().max()[None], e_neg.abs().max()[None]]).max())
        if worst > self.limit:
            self._warn("explode", step, f"step {step}: |energy| reached {worst:.3g} > {self.limit:.3g}")

    def state_dict(self) -> dict:
        return {"last": {k: torch.tensor(v) for k, v in self.last.items()},
                "counts": {k: torch.tensor(v) for k, v in self.counts.items()}}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.last = {k: int(v) for k, v in state.get("last", {}).items()}
        self.counts = {k: int(v) for k, v in state.get("counts", {}).items()}


# ---------------------------------------------------------------------------------------------------- recipe
class EBMRecipe:
    """One optimisation step of an energy network: data batch → negatives → contrastive loss → update.

    Args:
        net: the energy network ``[B, d] -> [B]``.
        negatives: :class:`LangevinNegatives` (PCD or CD) or :class:`GFNNegatives`.
        data: the training points ``[N, d]`` batches are drawn from (or pass ``batch=`` to :meth:`step`).
        alpha: weight of the energy regulariser of :func:`contrastive_loss`.
        batch_size: data points (and negatives) per step.
        grad_clip: max global gradient norm of θ's update, or ``None``.
        energy: the :class:`EBMEnergy` of ``net`` the samplers use (default: built here; a GFN sampler's must be
            passed, as the GFN holds it).
        bounds: the data box, for the energy built here.
        monitor: the warnings (default :class:`EnergyMonitor`).
    """

    def __init__(
        self,
        net: nn.Module,
        negatives: LangevinNegatives | GFNNegatives,
        data: torch.Tensor | None = None,
        *,
        alpha: float = ALPHA,
        batch_size: int = 256,
        grad_clip: float | None = None,
        energy: EBMEnergy | None = None,
        bounds: tuple[float, float] = (-5.0, 5.0),
        monitor: EnergyMonitor | None = None,
    ):
        if isinstance(negatives, GFNNegatives):
            energy = negatives.gfn.energy if energy is None else energy
            if energy is not negatives.gfn.energy:
                raise ValueError("energy= must be the EBMEnergy the GFN negative sampler targets")
        self.energy = energy if energy is not None else EBMEnergy(net, bounds=bounds)
        if self.energy.net is not net:
            raise ValueError("energy= wraps another network than net=")
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be ≥ 0 (got {alpha})")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be ≥ 1 (got {batch_size})")
        self.net, self.negatives, self.data = net, negatives, data
        self.alpha, self.batch_size = float(alpha), int(batch_size)
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.monitor = monitor if monitor is not None else EnergyMonitor()

    @property
    def n_energy_calls(self) -> int:
        """Energy evaluations (points) the negative sampler has made so far."""
        return self.negatives.n_energy_calls

    def step(
        self,
        step: int,
        optimizer: torch.optim.Optimizer,
        *,
        generator: torch.Generator,
        batch: torch.Tensor | None = None,
        backward: Callable[[torch.Tensor], None] | None = None,
    ) -> dict[str, float]:
        """One update of θ at ``step``.

        Args:
            step: the step number (for the warnings).
            optimizer: θ's optimiser.
            generator: the source of all randomness (the data batch, the chains, the GFN).
            batch: data points ``[B, d]`` to use instead of a batch drawn from ``data``.
            backward: how to back-propagate the loss (default ``loss.backward()``).

        Returns:
            ``loss``, ``energy_real``, ``energy_fake``, ``energy_gap`` (fake − real), ``reg``, ``grad_norm``,
            ``n_energy_calls`` (the sampler's, cumulative) and ``n_energy_calls_<kind>``, the sampler's stats
            (``chain_*`` and ``buffer_*`` for Langevin, ``gfn_*`` for the GFN).

        Raises:
            NonFiniteEBMLossError: a NaN/inf loss (θ is not updated).
        """
        if batch is None:
            if self.data is None:
                raise ValueError("EBMRecipe.step needs batch=... or a recipe built with data=...")
            idx = torch.randint(0, self.data.shape[0], (self.batch_size,), generator=generator,
                                device=self.data.device)  # fmt: skip
            batch = self.data[idx]
        x_pos = batch.detach()
        x_neg, sstats = self.negatives.sample(self.energy, x_pos, generator)
        self.net.train()
        e = self.net(torch.cat([x_pos, x_neg.detach()]))
        e_pos, e_neg = e[: x_pos.shape[0]], e[x_pos.shape[0] :]
        loss = contrastive_loss(e_pos, e_neg, self.alpha)
        if not torch.isfinite(loss):
            n_bad = int((~torch.isfinite(e)).sum())
            raise NonFiniteEBMLossError(
                f"non-finite EBM loss at step {step}: {n_bad} of {e.numel()} energies are NaN/inf "
                "(lower the learning rate, raise alpha or turn on spectral_norm)"
            )
        optimizer.zero_grad(set_to_none=True)
        (backward or torch.Tensor.backward)(loss)
        grad_norm = None
        if self.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip)
        optimizer.step()
        e_pos, e_neg = e_pos.detach(), e_neg.detach()
        self.monitor.check(step, e_pos, e_neg)
        stats = {
            "loss": float(loss.detach()),
            "energy_real": float(e_pos.mean()),
            "energy_fake": float(e_neg.mean()),
            "energy_gap": float(e_neg.mean() - e_pos.mean()),
            "reg": float(e_pos.pow(2).mean() + e_neg.pow(2).mean()),
            "n_energy_calls": float(self.n_energy_calls),
            f"n_energy_calls_{self.negatives.kind}": float(self.n_energy_calls),
        }
        if grad_norm is not None:
            stats["grad_norm"] = float(grad_norm)
        stats.update(sstats)
        return stats

    def to(self, device) -> EBMRecipe:
        """Move the data and the sampler's state to ``device`` (the network moves with its module)."""
        if self.data is not None:
            self.data = self.data.to(device)
        self.negatives.to(device)
        return self

    def state_dict(self) -> dict:
        """``{"negatives", "monitor"}``, tensors only (``torch.load(weights_only=True)``)."""
        return {"negatives": self.negatives.state_dict(), "monitor": self.monitor.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.negatives.load_state_dict(state["negatives"])
        self.monitor.load_state_dict(state.get("monitor", {}))
