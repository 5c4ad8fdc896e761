"""The local stack (Kafka from Maven Central jars, Postgres) and deployment files."""

from deploy.stack import StackInfo, down, load_info, up

__all__ = ["StackInfo", "down", "load_info", "up"]
