"""N devices: the cost of synchronizing gradients (model, presets, measurement) and `scaling predict`."""
