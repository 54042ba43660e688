"""Energy-based models learned from data (plain PyTorch; the command-line task is in ``config`` and ``module``).

* :mod:`sampler.ebm.data` — toy 2-D sets, scikit-learn's digits, a user's own data (:class:`EBMData`);
* :mod:`sampler.ebm.nets` — energy networks and :class:`EBMEnergy`, the current E_θ as a sampler target;
* :mod:`sampler.ebm.langevin` — the batched Langevin chain;
* :mod:`sampler.ebm.learning` — the contrastive loss, PCD/CD and GFN negatives, :class:`EBMRecipe`;
* :mod:`sampler.ebm.generate` — sampling a trained model (from noise, the buffer, annealed);
* :mod:`sampler.ebm.evaluation` — quadrature NLL, KL, AIS log Z, MMD, the KDE and classifier baselines;
* :mod:`sampler.ebm.plots` — landscapes, digit grids, chains over time;
* :mod:`sampler.ebm.config` and :mod:`sampler.ebm.module` — ``task=ebm`` of ``scripts/train.py``: the config's checks
  and the LightningModule (these import Hydra and Lightning).

``evaluation`` and ``plots`` import scikit-learn, POT and matplotlib; import them from their modules.
"""

from sampler.ebm.data import (
    DATA_SETS,
    ArrayData,
    DigitsData,
    EBMData,
    ToyData,
    check_data,
    load_array_data,
    make_data,
    toy_data,
)
from sampler.ebm.generate import generate, temperature_schedule
from sampler.ebm.langevin import ChainStats, langevin
from sampler.ebm.learning import (
    ChainBuffer,
    EBMRecipe,
    EnergyMonitor,
    GFNNegatives,
    LangevinNegatives,
    NonFiniteEBMLossError,
    contrastive_loss,
)
from sampler.ebm.nets import CNNEnergy, EBMEnergy, MLPEnergy

__all__ = [
    "DATA_SETS",
    "ArrayData",
    "CNNEnergy",
    "ChainBuffer",
    "ChainStats",
    "DigitsData",
    "EBMData",
    "EBMEnergy",
    "EBMRecipe",
    "EnergyMonitor",
    "GFNNegatives",
    "LangevinNegatives",
    "MLPEnergy",
    "NonFiniteEBMLossError",
    "ToyData",
    "check_data",
    "contrastive_loss",
    "generate",
    "langevin",
    "load_array_data",
    "make_data",
    "temperature_schedule",
    "toy_data",
]
