"""Adapters: the adapter protocol, its entry-point registry, and one module per schema.

See `adapters.base` for the protocol, `adapters.registry` for discovery through the
``carbon_gateway.adapters`` entry-point group, and `adapters.mapping` for batch mapping between schemas.
"""
