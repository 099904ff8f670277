"""Studies: specs, the sweep runner and SLURM scripts."""
