"""The command-line application around the core: what ``scripts/*.py`` check before any heavy import or before Hydra
starts — typed ``key=value`` arguments (:mod:`.cli`), that a ``train.py`` command line composes
(:mod:`.composition`) and that its ``launcher=`` can run here (:mod:`.launchers`). Nothing in the core imports it."""
