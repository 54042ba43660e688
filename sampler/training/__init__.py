"""Training: the LightningModule, the run function ``train(cfg)``, config checks and checkpointing."""

from sampler.training.resolvers import register_resolvers

register_resolvers()
