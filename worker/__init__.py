"""Background work: the job runner, the process pool and the CPU tasks it runs.

Knows core (Postgres, storage, the queue) and vips/PDF/ZIP; never gRPC. Runs inside
the server process or as a standalone worker host (`python -m worker`).
"""
