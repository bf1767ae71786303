"""Controlled vocabularies and patterns shared by the adapters, each defined once."""

from __future__ import annotations

import re

from gateway.domain.records import PARTY_CODES as PARTY_CODES  # the Party codes, kept with the domain's records
from gateway.domain.text import AEF_LIST_SEPARATOR

NOMENCLATURE_UNDERLYING_REGISTRIES = frozenset(
    {"VCS", "GS", "CAR", "ACR", "ART", "GCC", "Cercarbono", "Isometric", "ISFL", "FCPF", "T-VER", "JCM"}
)
"""Underlying unit registry IDs in the AEF nomenclature. CCER and CEA have none: see `MappingContext`."""

BUILT_IN_UNDERLYING_CODES: dict[str, str] = {"VCS": "VCS", "GS": "GS", "CAR": "CAR"}
"""Nomenclature code of the issuing registries whose grammars are built in and which the nomenclature lists."""

COOPERATIVE_APPROACH = re.compile(r"CA[0-9]{4}")
PARTY_REGISTRY = re.compile(r"[A-Z]{3}[0-9]{2}")
SUBMISSION_VERSION = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")
CCER_METHODOLOGY = re.compile(r"CCER-[0-9]{2}-[0-9]{3}-V[0-9]{2}")
CCER_PROJECT_TYPE = re.compile(r"[A-Z][0-9]{4}")
LIST_SEPARATOR = AEF_LIST_SEPARATOR
"""How multi-valued AEF cells (sectors, activity types, Parties, entities) join their values."""
