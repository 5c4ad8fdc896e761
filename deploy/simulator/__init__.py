"""Fakes of Meta for tests and the demo: the Graph API server and the webhook sender."""

__all__: list[str] = []
