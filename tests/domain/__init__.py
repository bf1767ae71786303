"""Tests of the pure domain core (gateway.domain)."""
