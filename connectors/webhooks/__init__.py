"""Webhooks: Matrix rooms fed by HTTP (Slack-compatible payloads, a plain JSON form,
Prometheus Alertmanager) and, optionally, feeding a URL with the room's messages."""

from .connector import WebhooksConnector

__all__ = ["WebhooksConnector"]
