"""Train a sampler: `python scripts/train.py [group=option ...] [key=value ...]` (see README.md)."""

import hydra
from omegaconf import DictConfig

import sampler.training  # noqa: F401  (registers the config resolvers)
from sampler.training.run import main


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> float | None:
    metrics = main(cfg)
    return metrics.get("dlogZ_rw")


if __name__ == "__main__":
    app()
