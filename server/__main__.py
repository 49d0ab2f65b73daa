"""`python -m server`: serve with settings from the environment."""

from __future__ import annotations

import asyncio
import sys

from core.config import load_settings
from server.app import configure_logging, serve


def main() -> None:
    try:
        settings = load_settings()
    except (ValueError, OSError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
