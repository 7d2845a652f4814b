"""Producer-side tooling: encode events as framed Avro, publish them, sample streams."""
