"""vrift: build accelerator and content-addressed build cache for make and ninja."""

__version__ = "0.1.0"
