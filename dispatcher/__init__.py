"""The sidecar: ingest events durably, deliver them signed, retry, dead-letter. Never parses YAML itself."""
