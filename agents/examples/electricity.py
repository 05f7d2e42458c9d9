"""Scope 2 (location-based): emissions of purchased electricity."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from agents.contract import Agent, RunContext
from agents.examples.factors import GRIDS
from agents.examples.units import normalise

__all__ = ["PurchasedElectricity"]


class ElectricityInput(BaseModel):
    region: str = Field(description="Grid region (ISO country code)", examples=sorted(GRIDS))
    quantity: float = Field(ge=0, le=1e12)
    unit: str = Field(default="kWh", examples=["kWh", "MWh", "GJ"])

    @field_validator("region")
    @classmethod
    def _known_region(cls, v: str) -> str:
        key = v.strip().upper()
        if key not in GRIDS:
            raise ValueError(f"unknown region {v!r}; known regions: {', '.join(sorted(GRIDS))}")
        return key

    @field_validator("unit")
    @classmethod
    def _energy_unit(cls, v: str) -> str:
        if v.strip().lower() not in {"kwh", "mwh", "gwh", "gj", "mj"}:
            raise ValueError(f"unit {v!r} is not an energy unit (kWh, MWh, GWh, GJ, MJ)")
        return v


class ElectricityOutput(BaseModel):
    co2e_kg: float
    scope: int = 2
    method: str = "location-based"
    region: str
    kwh: float
    emission_factor_kg_co2e_per_kwh: float
    factor_year: int
    factor_source: str


class PurchasedElectricity(Agent[ElectricityInput, ElectricityOutput]):
    key = "purchased-electricity"
    description = "Scope 2 location-based emissions of purchased electricity"
    Input = ElectricityInput
    Output = ElectricityOutput

    async def run(self, input: ElectricityInput, ctx: RunContext) -> ElectricityOutput:
        grid = GRIDS[input.region]
        kwh, _ = normalise(input.quantity, input.unit)
        return ElectricityOutput(
            co2e_kg=round(kwh * grid.kg_co2e_per_kwh, 6),
            region=grid.region,
            kwh=kwh,
            emission_factor_kg_co2e_per_kwh=grid.kg_co2e_per_kwh,
            factor_year=grid.year,
            factor_source=grid.source,
        )
