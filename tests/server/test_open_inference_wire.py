"""Our hand-written Open Inference Protocol .proto files are wire-compatible with what Triton's clients speak.

tritonclient carries Triton's own descriptors. Our protos are compiled here into a FileDescriptorSet with protoc
(not imported: both define the same `inference.*` symbols, which one process's protobuf pool cannot hold twice)
and compared message by message: every field we declare has Triton's number, name, type and cardinality.
"""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton_service

from tests.test_proto_stubs import load_generator

Messages = dict[str, descriptor_pb2.DescriptorProto]
Enums = dict[str, descriptor_pb2.EnumDescriptorProto]

PARTIAL_MESSAGES = {"inference.ModelStatistics"}
"""Protocol messages of which we declare only part: cnnserve reports no memory usage or per-response statistics."""


def flatten(files: list[descriptor_pb2.FileDescriptorProto]) -> tuple[Messages, Enums]:
    """Every message and enum of `files` by full name, nested ones included."""
    messages: Messages = {}
    enums: Enums = {}

    def walk(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{message.name}"
        messages[name] = message
        for enum in message.enum_type:
            enums[f"{name}.{enum.name}"] = enum
        for nested in message.nested_type:
            walk(name, nested)

    for file in files:
        for enum in file.enum_type:
            enums[f"{file.package}.{enum.name}"] = enum
        for message in file.message_type:
            walk(file.package, message)
    return messages, enums


def file_proto(module) -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> list[descriptor_pb2.FileDescriptorProto]:
    generator = load_generator()
    out = tmp_path_factory.mktemp("descriptors") / "inference.pb"
    sources = [str(p.relative_to(generator.PROTO_ROOT)) for p in generator.proto_files() if "inference" in p.parts]
    status = protoc.main(["protoc", f"-I{generator.PROTO_ROOT}", f"--descriptor_set_out={out}", *sources])
    assert status == 0 and len(sources) == 2
    return list(descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file)


@pytest.fixture(scope="module")
def triton() -> list[descriptor_pb2.FileDescriptorProto]:
    return [file_proto(triton_service), file_proto(triton_config)]


def field_signature(field: descriptor_pb2.FieldDescriptorProto, message: descriptor_pb2.DescriptorProto):
    oneof = message.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None
    return field.name, field.type, field.label, field.type_name, oneof


def test_the_protos_declare_package_inference(ours) -> None:
    assert {file.package for file in ours} == {"inference"}


def test_every_declared_field_has_tritons_number_name_and_type(ours, triton) -> None:
    our_messages, _ = flatten(ours)
    their_messages, _ = flatten(triton)
    assert our_messages, "no messages compiled"
    for name, message in our_messages.items():
        assert name in their_messages, f"{name} is not a message of the protocol"
        theirs = {f.number: field_signature(f, their_messages[name]) for f in their_messages[name].field}
        for field in message.field:
            assert field.number in theirs, f"{name}.{field.name} = {field.number} is not a field number of Triton's"
            assert field_signature(field, message) == theirs[field.number], f"{name}.{field.name} differs"


def test_the_inference_messages_are_complete(ours, triton) -> None:
    """Every field of every service message we declare (only the model configuration is a deliberate subset)."""
    service_file = next(file for file in ours if file.name.endswith("grpc_service.proto"))
    our_messages, _ = flatten([service_file])
    their_messages, _ = flatten(triton)
    for name, message in our_messages.items():
        if name in PARTIAL_MESSAGES:
            continue
        missing = {f.name for f in their_messages[name].field} - {f.name for f in message.field}
        assert not missing, f"{name} lacks {sorted(missing)}"


def test_enums_have_tritons_values(ours, triton) -> None:
    _, our_enums = flatten(ours)
    _, their_enums = flatten(triton)
    assert "inference.DataType" in our_enums
    for name, enum in our_enums.items():
        assert {(v.name, v.number) for v in enum.value} == {(v.name, v.number) for v in their_enums[name].value}


def test_the_service_methods_match_tritons(ours, triton) -> None:
    (service,) = [s for file in ours for s in file.service]
    (theirs,) = [s for s in triton[0].service if s.name == "GRPCInferenceService"]
    their_methods = {m.name: m for m in theirs.method}
    assert len(service.method) == 15
    for method in service.method:
        other = their_methods[method.name]
        assert (method.input_type, method.output_type) == (other.input_type, other.output_type), method.name
        assert (method.client_streaming, method.server_streaming) == (other.client_streaming, other.server_streaming)
