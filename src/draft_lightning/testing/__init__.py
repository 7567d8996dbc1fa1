"""Tiny stand-in models built offline through the same save/load code as real checkpoints."""
