"""A fault for tests, in every process of a test's server (this folder goes first on its PYTHONPATH).

With CNNSERVE_TEST_CATALOG_FAULT naming a file, the first front-end to receive a catalog from the engine after
that file appears fails to take it in, as a bug in the front-end would make it: the file is removed by that one
process (removal is atomic, so exactly one wins), and the front-ends started later take in every catalog. A
front-end cannot otherwise be made to fail there from outside: it takes in what the engine, running the same
code, has already served.
"""

import os

_trigger = os.environ.get("CNNSERVE_TEST_CATALOG_FAULT")
if _trigger:
    from cnnserve.server.engine_client import RemoteRepository

    _take_in = RemoteRepository._apply

    def _apply_unless_triggered(self, catalog):
        try:
            os.unlink(_trigger)
        except FileNotFoundError:
            return _take_in(self, catalog)
        raise RuntimeError("a catalog this front-end cannot take in (the test's fault)")

    RemoteRepository._apply = _apply_unless_triggered
