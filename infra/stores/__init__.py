"""The Redis and MinIO adapters: task records, the event queue, objects, and every Redis key name."""
