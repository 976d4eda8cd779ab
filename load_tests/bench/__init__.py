"""`cnnserve bench`: how close the server comes to bare ONNX Runtime on this machine.

A serving system is judged by throughput at a latency bound, and its limit is what the runtime alone does at its
best batch size. This package measures both side by side (bare ONNX Runtime per batch size; the server with
batching off and on over a sweep of closed-loop callers from several load-generator processes) and reports
requests/s, images/s, latency percentiles, the server's average batch size and everyone's CPU use.

Importing this package stays light (the `cnnserve` command imports `_cli` for every subcommand): the work is
in `runner.run_benchmark`, the settings in `settings.BenchSettings`, the files in `report.write_reports`.
"""
