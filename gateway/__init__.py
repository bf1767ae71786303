"""Cross-border carbon credit interoperability gateway."""

__version__ = "0.1.0"
