"""The gradient noise scale: estimators (pure), the monitor that measures it in the loop, and the fits of
steps and samples against the batch size."""
