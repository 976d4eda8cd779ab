"""Hooks for tests, in every process of a test's server (this folder goes first on its PYTHONPATH:
tests/servers.py, `with_process_hooks`). Each is off unless its variable is set.

CNNSERVE_TEST_CATALOG_FAULT=FILE: the first front-end to receive a catalog from the engine after FILE appears
fails to take it in, as a bug in the front-end would make it: that one process removes the file (removal is
atomic, so exactly one wins), and the front-ends started later take in every catalog. A front-end cannot
otherwise be made to fail there from outside: it takes in what the engine, running the same code, has served.
"""

import os


def _after_import(name, patch):
    """Run `patch(module)` once the process itself imports module `name`: importing it here, at start-up, would
    import what it imports (prometheus_client) before the supervisor has set the metrics folder."""
    import importlib.abc
    import importlib.machinery
    import sys

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != name:
                return None
            sys.meta_path.remove(self)
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is not None and spec.loader is not None:
                execute = spec.loader.exec_module

                def exec_module(module):
                    execute(module)
                    patch(module)

                spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Finder())


_catalog_fault = os.environ.get("CNNSERVE_TEST_CATALOG_FAULT")
if _catalog_fault:

    def _fail_a_catalog_once(engine_client):
        take_in = engine_client.RemoteRepository._apply

        def apply_unless_triggered(self, catalog):
            try:
                os.unlink(_catalog_fault)
            except FileNotFoundError:
                return take_in(self, catalog)
            raise RuntimeError("a catalog this front-end cannot take in (the test's fault)")

        engine_client.RemoteRepository._apply = apply_unless_triggered

    _after_import("cnnserve.server.engine_client", _fail_a_catalog_once)
