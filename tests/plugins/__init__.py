"""Test-only components named by class_path from YAML/CLI runs (this folder goes on
PYTHONPATH of the subprocesses)."""
