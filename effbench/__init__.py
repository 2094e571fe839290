"""effbench: which attention should a Vision Transformer use? Measured, not guessed."""

__version__ = "0.1.0"
