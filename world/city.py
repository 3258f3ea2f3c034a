"""A city is the same world with names: regions are its districts, each cut into
neighbourhoods, each holding buildings. Laid out from the region's bounds alone, so every
server that ever owns a region computes the same buildings (claims are persisted apart).

Topic of a building: `world/{world}/city/{district}/{neighbourhood}/{building}` (retained).
"""

from __future__ import annotations

from world.payloads import Bounds, Building, RegionInfo

__all__ = ["building_key", "city_layout", "find_building"]

NEIGHBOURHOODS = (
    (0, 0, "north-west"),
    (1, 0, "north-east"),
    (0, 1, "south-west"),
    (1, 1, "south-east"),
)
BUILDINGS_PER_NEIGHBOURHOOD = 3


def building_key(building: Building) -> str:
    return f"{building.district}/{building.neighbourhood}/{building.building}"


def city_layout(region: RegionInfo) -> list[Building]:
    """The buildings of one region (a city district): 4 neighbourhoods of 3 buildings."""
    b = region.bounds
    w = (b.x1 - b.x0) / 2
    h = (b.y1 - b.y0) / 2
    buildings = []
    for col, row, name in NEIGHBOURHOODS:
        nx0 = b.x0 + col * w
        ny0 = b.y0 + row * h
        for i in range(BUILDINGS_PER_NEIGHBOURHOOD):
            # a row of lots across the middle of the neighbourhood, a fifth of its size each
            x0 = nx0 + w * (0.1 + 0.3 * i)
            y0 = ny0 + h * 0.4
            buildings.append(
                Building(
                    district=region.id,
                    neighbourhood=name,
                    building=f"b{i + 1}",
                    bounds=Bounds(x0=x0, y0=y0, x1=x0 + w * 0.2, y1=y0 + h * 0.2),
                )
            )
    return buildings


def find_building(
    buildings: list[Building], x: float, y: float, reach: float = 0.0
) -> Building | None:
    """The building at (x, y), or within `reach` of its walls."""
    for building in buildings:
        bb = building.bounds
        if bb.x0 - reach <= x <= bb.x1 + reach and bb.y0 - reach <= y <= bb.y1 + reach:
            return building
    return None
