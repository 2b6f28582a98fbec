"""The SQL migrations, applied in the order of their numbers (fleetwave.store.migrate)."""
