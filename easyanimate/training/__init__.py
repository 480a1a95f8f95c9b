"""Training: the objective (losses, timesteps), one step, the loop, optimizer, checkpoints and signals."""
