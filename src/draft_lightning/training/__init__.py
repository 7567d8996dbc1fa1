"""Lightning plug-ins: callbacks, monitoring, checkpoint IO, RNG states and SLURM."""
