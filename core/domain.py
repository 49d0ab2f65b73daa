"""The domain, built in one place from settings: what every role of a host works with."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from core import metrics
from core.assets import Assets
from core.bundles import Bundles, StoredInputs
from core.config import Settings
from core.database import Database
from core.definitions import Registry
from core.derivatives import Derivatives
from core.progress import ProgressHub
from core.queue import PostgresQueue
from core.reclaim import Reclaimer
from core.storage import ObjectStorage, UrlSigner, open_storage
from core.works import Works


@dataclass
class Domain:
    settings: Settings
    db: Database
    storage: ObjectStorage
    registry: Registry
    queue: PostgresQueue
    assets: Assets
    works: Works
    derivatives: Derivatives
    bundles: Bundles
    hub: ProgressHub
    urls: UrlSigner
    reclaimer: Reclaimer
    # Stop this process's sampling of the Postgres pool and RSS for the metrics (core/metrics.py).
    stop_sampling: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def buckets(self) -> tuple[str, ...]:
        """Every bucket the service writes: the configured three and any a definition names."""
        return tuple(dict.fromkeys(self.settings.buckets + self.registry.buckets()))

    async def close(self) -> None:
        for stop in self.stop_sampling:
            stop()
        await self.db.close()


async def open_domain(settings: Settings, registry: Registry, database_url: str, name: str) -> Domain:
    """Connect to Postgres (migrating it), open storage and wire every domain object.

    `registry` is loaded by the caller before anything starts, so a bad definitions file
    stops start-up early; `name` is the Postgres application_name of this process.
    """
    db = Database(database_url, max_size=settings.db_pool_size, name=name)
    await db.open()
    try:
        await db.migrate()
    except BaseException:
        await db.close()
        raise
    storage = open_storage(settings)
    queue = PostgresQueue(db, settings.job_lease_seconds, settings.max_jobs_per_principal)
    stored_inputs = StoredInputs(db, registry, settings)
    domain = Domain(
        settings=settings,
        db=db,
        storage=storage,
        registry=registry,
        queue=queue,
        assets=Assets(db, storage, settings, registry, queue, stored_inputs),
        works=Works(db, stored_inputs),
        derivatives=Derivatives(db, storage, queue, settings.bucket_derivatives),
        bundles=Bundles(db, storage, settings, registry, queue, stored_inputs),
        hub=ProgressHub(db, queue, settings.progress_heartbeat_seconds),
        urls=UrlSigner(storage, dt.timedelta(seconds=settings.url_expiry_seconds)),
        reclaimer=Reclaimer(db, storage, settings, registry.buckets()),
    )
    domain.stop_sampling = [metrics.sample_db_pool(db.pool), metrics.sample_rss(name)]
    return domain
