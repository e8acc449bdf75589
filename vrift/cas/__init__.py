"""The content-addressed blob store shared by all projects of a user (SPEC §4.2)."""
from .store import CAS, CASError, StoreResult, hash_bytes, hash_file, parse_digest

__all__ = ["CAS", "CASError", "StoreResult", "hash_bytes", "hash_file", "parse_digest"]
