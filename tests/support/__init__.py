"""Helpers and fixtures shared by the tests (imported as `support.<name>`)."""
