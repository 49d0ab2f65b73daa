"""Python client and the `derivatives` CLI. Knows only the generated stubs."""
