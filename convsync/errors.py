"""The project's root error and its two families: retryable and poison."""

from __future__ import annotations


class ConvsyncError(Exception):
    """Root of every error convsync raises on purpose."""


class RetryableError(ConvsyncError):
    """A failure that may succeed later: connection lost, timeout, throttling."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ThrottledError(RetryableError):
    """The remote side asked us to slow down; ``retry_after`` is in seconds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, retry_after=retry_after)


class PoisonError(ConvsyncError):
    """Bad data that will never succeed; it belongs in the dead-letter topic."""


class ConfigError(ConvsyncError):
    """A setting is missing or malformed."""


class StackError(ConvsyncError):
    """The local Kafka/Postgres stack could not be started, reached or stopped."""


class ConsumerFatalError(RetryableError):
    """librdkafka reported a fatal consumer error (for example a static group member
    fenced by another with its ``group.instance.id``, which is also where a session
    timeout on a starved machine can lead): this consumer can never be used again, but
    a new one can rejoin the group. The crawler and materializer commands do that."""
