"""The webhook gateway: Meta Messenger webhooks -> signed, durable envelopes in Kafka."""

__all__: list[str] = []
