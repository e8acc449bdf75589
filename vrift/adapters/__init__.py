"""Compatibility only: the old import path of `vrift.wrap.adapters`.

Third-party plugins written against earlier releases import `vrift.adapters.base.Adapter`;
that keeps working (docs/plugins.md).  Nothing in vrift imports this package."""
