"""cnnserve: a gRPC model server for CNN image classifiers.

The distribution holds three import packages beside this root: `cnnserve.server` (the service), `cnnserve.export`
(training and ONNX export, needs the ``train`` extra) and `cnnserve.client` (the application library).

This folder is the package root only: the `cnnserve` command (`cli`), the contracts that export writes and the
server reads, each defined once (`metadata`: what an exported model says about itself; `preprocessing`: the
reference formula from pixels to model input; `repository_layout`: folders, file name and versions), and the
generated protocol modules under `cnnserve.v1` and `cnnserve.inference`. The benchmark is not here: it is a tool of
the source checkout (`load_tests/bench`).
"""

__version__ = "0.1.0"
