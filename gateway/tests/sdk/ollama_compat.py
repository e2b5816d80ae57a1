"""The official `ollama` Python client against meshgate's Ollama surface.

Usage: python3 ollama_compat.py BASE_URL MODEL   (e.g. http://127.0.0.1:8080 llama3.2)
Exits non-zero with a message on the first behaviour that differs from Ollama's.
"""
import sys

import ollama

host, model = sys.argv[1], sys.argv[2]
client = ollama.Client(host=host)
messages = [{"role": "user", "content": "hello from the ollama client"}]

# Chat, whole.
reply = client.chat(model=model, messages=messages, stream=False)
assert reply.done and reply.message.role == "assistant", reply
assert reply.message.content, reply
assert reply.eval_count and reply.eval_count > 0, reply

# Chat, streamed (Ollama's default for the raw API; the client asks explicitly).
parts = list(client.chat(model=model, messages=messages, stream=True))
assert len(parts) > 2, parts
assert all(not p.done for p in parts[:-1]), parts
assert parts[-1].done and parts[-1].done_reason, parts[-1]
assert "".join(p.message.content for p in parts) == reply.message.content, parts

# Generate, whole and streamed.
gen = client.generate(model=model, prompt="why is the sky blue", options={"num_predict": 3})
assert gen.done and gen.response, gen
assert gen.eval_count == 3 and gen.done_reason == "length", gen
stream = list(client.generate(model=model, prompt="why is the sky blue", stream=True))
assert stream[-1].done and "".join(p.response for p in stream), stream

# Embeddings.
emb = client.embed(model=model, input=["alpha", "beta"])
assert len(emb.embeddings) == 2 and len(emb.embeddings[0]) > 0, emb

# List: the union over nodes.
names = [m.model for m in client.list().models]
assert model in names, names

# Errors raise the client's typed exception with the status.
try:
    client.chat(model="no-such-model", messages=messages)
    raise AssertionError("unknown model should raise")
except ollama.ResponseError as e:
    assert e.status_code == 404, e
    assert "no-such-model" in e.error, e

print("ollama client compatibility: ok")
