"""Official clients through meshgate to real llama.cpp servers (model alias `smollm2`).

Usage: python3 real_model.py OPENAI_BASE_URL OLLAMA_HOST GRPC_HOST:PORT
Real model output is not deterministic: structure is asserted, never text.
Exits non-zero with a message on the first behaviour that is wrong.
"""
import sys
import time

import grpc
import ollama
import openai
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

base, ollama_host, grpc_target = sys.argv[1], sys.argv[2], sys.argv[3]
MODEL = "smollm2"
messages = [{"role": "user", "content": "Name three colours."}]
client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=120)

# Models.
ids = [m.id for m in client.models.list()]
assert ids == [MODEL], ids

# Chat, whole.
reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
assert reply.choices[0].message.role == "assistant", reply
assert reply.choices[0].message.content, reply
assert reply.choices[0].finish_reason in ("length", "stop"), reply
assert 0 < reply.usage.completion_tokens <= 8, reply.usage
assert reply.usage.prompt_tokens > 0, reply.usage

# Chat, streamed: tokens arrive one by one, over time, and usage comes last.
arrivals = []
usage = None
with client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0,
                                    stream=True, stream_options={"include_usage": True}) as stream:
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
assert len(arrivals) > 3, arrivals
assert arrivals[-1] - arrivals[0] > 0.01, "tokens arrived all at once"
assert usage and 0 < usage.completion_tokens <= 24, usage

# Responses API (translated or native, whichever meshgate does for this node).
response = client.responses.create(model=MODEL, input="Name a fruit.", max_output_tokens=16,
                                   temperature=0)
assert response.status in ("completed", "incomplete"), response
assert response.output_text, response
assert response.usage.output_tokens > 0, response.usage

# Ollama's client on meshgate's Ollama surface (translated to llama-server).
oc = ollama.Client(host=ollama_host, timeout=120)
r = oc.chat(model=MODEL, messages=messages, options={"num_predict": 8, "temperature": 0})
assert r.done and r.message.role == "assistant" and r.message.content, r
assert r.eval_count and r.eval_count > 0, r
parts = list(oc.chat(model=MODEL, messages=messages, stream=True,
                     options={"num_predict": 8, "temperature": 0}))
assert len(parts) > 2 and parts[-1].done, parts
tags = [m.model for m in oc.list().models]
assert any(t.startswith(MODEL) for t in tags), tags

# gRPC server streaming, message types from reflection.
channel = grpc.insecure_channel(grpc_target)
grpc.channel_ready_future(channel).result(timeout=10)
pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
service = pool.FindServiceByName("meshgate.v1.Inference")
method = service.methods_by_name["StreamChatCompletion"]
request_cls = message_factory.GetMessageClass(method.input_type)
response_cls = message_factory.GetMessageClass(method.output_type)
call = channel.unary_stream(f"/{service.full_name}/{method.name}",
                            request_serializer=request_cls.SerializeToString,
                            response_deserializer=response_cls.FromString)
request = json_format.ParseDict({"model": MODEL, "messages": [{"role": "user", "text": "Hello"}],
                                 "max_tokens": 8, "include_usage": True}, request_cls())
chunks = list(call(request, timeout=120))
text = "".join(c.choices[0].delta.content for c in chunks if c.choices)
assert text, chunks
assert 0 < chunks[-1].usage.completion_tokens <= 8, chunks[-1]

print("real model: ok")
