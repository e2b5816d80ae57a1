"""The official ollama client with tools against meshgate's Ollama surface.

Usage: python3 ollama_tools.py HOST   (e.g. http://127.0.0.1:8080)
"""
import sys

import ollama

client = ollama.Client(host=sys.argv[1])
tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]}}}]
ask = [{"role": "user", "content": "weather in Oslo?"}]
r = client.chat(model="llama3.2", messages=ask, tools=tools, stream=False)
calls = r.message.tool_calls
assert calls and calls[0].function.name == "get_weather", r
assert calls[0].function.arguments == {"city": "sim"}, calls
streamed = [c for part in client.chat(model="llama3.2", messages=ask, tools=tools, stream=True)
            for c in (part.message.tool_calls or [])]
assert len(streamed) == 1 and streamed[0].function.arguments == {"city": "sim"}, streamed
r2 = client.chat(model="llama3.2", tools=tools, messages=ask + [
    r.message, {"role": "tool", "content": "sunny", "tool_name": "get_weather"}])
assert r2.message.content, r2
print("ollama tools compatibility: ok")
