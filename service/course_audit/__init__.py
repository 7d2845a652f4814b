"""course-audit: Kafka -> PostgreSQL audit ingestion with a Canvas-compatible query API."""

__version__ = "0.1.0"
