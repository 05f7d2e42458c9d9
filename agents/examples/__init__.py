"""Example climate-accounting agents: the demo and the test fleet."""

from agents.examples.electricity import PurchasedElectricity
from agents.examples.fuel_combustion import FuelCombustion
from agents.examples.noop import NoOp
from agents.examples.units import UnitNormaliser

__all__ = ["FuelCombustion", "NoOp", "PurchasedElectricity", "UnitNormaliser"]
