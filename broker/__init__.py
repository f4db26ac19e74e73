"""The broker: routes messages between actors by name and fans telemetry out."""

from broker.service import Broker, BrokerStats

__all__ = ["Broker", "BrokerStats"]
