"""The trainer of the extended CycleGAN: options, networks, losses, the optimisation step, data loader, checkpoints, export. Above engine and synth."""
