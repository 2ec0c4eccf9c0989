"""Training: the shared loop (torchrun/DDP, checkpoints, logging) and one trainer per stage."""
