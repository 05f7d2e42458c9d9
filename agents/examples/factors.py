"""Public emission factors used by the example agents, with their sources.

Fuel factors: US EPA, *GHG Emission Factors Hub* (2024), Table 1 "Stationary
Combustion" — kg CO2, g CH4 and g N2O per physical unit — combined with the
IPCC AR5 100-year GWPs the Hub uses (CH4 = 28, N2O = 265).

Grid factors (Scope 2, location-based), kg CO2e per kWh generated:
UK DESNZ *Greenhouse gas reporting: conversion factors 2024* (UK electricity);
US EPA *eGRID2022* national total output emission rate (823.1 lb CO2e/MWh);
Germany UBA *Entwicklung der spezifischen Treibhausgas-Emissionen des deutschen
Strommix* (2023, 380 g/kWh); France ADEME *Base Empreinte* (mix moyen, 0.052).
Check and update these yearly; the table is data, not code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agents.examples.units import US_GALLON_L

__all__ = ["FUELS", "GRIDS", "FuelFactor", "GridFactor"]

GWP_CH4: Final = 28.0
GWP_N2O: Final = 265.0
EPA_HUB: Final = "US EPA GHG Emission Factors Hub 2024, Table 1 (stationary combustion), AR5 GWP"


@dataclass(frozen=True, slots=True)
class FuelFactor:
    fuel: str
    unit: str  # canonical unit the factor is per (L, m3)
    kg_co2: float
    g_ch4: float
    g_n2o: float
    source: str = EPA_HUB

    @property
    def kg_co2e(self) -> float:
        return self.kg_co2 + (self.g_ch4 * GWP_CH4 + self.g_n2o * GWP_N2O) / 1000.0


def _per_litre(fuel: str, kg_co2_gal: float, g_ch4_gal: float, g_n2o_gal: float) -> FuelFactor:
    return FuelFactor(fuel, "L", kg_co2_gal / US_GALLON_L, g_ch4_gal / US_GALLON_L, g_n2o_gal / US_GALLON_L)


_SCF_PER_M3: Final = 1 / 0.028316846592

FUELS: Final[dict[str, FuelFactor]] = {
    "diesel": _per_litre("diesel", 10.21, 0.41, 0.08),  # distillate fuel oil No. 2
    "gasoline": _per_litre("gasoline", 8.78, 0.38, 0.08),  # motor gasoline
    "kerosene": _per_litre("kerosene", 10.15, 0.41, 0.08),
    "propane": _per_litre("propane", 5.72, 0.27, 0.05),
    "residual_fuel_oil": _per_litre("residual_fuel_oil", 11.27, 0.45, 0.09),  # No. 6
    "natural_gas": FuelFactor(
        "natural_gas", "m3", 0.05444 * _SCF_PER_M3, 0.00103 * _SCF_PER_M3, 0.00010 * _SCF_PER_M3
    ),
}
FUELS["petrol"] = FUELS["gasoline"]
FUELS["lpg"] = FUELS["propane"]


@dataclass(frozen=True, slots=True)
class GridFactor:
    region: str
    kg_co2e_per_kwh: float
    year: int
    source: str


GRIDS: Final[dict[str, GridFactor]] = {
    "GB": GridFactor("GB", 0.20705, 2024, "UK DESNZ GHG conversion factors 2024, UK electricity"),
    "US": GridFactor("US", 823.1 * 0.45359237 / 1000, 2022, "US EPA eGRID2022, US total output"),
    "DE": GridFactor("DE", 0.380, 2023, "Umweltbundesamt, Strommix 2023"),
    "FR": GridFactor("FR", 0.052, 2023, "ADEME Base Empreinte, electricity mix (average)"),
}
