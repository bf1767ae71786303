"""Controlled vocabularies and patterns shared by the adapters, each defined once."""

from __future__ import annotations

import re

from gateway.domain.text import AEF_LIST_SEPARATOR

PARTY_CODES = frozenset(
    """
    AFG ALA ALB DZA ASM AND AGO AIA ATA ATG ARG ARM ABW AUS AUT AZE BHS BHR BGD BRB BLR BEL BLZ BEN BMU BTN
    BOL BES BIH BWA BVT BRA IOT BRN BGR BFA BDI CPV KHM CMR CAN CYM CAF TCD CHL CHN CXR CCK COL COM COG COD
    COK CRI CIV HRV CUB CUW CYP CZE DNK DJI DMA DOM ECU EGY SLV GNQ ERI EST SWZ ETH FLK FRO FJI FIN FRA GUF
    PYF ATF GAB GMB GEO DEU GHA GIB GRC GRL GRD GLP GUM GTM GGY GIN GNB GUY HTI HMD VAT HND HKG HUN ISL IND
    IDN IRN IRQ IRL IMN ISR ITA JAM JPN JEY JOR KAZ KEN KIR PRK KOR KWT KGZ LAO LVA LBN LSO LBR LBY LIE LTU
    LUX MAC MDG MWI MYS MDV MLI MLT MHL MTQ MRT MUS MYT MEX FSM MDA MCO MNG MNE MSR MAR MOZ MMR NAM NRU NPL
    NLD NCL NZL NIC NER NGA NIU NFK MKD MNP NOR OMN PAK PLW PSE PAN PNG PRY PER PHL PCN POL PRT PRI QAT REU
    ROU RUS RWA BLM SHN KNA LCA MAF SPM VCT WSM SMR STP SAU SEN SRB SYC SLE SGP SXM SVK SVN SLB SOM ZAF SGS
    SSD ESP LKA SDN SUR SJM SWE CHE SYR TWN TJK TZA THA TLS TGO TKL TON TTO TUN TUR TKM TCA TUV UGA UKR ARE
    GBR USA UMI URY UZB VUT VEN VNM VGB VIR WLF ESH YEM ZMB ZWE
    """.split()  # noqa: SIM905
)
"""ISO 3166-1 alpha-3 codes, the Party codes of the AEF (DESIGN.md section 2)."""

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
