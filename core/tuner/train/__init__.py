"""Training: the loop, adapters, timestep sampling and checkpoints."""
