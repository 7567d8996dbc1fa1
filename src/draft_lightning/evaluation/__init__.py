"""Evaluation: generating for fixed prompts and seeds, scoring, diversity, image grids."""
