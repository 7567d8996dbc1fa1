"""`make experiments`: the paper's findings, reproduced (or not) on the toy world with this
project's own code. See docs/experiments.md, which run_all.py writes."""
