"""The backfill crawler: Graph API pages -> envelopes in Kafka, resumable crawl steps."""

from producers.crawler.config import CrawlerSettings
from producers.crawler.process import run_worker
from producers.crawler.request import new_request, submit
from producers.crawler.worker import CrawlWorker

__all__ = ["CrawlWorker", "CrawlerSettings", "new_request", "run_worker", "submit"]
