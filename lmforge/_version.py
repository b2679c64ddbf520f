"""The package version, in a leaf module: importing it loads nothing else (not torch, not the trainer)."""
__version__ = "0.1.0"
