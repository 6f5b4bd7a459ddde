"""Operating the service: installing the servers, the local stack, the bucket's bootstrap, and the
Docker and Kubernetes files."""
