"""ckptcore.testing: the adapter conformance kit (see docs/adapters.md)."""
