"""The official OpenAI Python SDK, with its default retry settings, against meshgate
failing over. Usage: python3 openai_failover.py FAILOVER_BASE_URL GIVE_UP_BASE_URL

- FAILOVER: the preferred node answers 503, another node is healthy: the SDK sees success.
- GIVE_UP: every node answers 503: the SDK raises at once, without retrying on top of
  meshgate (the caller then checks how many requests reached the nodes).
"""
import sys

import openai
from openai import OpenAI

failover_url, give_up_url = sys.argv[1], sys.argv[2]
messages = [{"role": "user", "content": "hello"}]

client = OpenAI(base_url=failover_url, api_key="unused")  # default max_retries (2)
raw = client.chat.completions.with_raw_response.create(model="llama3.2", messages=messages)
reply = raw.parse()
assert reply.choices[0].message.content, reply
assert raw.headers["x-meshgate-node"] == "good", raw.headers
assert raw.headers["x-meshgate-attempts"] == "2", raw.headers

client = OpenAI(base_url=give_up_url, api_key="unused")
try:
    client.chat.completions.create(model="llama3.2", messages=messages)
    raise AssertionError("every node failing must raise")
except openai.InternalServerError as e:
    assert e.status_code == 503, e
    assert e.response.headers["x-should-retry"] == "false", e.response.headers

print("openai sdk failover: ok")
