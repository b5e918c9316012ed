"""msgspec models of the supported APIs, each with its own status table."""
