"""Baselines that DRaFT is compared with."""
