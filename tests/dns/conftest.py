"""Fixtures for the DNS tests (the helpers live in dns_world.py so test modules can import them)."""

from dns_world import start

__all__ = ["start"]
