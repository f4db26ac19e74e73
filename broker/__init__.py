"""The broker: routes messages between actors by name and fans telemetry out."""

from llmo.broker.service import Broker, BrokerStats

__all__ = ["Broker", "BrokerStats"]
