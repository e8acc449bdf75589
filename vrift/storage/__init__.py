"""Where blobs and action entries are kept: one interface (base.py), the local stores behind it
(local.py), remotes chosen by URL (redis.py, http.py; spec.py parses the URLs), and the tiers a
daemon reads through and writes behind (tiers.py).  docs/remote.md describes the remote side.

Nothing here is imported by `vrift wrap`'s start-up path: only the daemon builds tiers."""
