"""The official OpenAI Python SDK's Responses API against a running meshgate.

Usage: python3 responses_compat.py BASE_URL   (e.g. http://127.0.0.1:8080/v1)
Exits non-zero with a message on the first behaviour that differs from OpenAI's.
"""
import json
import sys

import openai
from openai import OpenAI

client = OpenAI(base_url=sys.argv[1], api_key="unused-by-meshgate", max_retries=0)

# Whole.
r = client.responses.create(model="llama3.2", input="hello from responses", instructions="be brief")
assert r.object == "response" and r.status == "completed", r
assert r.output_text, r
assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0, r.usage

# Streamed: typed events, text assembled from deltas equals the final text.
deltas, kinds, final = [], [], None
with client.responses.stream(model="llama3.2", input="stream please") as stream:
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
    final = stream.get_final_response()
assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
assert "".join(deltas) == final.output_text, (deltas, final.output_text)

# create(stream=True) too.
events = list(client.responses.create(model="llama3.2", input="again", stream=True))
assert [e.sequence_number for e in events] == list(range(len(events)))

# A function-tool round trip, then previous_response_id.
tools = [{"type": "function", "name": "get_weather", "description": "weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]}}]
first = client.responses.create(model="llama3.2", input="weather in Oslo?", tools=tools)
calls = [o for o in first.output if o.type == "function_call"]
assert len(calls) == 1 and calls[0].name == "get_weather", first.output
args = json.loads(calls[0].arguments)
second = client.responses.create(
    model="llama3.2", previous_response_id=first.id, tools=tools,
    input=[{"type": "function_call_output", "call_id": calls[0].call_id,
            "output": json.dumps({"city": args["city"], "sky": "sunny"})}])
assert second.output_text, second
assert second.previous_response_id == first.id

# Streamed function call: argument deltas.
arg_deltas = []
with client.responses.stream(model="llama3.2", input="weather?", tools=tools) as stream:
    for event in stream:
        if event.type == "response.function_call_arguments.delta":
            arg_deltas.append(event.delta)
    done = stream.get_final_response()
assert json.loads("".join(arg_deltas)) == json.loads(done.output[-1].arguments), arg_deltas

# Retrieve and delete.
got = client.responses.retrieve(first.id)
assert got.id == first.id
client.responses.delete(first.id)
try:
    client.responses.retrieve(first.id)
    raise AssertionError("deleted response should be gone")
except openai.NotFoundError:
    pass
try:
    client.responses.create(model="llama3.2", input="x", previous_response_id="resp_nope")
    raise AssertionError("unknown previous_response_id should raise")
except openai.BadRequestError as e:
    assert e.code == "previous_response_not_found", e.body
try:
    client.responses.create(model="llama3.2", input=[{"type": "bogus"}])
    raise AssertionError("a bad item should raise")
except openai.BadRequestError as e:
    assert e.param == "input[0].type", e.body

print("responses sdk compatibility: ok")
