"""Training: fit loop, batch modes, callbacks, metrics, checkpoints, data and model builders."""
