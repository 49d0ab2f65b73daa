"""`python -m server`: serve with settings from the environment."""

from __future__ import annotations

import asyncio

from core.config import settings_or_exit
from server.app import configure_logging, serve


def main() -> None:
    settings = settings_or_exit()
    configure_logging(settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
