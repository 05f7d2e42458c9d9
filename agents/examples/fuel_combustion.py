"""Scope 1: emissions of burning fuel in owned equipment."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from agents.contract import Agent, RunContext
from agents.examples.factors import FUELS
from agents.examples.units import CONVERSIONS, normalise

__all__ = ["FuelCombustion"]


class FuelInput(BaseModel):
    fuel: str = Field(description="Fuel type", examples=sorted(FUELS))
    quantity: float = Field(ge=0, le=1e12, description="Amount burnt, in `unit`")
    unit: str = Field(description="Unit of `quantity`", examples=["L", "gal", "m3", "scf"])

    @field_validator("fuel")
    @classmethod
    def _known_fuel(cls, v: str) -> str:
        key = v.strip().lower().replace(" ", "_")
        if key not in FUELS:
            raise ValueError(f"unknown fuel {v!r}; known fuels: {', '.join(sorted(FUELS))}")
        return key

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, v: str) -> str:
        if v.strip().lower() not in CONVERSIONS:
            raise ValueError(f"unknown unit {v!r}; known units: {', '.join(sorted(CONVERSIONS))}")
        return v


class FuelOutput(BaseModel):
    co2e_kg: float = Field(description="Emissions in kg CO2-equivalent")
    co2_kg: float
    scope: int = 1
    fuel: str
    quantity: float
    unit: str
    emission_factor_kg_co2e_per_unit: float
    factor_unit: str
    factor_source: str


class FuelCombustion(Agent[FuelInput, FuelOutput]):
    key = "fuel-combustion"
    description = "Scope 1 emissions of stationary fuel combustion (US EPA factors)"
    Input = FuelInput
    Output = FuelOutput

    async def run(self, input: FuelInput, ctx: RunContext) -> FuelOutput:
        factor = FUELS[input.fuel]
        quantity, unit = normalise(input.quantity, input.unit)
        if unit != factor.unit:
            raise ValueError(f"{input.fuel} is measured by volume in {factor.unit}, not {unit}")
        return FuelOutput(
            co2e_kg=round(quantity * factor.kg_co2e, 6),
            co2_kg=round(quantity * factor.kg_co2, 6),
            fuel=input.fuel,
            quantity=input.quantity,
            unit=input.unit,
            emission_factor_kg_co2e_per_unit=round(factor.kg_co2e, 6),
            factor_unit=factor.unit,
            factor_source=factor.source,
        )
