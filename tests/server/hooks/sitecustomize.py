"""Hooks for tests, in every process of a test's server (this folder goes first on its PYTHONPATH:
tests/servers.py, `with_process_hooks`). Each is off unless its variable is set.

CNNSERVE_TEST_CATALOG_FAULT=FILE: the first front-end to receive a catalog from the engine after FILE appears
fails to take it in, as a bug in the front-end would make it: that one process removes the file (removal is
atomic, so exactly one wins), and the front-ends started later take in every catalog. A front-end cannot
otherwise be made to fail there from outside: it takes in what the engine, running the same code, has served.

CNNSERVE_TEST_GC_REPORT=FOLDER: on SIGUSR2 a process writes FOLDER/<pid>.json with its garbage collector's
thresholds and the number of objects it froze (server/heap.py).
"""

import os

_catalog_fault = os.environ.get("CNNSERVE_TEST_CATALOG_FAULT")
if _catalog_fault:
    from cnnserve.server.engine_client import RemoteRepository

    _take_in = RemoteRepository._apply

    def _apply_unless_triggered(self, catalog):
        try:
            os.unlink(_catalog_fault)
        except FileNotFoundError:
            return _take_in(self, catalog)
        raise RuntimeError("a catalog this front-end cannot take in (the test's fault)")

    RemoteRepository._apply = _apply_unless_triggered

_gc_report = os.environ.get("CNNSERVE_TEST_GC_REPORT")
if _gc_report:
    import gc
    import json
    import signal

    def _report_gc(*_):
        state = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}
        staging = os.path.join(_gc_report, f".{os.getpid()}.json")
        with open(staging, "w") as file:
            json.dump(state, file)
        os.replace(staging, os.path.join(_gc_report, f"{os.getpid()}.json"))

    signal.signal(signal.SIGUSR2, _report_gc)
