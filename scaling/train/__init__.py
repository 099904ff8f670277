"""Training one run: the optimizer step, the loop, evaluation, the clock, the exact step at the target and
checkpoints."""
