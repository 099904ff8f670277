"""scaling: measure how batch size, learning-rate rules and device count change time-to-accuracy."""

__version__ = "0.1.0"
