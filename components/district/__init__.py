"""District servers: spatial shards of a world that own, step and hand off its entities."""

from components.district.component import DistrictServer
from components.district.handoff import HandoffLedger, Outbound
from components.district.model import District, Journal, StepOutcome
from components.district.settings import DistrictSettings
from components.district.store import DistrictStore

__all__ = [
    "District",
    "DistrictServer",
    "DistrictSettings",
    "DistrictStore",
    "HandoffLedger",
    "Journal",
    "Outbound",
    "StepOutcome",
]
