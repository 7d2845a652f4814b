"""Ingestion: Kafka -> decode -> validate -> the store, exactly once in effect."""
