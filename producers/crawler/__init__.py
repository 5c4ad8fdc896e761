"""The backfill crawler: Graph API pages -> envelopes in Kafka, resumable crawl steps."""

__all__: list[str] = []
