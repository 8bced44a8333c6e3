"""Layer 7: running experiments -- the config and the builders from config to objects, one
training loop (run directory, checkpoints and exact resume, metrics, progress, time limit,
torchrun), one evaluation protocol, plots and ``load``. Import the modules you need
(``mamlkit.run.loop``, ``mamlkit.run.evaluate``, ...); this package imports none of them."""
