"""The official OpenAI Python SDK against a running meshgate.

Usage: python3 openai_compat.py BASE_URL   (e.g. http://127.0.0.1:8080/v1)
Exits non-zero with a message on the first behaviour that differs from OpenAI's.
"""
import sys

import openai
from openai import OpenAI

base_url = sys.argv[1]
client = OpenAI(base_url=base_url, api_key="unused-by-meshgate", max_retries=0)
messages = [{"role": "user", "content": "hello from the openai sdk"}]

# Chat, whole.
reply = client.chat.completions.create(model="llama3.2", messages=messages)
assert reply.object == "chat.completion", reply
assert reply.choices[0].message.role == "assistant"
assert reply.choices[0].message.content, reply
assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

# Chat, streamed: several chunks, text assembled from deltas.
chunks = list(client.chat.completions.create(model="llama3.2", messages=messages, stream=True))
texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
assert len(texts) > 1, chunks
assert chunks[-1].choices[0].finish_reason == "stop", chunks[-1]

# Streamed with usage: the last chunk carries usage and no choices.
chunks = list(client.chat.completions.create(
    model="llama3.2", messages=messages, stream=True, stream_options={"include_usage": True}))
assert chunks[-1].usage is not None and chunks[-1].choices == [], chunks[-1]
assert chunks[-1].usage.completion_tokens == len(
    [c for c in chunks if c.choices and c.choices[0].delta.content]), chunks

# Completions.
completion = client.completions.create(model="llama3.2", prompt="once upon a time")
assert completion.choices[0].text, completion

# Embeddings (the SDK asks for base64 by default and decodes it).
emb = client.embeddings.create(model="llama3.2", input=["alpha", "beta"])
assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8, emb
assert all(isinstance(x, float) for x in emb.data[0].embedding)
emb_float = client.embeddings.create(model="llama3.2", input="alpha", encoding_format="float")
assert [round(x, 5) for x in emb_float.data[0].embedding] == [round(x, 5) for x in emb.data[0].embedding]

# Models: the union, in OpenAI's list shape.
ids = sorted(m.id for m in client.models.list())
assert ids == ["llama3.2", "qwen2.5"], ids

# Errors surface as the SDK's typed exceptions, with OpenAI's error body.
try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    raise AssertionError("unknown model should raise")
except openai.NotFoundError as e:
    assert e.status_code == 404
    assert e.code == "model_not_found", e.body
    assert e.response.headers.get("x-request-id"), e.response.headers

try:
    client.chat.completions.create(model="llama3.2", messages="not a list")
    raise AssertionError("bad messages should raise")
except openai.BadRequestError as e:
    assert e.status_code == 400 and e.param == "messages", e.body

print("openai sdk compatibility: ok")
