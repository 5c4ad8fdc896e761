"""Shared plumbing of convsync: settings, Kafka/Postgres client factories, the CLI."""

from convsync.errors import (
    ConfigError,
    ConvsyncError,
    PoisonError,
    RetryableError,
    StackError,
    ThrottledError,
)
from convsync.settings import Settings

__all__ = [
    "ConfigError",
    "ConvsyncError",
    "PoisonError",
    "RetryableError",
    "Settings",
    "StackError",
    "ThrottledError",
]
