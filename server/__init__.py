"""The gRPC server: thin handlers that validate requests and delegate to core."""
