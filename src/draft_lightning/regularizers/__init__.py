"""Regularisers added to the reward loss (DRaFT+), one file each."""
