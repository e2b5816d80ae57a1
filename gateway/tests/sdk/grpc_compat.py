"""A real gRPC client (grpcio) against a running meshgate, knowing nothing but its
address: services are listed through server reflection, message types come from the
reflected descriptors (no generated stubs), health through grpc.health.v1.

Usage: python3 grpc_compat.py HOST:PORT
Exits non-zero with a message on the first behaviour that is wrong.
"""
import sys

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

target = sys.argv[1]
channel = grpc.insecure_channel(target)
grpc.channel_ready_future(channel).result(timeout=10)

# Reflection: list the services, then build everything from the descriptors.
db = ProtoReflectionDescriptorDatabase(channel)
services = set(db.get_services())
for expected in ("meshgate.v1.Inference", "grpc.health.v1.Health"):
    assert expected in services, services
pool = DescriptorPool(db)
service = pool.FindServiceByName("meshgate.v1.Inference")
methods = {m.name: m for m in service.methods}
assert {"ChatCompletion", "StreamChatCompletion", "Completion", "Embeddings", "ListModels"} <= set(methods), methods


def rpc(name):
    method = methods[name]
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    path = f"/{service.full_name}/{method.name}"
    make = channel.unary_stream if method.server_streaming else channel.unary_unary
    call = make(path, request_serializer=request_cls.SerializeToString,
                response_deserializer=response_cls.FromString)
    return (lambda d: json_format.ParseDict(d, request_cls())), call


chat_request, chat = rpc("ChatCompletion")
stream_request, stream_chat = rpc("StreamChatCompletion")
models_request, list_models = rpc("ListModels")

request = {
    "model": "llama3.2",
    "messages": [{"role": "user", "text": "hello from grpcio"}],
    "max_tokens": 4,
    "extra": {"vendor_knob": 1},
}

# Unary, with the serving node in the initial metadata.
reply, call = chat.with_call(chat_request(request), timeout=10)
assert reply.object == "chat.completion", reply
assert reply.choices[0].message.role == "assistant"
assert reply.choices[0].message.text, reply
assert reply.choices[0].finish_reason == "length", reply
assert reply.usage.completion_tokens == 4, reply
metadata = dict(call.initial_metadata())
assert metadata.get("x-meshgate-node"), metadata
assert metadata.get("x-request-id"), metadata

# Server streaming: the same text, chunk by chunk.
chunks = list(stream_chat(stream_request(dict(request, include_usage=True)), timeout=10))
text = "".join(c.choices[0].delta.content for c in chunks if c.choices)
assert text == reply.choices[0].message.text, (text, reply)
assert chunks[-1].usage.completion_tokens == 4, chunks[-1]

# Models.
ids = [m.id for m in list_models(models_request({}), timeout=10).data]
assert "llama3.2" in ids, ids

# Errors are gRPC statuses with the right codes.
for bad, code in [
    (dict(request, model="no-such-model"), grpc.StatusCode.NOT_FOUND),
    (dict(request, model=""), grpc.StatusCode.INVALID_ARGUMENT),
    (dict(request, extra={"temperature": "hot"}), grpc.StatusCode.INVALID_ARGUMENT),
]:
    try:
        chat(chat_request(bad), timeout=10)
        raise AssertionError(f"{bad} should fail")
    except grpc.RpcError as e:
        assert e.code() == code, (bad, e.code(), e.details())
        assert e.details(), e

# Health.
health = health_pb2_grpc.HealthStub(channel)
for name in ("", "meshgate.v1.Inference"):
    status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING, (name, status)

print("grpc client compatibility: ok")
