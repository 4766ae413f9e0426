"""Delivery: the durable outbox and the dispatcher that drains it."""

from hub.delivery.dispatcher import Claimed, Dispatcher, Sender
from hub.delivery.outbox import EMAIL, MATRIX, Outbox, OutboxStats

__all__ = ["EMAIL", "MATRIX", "Claimed", "Dispatcher", "Outbox", "OutboxStats", "Sender"]
