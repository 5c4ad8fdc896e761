"""The media archiver: attachment bytes copied off Meta's CDN before their URLs expire."""

from __future__ import annotations

from consumers.archiver.discovery import DEFAULT_GROUP
from consumers.archiver.engine import Archiver, Totals
from consumers.archiver.settings import META_CDN_HOSTS, ArchiverSettings

__all__ = ["DEFAULT_GROUP", "META_CDN_HOSTS", "Archiver", "ArchiverSettings", "Totals"]
