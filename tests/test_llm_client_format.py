"""The response format is chosen when a request is sent, not when it is queued: once one call learns
that the server refuses json_schema, no call waiting for a concurrency slot sends json_schema again.
Real HTTP through the openai SDK, against the fault server that answers 400 to json_schema."""

from __future__ import annotations

import asyncio

import pytest

from qaforge.generate.llm_client import LLMClient, LLMOptions
from qaforge.testing.fault_llm_server import FaultConfig, FaultLLMServer


def _run_concurrently(server: FaultLLMServer, calls: int, concurrency: int) -> LLMClient:
    options = LLMOptions(base_url=server.base_url, api_key="test", model="fault-llm", backoff_base_s=0.05,
                         concurrency=concurrency)

    async def run() -> LLMClient:
        client = LLMClient(options)
        try:
            # Distinct seeds: distinct requests to the server (its faults and answers key on them).
            results = await asyncio.gather(*(client.complete(
                [{"role": "user", "content": "difficulty: easy 2 questions"}], seed=i) for i in range(calls)))
            assert all(r.text for r in results)
            return client
        finally:
            await client.close()

    return asyncio.run(run())


@pytest.mark.parametrize("concurrency", [1, 3])
def test_queued_calls_never_send_a_format_already_refused(concurrency):
    calls = 12
    # Latency keeps every slot busy, so the other calls are queued on the semaphore while the first
    # `concurrency` ones are refused.
    with FaultLLMServer(FaultConfig(reject_response_format=True, latency=(0.2, 0.2))) as server:
        client = _run_concurrently(server, calls, concurrency)
        refused = server.stats.faults["reject_response_format"]
        # Only the calls already in flight when the first refusal came back can have sent json_schema
        # (before the fix every queued call sent it once: `calls` refusals).
        assert 1 <= refused <= concurrency
        assert server.stats.requests == calls + refused
        assert server.stats.status[200] == calls
    assert client.fallbacks == ["json_schema"] and client.response_format == "json_object"


def test_a_fixed_format_is_never_stepped_down():
    # --response-format json_schema (not auto): a refusal is final, no other format is tried.
    with FaultLLMServer(FaultConfig(reject_response_format=True)) as server:
        options = LLMOptions(base_url=server.base_url, api_key="test", model="fault-llm",
                             response_format="json_schema")

        async def run():
            client = LLMClient(options)
            try:
                return await asyncio.gather(*(client.complete([{"role": "user", "content": "x"}], seed=i)
                                              for i in range(3)), return_exceptions=True)
            finally:
                await client.close()

        outcomes = asyncio.run(run())
        assert all("request refused" in str(o) for o in outcomes)
        assert server.stats.requests == 3 == server.stats.faults["reject_response_format"]
