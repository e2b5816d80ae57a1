"""The official Anthropic Python SDK against a running meshgate.

Usage: python3 anthropic_compat.py BASE_URL   (e.g. http://127.0.0.1:8080)
"""
import sys

import anthropic

client = anthropic.Anthropic(base_url=sys.argv[1], api_key="sk-test", max_retries=0)
messages = [{"role": "user", "content": "hello from the anthropic sdk"}]

m = client.messages.create(model="llama3.2", max_tokens=64, system="be brief", messages=messages)
assert m.type == "message" and m.role == "assistant", m
assert m.content[0].type == "text" and m.content[0].text, m
assert m.stop_reason == "end_turn" and m.usage.output_tokens > 0, m

with client.messages.stream(model="llama3.2", max_tokens=64, messages=messages) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
assert text and text == final.content[0].text, (text, final)
assert final.usage.output_tokens > 0

tools = [{"name": "get_weather", "description": "weather in a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}]
ask = [{"role": "user", "content": "weather in Oslo?"}]
first = client.messages.create(model="llama3.2", max_tokens=64, tools=tools, messages=ask)
assert first.stop_reason == "tool_use", first
use = [b for b in first.content if b.type == "tool_use"][0]
assert use.name == "get_weather" and use.input == {"city": "sim"}, use
second = client.messages.create(model="llama3.2", max_tokens=64, tools=tools, messages=ask + [
    {"role": "assistant", "content": first.content},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},
])
assert second.content[0].type == "text" and second.stop_reason == "end_turn", second

with client.messages.stream(model="llama3.2", max_tokens=64, tools=tools, messages=ask) as stream:
    final = stream.get_final_message()
assert final.content[-1].type == "tool_use" and final.content[-1].input == {"city": "sim"}, final

count = client.messages.count_tokens(model="llama3.2", messages=messages)
assert count.input_tokens > 0, count

try:
    client.messages.create(model="no-such-model", max_tokens=8, messages=messages)
    raise AssertionError("unknown model should raise")
except anthropic.NotFoundError as e:
    assert e.status_code == 404 and e.body["error"]["type"] == "not_found_error", e.body
try:
    client.messages.create(model="llama3.2", max_tokens=8, messages=[
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "x"}]}])
    raise AssertionError("orphan tool_result should raise")
except anthropic.BadRequestError as e:
    assert e.body["error"]["type"] == "invalid_request_error", e.body
bad = anthropic.Anthropic(base_url=sys.argv[1], api_key="wrong", max_retries=0)
if len(sys.argv) > 2:  # the gateway has keys
    try:
        bad.messages.create(model="llama3.2", max_tokens=8, messages=messages)
        raise AssertionError("a wrong key should raise")
    except anthropic.AuthenticationError as e:
        assert e.status_code == 401

print("anthropic sdk compatibility: ok")
