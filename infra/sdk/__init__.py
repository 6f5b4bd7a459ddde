"""What a user of the service runs: the Python client and the `maskflow` command line."""
