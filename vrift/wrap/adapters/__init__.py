"""The built-in adapters (ninja, make, generic) and what an adapter is (`base.py`)."""
