"""cnnserve: a gRPC model server for CNN image classifiers.

The distribution holds four import packages: `cnnserve.server` (the service), `cnnserve.export` (training and
ONNX export, needs the ``train`` extra), `cnnserve.client` (the application library) and the generated protocol
modules under `cnnserve.v1`.
"""

__version__ = "0.1.0"
