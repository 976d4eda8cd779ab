"""Locust load test of a cnnserve server over gRPC: the image API and the Open Inference Protocol (KServe v2).

    locust -f load_tests/locustfile.py --host 127.0.0.1:8001 --model mnist_net -u 32 -t 60s --headless

or `make load-test`, which starts a server on loopback, runs this headless for a bounded time and writes Locust's
CSV and HTML reports. Every call is reported to Locust's statistics with its real latency, and as a failure when
it ends in a gRPC error or a malformed answer.

Users:
- ImageClassifierUser calls cnnserve.v1.ImageClassifier/Classify with photo-like images of the model's input size,
  sent as PNG, JPEG, raw uint8 pixels or a float32 input tensor (--payloads); each kind is its own statistics row.
- InferenceProtocolUser calls inference.GRPCInferenceService/ModelInfer with a float32 tensor in
  raw_input_contents. It needs the protocol's generated messages (cnnserve's own, or tritonclient's); without
  them, or when the server answers UNIMPLEMENTED, it is skipped with a warning instead of failing.

Load shape: users step up to -u in --steps equal steps spread over -t (default 60 s); --steps 0 holds -u users
for the whole run. Users call back to back (closed loop, no wait time).
"""

from __future__ import annotations

import importlib
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import grpc  # noqa: E402
from locust import LoadTestShape, User, constant, events, task  # noqa: E402
from locust.exception import StopUser  # noqa: E402

from cnnserve.v1 import classifier_pb2 as pb  # noqa: E402
from load_tests.bench.payloads import ModelInput, PayloadKind, classify_request, synthetic_photo  # noqa: E402

_log = logging.getLogger("cnnserve.load_tests")
CLASSIFY = "/cnnserve.v1.ImageClassifier/Classify"
GET_MODEL = "/cnnserve.v1.ImageClassifier/GetModel"
INFERENCE_SERVICE = "inference.GRPCInferenceService"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    parser.add_argument("--model", default="mnist_net", help="model to call (default mnist_net)")
    parser.add_argument(
        "--payloads",
        default="png,jpeg,uint8,float32",
        help="comma-separated payload kinds of the image API: png, jpeg, uint8, float32 (default: all four)",
    )
    parser.add_argument("--images-per-request", type=int, default=1, help="images per call (default 1)")
    parser.add_argument("--steps", type=int, default=4, help="steps of the user ramp; 0 holds -u users (default 4)")


def grpc_target(host: str | None) -> str:
    """Locust's --host as a gRPC target: 127.0.0.1:8001, with or without a grpc:// or http:// prefix."""
    if not host:
        raise StopUser("no --host given; pass the server as --host 127.0.0.1:8001")
    return host.split("://", 1)[-1].rstrip("/")


def open_channel(host: str | None) -> grpc.Channel:
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    return grpc.insecure_channel(grpc_target(host), options=options)


def get_model_method(channel: grpc.Channel) -> Any:
    return channel.unary_unary(
        GET_MODEL,
        request_serializer=pb.GetModelRequest.SerializeToString,
        response_deserializer=pb.ModelInfo.FromString,
    )


class CallFailed(Exception):
    """A call answered OK but with something other than what was asked for."""


class GrpcUser(User):
    """A Locust user with one channel, that times each call and reports it to Locust's statistics."""

    abstract = True
    wait_time = constant(0)

    def on_start(self) -> None:
        self.channel = open_channel(self.host)

    def on_stop(self) -> None:
        self.channel.close()

    def timed_call(self, name: str, call: Any, request: Any, check: Any = None, **kwargs: Any) -> Any:
        """Call, report to Locust (latency, response size, failure) and return the response or None."""
        started = time.perf_counter()
        response, exception, length = None, None, 0
        try:
            response = call(request, timeout=30, **kwargs)
            length = len(response) if isinstance(response, bytes) else response.ByteSize()
            if check is not None:
                check(response)
        except grpc.RpcError as exc:
            exception = CallFailed(f"{exc.code().name}: {exc.details()}")
        except CallFailed as exc:
            exception = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=exception,
            context={},
        )
        return response if exception is None else None


class ImageClassifierUser(GrpcUser):
    """Classify calls of the image API, each payload kind its own statistics row."""

    weight = 3

    def on_start(self) -> None:
        super().on_start()
        options = self.environment.parsed_options
        self.model = options.model
        self.images = options.images_per_request
        self.classify = self.channel.unary_unary(CLASSIFY)
        describe = get_model_method(self.channel)
        info = self.timed_call("GetModel", describe, pb.GetModelRequest(name=self.model))
        if info is None:
            raise StopUser()
        kinds = [PayloadKind(kind.strip()) for kind in options.payloads.split(",") if kind.strip()]
        self.requests = {kind: _classify_payload(self.model, info, kind, self.images) for kind in kinds}

    @task
    def classify_image(self) -> None:
        kind = random.choice(list(self.requests))
        self.timed_call(f"Classify {kind.value}", self.classify, self.requests[kind], check=self._check)

    def _check(self, response: bytes) -> None:
        answer = pb.ClassifyResponse.FromString(response)
        if len(answer.results) != self.images:
            raise CallFailed(f"asked for {self.images} results, got {len(answer.results)}")


_PAYLOADS: dict[tuple[str, str, int], bytes] = {}


def _classify_payload(model: str, info: pb.ModelInfo, kind: PayloadKind, images: int) -> bytes:
    """A serialised Classify request, built once per process and shared by every user."""
    key = (model, kind.value, images)
    if key not in _PAYLOADS:
        request = classify_request(model, ModelInput.from_model_info(info), kind, images)
        _PAYLOADS[key] = request.SerializeToString()
    return _PAYLOADS[key]


