"""The public surface is exactly `__all__`; everything behind it lives in private modules."""

from __future__ import annotations

import pkgutil

import cnnserve.client


def test_all_lists_every_public_name_and_only_those() -> None:
    public = {name for name in dir(cnnserve.client) if not name.startswith("_")}
    assert public == set(cnnserve.client.__all__)


def test_every_exported_name_exists_and_is_sorted() -> None:
    for name in cnnserve.client.__all__:
        assert hasattr(cnnserve.client, name), name
    assert list(cnnserve.client.__all__) == sorted(cnnserve.client.__all__)


def test_every_module_of_the_package_is_private() -> None:
    modules = [module.name for module in pkgutil.iter_modules(cnnserve.client.__path__)]
    assert modules, "the package has modules"
    assert all(name.startswith("_") for name in modules), modules
