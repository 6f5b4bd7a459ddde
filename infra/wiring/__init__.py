"""The settings, the clients built from them, and the one policy for transient faults."""
