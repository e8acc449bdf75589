"""Upkeep across the stores: garbage collection of the CAS against every index and the action
cache.  Above the stores it reads (cas/, vdir/, cache/), so those never import upwards."""
