"""openai-agents: a one-tool agent run end to end against meshgate (Responses API).

Usage: python3 agents_compat.py BASE_URL
"""
import asyncio
import sys

from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI

set_tracing_disabled(True)
calls = []


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    calls.append(city)
    return f"sunny in {city}"


async def main():
    client = AsyncOpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0)
    agent = Agent(name="weather", instructions="answer with the tool",
                  tools=[get_weather],
                  model=OpenAIResponsesModel(model="llama3.2", openai_client=client))
    result = await Runner.run(agent, "weather in Oslo?")
    assert calls == ["sim"], calls
    assert isinstance(result.final_output, str) and result.final_output, result.final_output
    print("openai-agents compatibility: ok")


asyncio.run(main())
