"""Models: where a checkpoint comes from, its family (families/), the loaded pipeline, LoRA."""
