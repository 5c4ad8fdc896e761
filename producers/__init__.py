"""Producers: the webhook gateway and the backfill crawler, publishing to Kafka."""

__all__: list[str] = []
