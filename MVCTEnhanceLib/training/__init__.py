"""The trainer of the extended CycleGAN. Above engine and synth; imports nothing from study or the CLI.

options (every option, once; torch-free), networks, losses, features (phi), cyclegan (the networks as
trained, image pools, the optimisation step, lr schedule), data (the training loader), runfolder (run
folder files, checkpoints, config.json), trainer (loop, resume, DDP, signals), curves (loss and sample
figures), export (run -> model file), tinymodel (untrained test generators).
"""
