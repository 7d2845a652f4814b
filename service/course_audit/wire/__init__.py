"""The message format both sides share: framing, the schema catalog, the registry client."""
