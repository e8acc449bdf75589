"""Plugin hooks of vrift: specifications in `spec`, the manager in `manager`, the marker here.

Importing this package does not import pluggy (see `markers`)."""
from .markers import PROJECT, hookimpl

__all__ = ["PROJECT", "hookimpl"]
