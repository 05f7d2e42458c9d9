"""Unit normaliser: quantities of fuel and energy to canonical units.

Canonical units: litres (``L``) for liquids, cubic metres (``m3``) for gases,
kilograms (``kg``) for solids, kilowatt-hours (``kWh``) for energy.
"""

from __future__ import annotations

from typing import Final

from pydantic import BaseModel, Field

from agents.contract import Agent, RunContext

__all__ = ["UnitNormaliser", "normalise"]

US_GALLON_L: Final = 3.785411784
IMPERIAL_GALLON_L: Final = 4.54609
CUBIC_FOOT_M3: Final = 0.028316846592

# unit -> (canonical unit, factor to canonical)
CONVERSIONS: Final[dict[str, tuple[str, float]]] = {
    "l": ("L", 1.0),
    "litre": ("L", 1.0),
    "liter": ("L", 1.0),
    "ml": ("L", 0.001),
    "m3_liquid": ("L", 1000.0),
    "gal": ("L", US_GALLON_L),
    "gal_us": ("L", US_GALLON_L),
    "gal_uk": ("L", IMPERIAL_GALLON_L),
    "m3": ("m3", 1.0),
    "scf": ("m3", CUBIC_FOOT_M3),
    "ft3": ("m3", CUBIC_FOOT_M3),
    "kg": ("kg", 1.0),
    "t": ("kg", 1000.0),
    "tonne": ("kg", 1000.0),
    "lb": ("kg", 0.45359237),
    "kwh": ("kWh", 1.0),
    "mwh": ("kWh", 1000.0),
    "gwh": ("kWh", 1_000_000.0),
    "gj": ("kWh", 1000.0 / 3.6),
    "mj": ("kWh", 1.0 / 3.6),
}


class UnknownUnit(ValueError):
    pass


def normalise(quantity: float, unit: str) -> tuple[float, str]:
    """``(quantity in canonical unit, canonical unit)``; raises :class:`UnknownUnit`."""
    try:
        canonical, factor = CONVERSIONS[unit.strip().lower()]
    except KeyError:
        known = ", ".join(sorted(CONVERSIONS))
        raise UnknownUnit(f"unknown unit {unit!r}; known units: {known}") from None
    return quantity * factor, canonical


class NormaliseInput(BaseModel):
    quantity: float = Field(ge=0, description="Amount in `unit`")
    unit: str = Field(min_length=1, max_length=16, examples=["gal", "MWh", "scf"])


class NormaliseOutput(BaseModel):
    quantity: float
    unit: str
    original_quantity: float
    original_unit: str


class UnitNormaliser(Agent[NormaliseInput, NormaliseOutput]):
    key = "unit-normaliser"
    description = "Converts fuel and energy quantities to canonical units (L, m3, kg, kWh)"
    Input = NormaliseInput
    Output = NormaliseOutput

    async def run(self, input: NormaliseInput, ctx: RunContext) -> NormaliseOutput:
        quantity, unit = normalise(input.quantity, input.unit)
        return NormaliseOutput(
            quantity=quantity, unit=unit, original_quantity=input.quantity, original_unit=input.unit
        )