@dataclass(frozen=True)
class InferenceProtocol:
    """The Open Inference Protocol's messages, from whichever generated module provides them."""

    messages: ModuleType
    source: str

    def method(self, channel: grpc.Channel, name: str) -> Any:
        request = getattr(self.messages, f"{name}Request")
        response = getattr(self.messages, f"{name}Response")
        return channel.unary_unary(
            f"/{INFERENCE_SERVICE}/{name}",
            request_serializer=request.SerializeToString,
            response_deserializer=response.FromString,
        )


def find_inference_protocol() -> InferenceProtocol | None:
    """cnnserve's generated KServe v2 module if there is one, else tritonclient's; None when neither exists."""
    import cnnserve

    package_root = Path(cnnserve.__file__).parent
    for path in sorted(package_root.rglob("*_pb2.py")):
        if INFERENCE_SERVICE.split(".")[-1] not in path.read_text(errors="ignore"):
            continue
        name = ".".join(("cnnserve", *path.relative_to(package_root).with_suffix("").parts))
        module = _services_module(name)
        if module is not None:
            return InferenceProtocol(module, name)
    for name in ("tritonclient.grpc.service_pb2", "tritonclient.grpc.grpc_service_pb2"):
        module = _services_module(name)
        if module is not None:
            return InferenceProtocol(module, name)
    return None


def _services_module(name: str) -> ModuleType | None:
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    descriptor = getattr(module, "DESCRIPTOR", None)
    services = getattr(descriptor, "services_by_name", {})
    full_names = {service.full_name for service in services.values()}
    return module if INFERENCE_SERVICE in full_names and hasattr(module, "ModelInferRequest") else None


_PROTOCOL = find_inference_protocol()
_SKIP_WARNED: set[str] = set()


def _skip(reason: str) -> None:
    if reason not in _SKIP_WARNED:
        _SKIP_WARNED.add(reason)
        _log.warning("InferenceProtocolUser skipped: %s", reason)


@events.init.add_listener
def _announce_protocol(environment: Any, **_: Any) -> None:
    if _PROTOCOL is None:
        _skip("no Open Inference Protocol messages found (neither cnnserve's generated module nor tritonclient)")
    else:
        _log.info("Open Inference Protocol messages from %s", _PROTOCOL.source)


class InferenceProtocolUser(GrpcUser):
    """ModelInfer calls of the Open Inference Protocol with a float32 tensor in raw_input_contents."""

    weight = 1
    abstract = _PROTOCOL is None

    def on_start(self) -> None:
        super().on_start()
        assert _PROTOCOL is not None
        messages = _PROTOCOL.messages
        options = self.environment.parsed_options
        self.model = options.model
        metadata_call = _PROTOCOL.method(self.channel, "ModelMetadata")
        try:
            metadata = metadata_call(messages.ModelMetadataRequest(name=self.model), timeout=10)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                _skip(f"the server does not implement {INFERENCE_SERVICE}")
                raise StopUser() from None
            raise
        self.infer = _PROTOCOL.method(self.channel, "ModelInfer")
        self.request = self._infer_request(messages, metadata, options.images_per_request)

    def _infer_request(self, messages: ModuleType, metadata: Any, images: int) -> Any:
        (tensor,) = metadata.inputs
        if tensor.datatype != "FP32":
            _skip(f"{self.model}'s input is {tensor.datatype}; this user sends FP32 only")
            raise StopUser()
        channels, height, width = (int(d) for d in tensor.shape[-3:])
        model_input = self._image_api_input() or ModelInput(
            channels, height, width, "L" if channels == 1 else "RGB", 1 / 255, (0.0,), (1.0,), False
        )
        batch = [model_input.to_model_input(synthetic_photo(model_input, seed)) for seed in range(images)]
        data = b"".join(sample.astype("<f4").tobytes() for sample in batch)
        return messages.ModelInferRequest(
            model_name=self.model,
            inputs=[
                messages.ModelInferRequest.InferInputTensor(
                    name=tensor.name, datatype="FP32", shape=[images, channels, height, width]
                )
            ],
            raw_input_contents=[data],
        )

    def _image_api_input(self) -> ModelInput | None:
        """The model's scaling from the image API, so the tensor holds what a real client would send."""
        describe = get_model_method(self.channel)
        try:
            return ModelInput.from_model_info(describe(pb.GetModelRequest(name=self.model), timeout=10))
        except (grpc.RpcError, ValueError):
            return None

    @task
    def model_infer(self) -> None:
        self.timed_call("ModelInfer float32", self.infer, self.request, check=self._check)

    def _check(self, response: Any) -> None:
        if not response.outputs:
            raise CallFailed("the answer has no outputs")


class StepLoadShape(LoadTestShape):
    """Users step up to -u in --steps equal steps over -t (default 60 s), then the run ends."""

    use_common_options = True
    default_seconds = 60

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None
        options = self.runner.environment.parsed_options
        total = options.run_time or self.default_seconds
        most = max(options.num_users or 1, 1)
        elapsed = self.get_run_time()
        if elapsed >= total:
            return None
        if options.steps <= 0:
            return most, max(options.spawn_rate or most, most)
        step = min(int(elapsed / (total / options.steps)), options.steps - 1)
        users = max(1, round(most * (step + 1) / options.steps))
        # Spawn a step's users within about a second, so each step is measured at its full size.
        return users, max(options.spawn_rate or 1, most / options.steps)
