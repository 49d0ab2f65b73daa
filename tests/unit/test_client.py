"""The blocking and the asyncio client mirror each other: the same operations, the same parameters."""

from __future__ import annotations

import inspect

from client.client import AsyncClient, Client


def operations(cls: type) -> dict[str, list[tuple[str, object]]]:
    return {
        name: [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]
        for name, fn in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def test_sync_and_async_clients_offer_the_same_operations() -> None:
    sync, asynchronous = operations(Client), operations(AsyncClient)
    assert set(sync) == set(asynchronous)
    assert sync == asynchronous  # same names, order and defaults of parameters
    assert {"upload", "put_asset", "get_asset", "watch", "find_or_create_bundle", "download_bundle"} <= set(sync)


def test_async_operations_are_awaitable_or_async_iterators() -> None:
    for name, fn in inspect.getmembers(AsyncClient, inspect.isfunction):
        if name.startswith("_") or name == "close":
            continue
        assert inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn), name
