"""Shared domain core: configuration, Postgres, object storage, the job queue.

Nothing in here knows about gRPC: the server maps these types onto the wire, and
worker hosts use them without it.
"""
