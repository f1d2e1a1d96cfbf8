"""The training system: config checks, data pipeline, pmapped steps, the epoch loop, checkpoints, eval and predict."""
