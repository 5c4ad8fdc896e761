"""Consumers: the Postgres materializer and other plain confluent-kafka consumers."""

__all__: list[str] = []
