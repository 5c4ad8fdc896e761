"""Streams: faust-streaming apps publishing conversation change streams."""

__all__: list[str] = []
