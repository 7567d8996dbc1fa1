"""A toy world small enough to reproduce DRaFT's findings on a CPU.

32x32 images of one coloured shape on a plain background, captioned with their attributes
(world.py); a CNN that reads the attributes back (classifier.py) and rewards built on it
(rewards.py); and `python -m draft_lightning.toy.pretrain` (`make toy`), which pretrains a
tiny text-to-image model of SD 1.x's architecture on the world and saves it as a diffusers
folder that `model.pretrained_model` loads like SD 1.4.
"""
