"""Scenario 2, token relay: one run whose answer is 10,000 text deltas,
received by the gRPC client, against a bare grpc.aio server-streaming
method that sends the same number of messages of the same size (a real
`StreamToResponse` text delta captured from the runtime), and against the
model server's own stream pulled with httpx (the source's rate)."""

from __future__ import annotations

import time

import grpc
import httpx
import workload as w
from procs import Proc
from rawgrpc import PATH
from turn import CpuMeter, Measured, create_sessions

from pilothouse.client import PilothouseClient
from pilothouse.client.client import CHANNEL_OPTIONS
from pilothouse.v1 import run_service_pb2 as runs_pb


async def _runtime_run(
    client: PilothouseClient, session_id: str, *, merge_deltas: bool = False
) -> tuple[float, int, bytes, int]:
    """One relay run: (the run's events/s, its events, one text-delta
    message as sent, messages received). With `merge_deltas`, fewer
    messages than events when the client falls behind."""
    template = b""
    received = last = 0
    options = runs_pb.RunOptions(merge_deltas=merge_deltas)
    start = time.perf_counter()
    async for event in client.stream_to(
        session_id, w.USER_MESSAGE, options=options, timeout=w.RUN_DEADLINE_S
    ):
        received += 1
        last = event.sequence
        if not template and event.HasField("text_delta"):
            template = runs_pb.StreamToResponse(event=event).SerializeToString()
    return last / (time.perf_counter() - start), last, template, received


async def _raw_run(method: grpc.aio.UnaryStreamMultiCallable, request: bytes) -> float:
    received = 0
    start = time.perf_counter()
    async for response in method(request):
        received += 1
        response.event.HasField("text_delta")  # as the runtime's client does
    return received / (time.perf_counter() - start)


async def measure_pair(
    address: str, runtime_procs: list[Proc], raw: Proc, loop: str, runs: int
) -> tuple[Measured, Measured, Measured]:
    """Relay runs through the runtime and through the bare server, taken in
    turns so that both see the same machine; one warm-up run each; then the
    runtime's runs with `merge_deltas` (the client takes whatever waits as
    one delta). Samples are rates (the run's events per second), not
    milliseconds."""
    runtime = Measured("Pilothouse StreamTo (model SSE → runtime → gRPC client)", loop)
    baseline = Measured("baseline: bare grpc.aio server streaming, same messages", raw.loop)
    merged = Measured("Pilothouse StreamTo with `merge_deltas`", loop)
    async with PilothouseClient(address) as client, grpc.aio.insecure_channel(
        f"127.0.0.1:{raw.port}", options=CHANNEL_OPTIONS
    ) as channel:
        method = channel.unary_stream(
            PATH,
            request_serializer=lambda b: b,
            response_deserializer=runs_pb.StreamToResponse.FromString,
        )
        sessions = await create_sessions(client, w.AGENT_RELAY, 2 * runs + 1)
        _, events, template, _ = await _runtime_run(client, sessions[0])
        request = events.to_bytes(4, "big") + template
        await _raw_run(method, request)
        runtime_cpu, raw_cpu, merged_cpu = CpuMeter(runtime_procs), CpuMeter([raw]), CpuMeter(runtime_procs)
        for session_id in sessions[1:runs + 1]:
            runtime_cpu.start()
            rate, events, _, _ = await _runtime_run(client, session_id)
            runtime.samples_ms.append(rate)
            runtime.cpu_ms = runtime_cpu.stop(len(runtime.samples_ms))
            raw_cpu.start()
            baseline.samples_ms.append(await _raw_run(method, request))
            baseline.cpu_ms = raw_cpu.stop(len(baseline.samples_ms))
        messages = []
        for session_id in sessions[runs + 1:]:
            merged_cpu.start()
            rate, _, _, received = await _runtime_run(client, session_id, merge_deltas=True)
            merged.samples_ms.append(rate)
            merged.cpu_ms = merged_cpu.stop(len(merged.samples_ms))
            messages.append(received)
    runtime.note = f"{events} events per run"
    baseline.note = f"{events} messages of {len(template)} bytes (a real text-delta event)"
    merged.note = (f"{events} events per run in {min(messages):,}-{max(messages):,} messages"
                   if messages else "")
    return runtime, baseline, merged


async def template_and_raw_runs(address: str, raw_port: int, runs: int) -> int:
    """One runtime relay run for its message, then `runs` bare runs of the
    same messages (for profiling the bare server); returns events per run."""
    async with PilothouseClient(address) as client, grpc.aio.insecure_channel(
        f"127.0.0.1:{raw_port}", options=CHANNEL_OPTIONS
    ) as channel:
        (session_id,) = await create_sessions(client, w.AGENT_RELAY, 1)
        _, events, template, _ = await _runtime_run(client, session_id)
        method = channel.unary_stream(
            PATH, request_serializer=lambda b: b,
            response_deserializer=runs_pb.StreamToResponse.FromString,
        )
        for _ in range(runs):
            await _raw_run(method, events.to_bytes(4, "big") + template)
    return events


async def measure_model_source(base_url: str, loop: str, proc: Proc, runs: int) -> Measured:
    """The relay stream pulled straight from the model server, counting
    events without decoding them: the rate the source can deliver."""
    row = Measured("model server alone: the SSE stream pulled raw", loop)
    body = {
        "model": w.MODEL_RELAY,
        "stream": True,
        "messages": [{"role": "user", "content": w.USER_MESSAGE}],
    }
    async with httpx.AsyncClient(timeout=60) as http:
        meter = CpuMeter([proc])
        for index in range(runs + 1):
            if index == 1:
                meter.start()
            start = time.perf_counter()
            events = 0
            async with http.stream("POST", base_url + "/chat/completions", json=body) as response:
                async for data in response.aiter_raw():
                    events += data.count(b"\n\n")
            elapsed = time.perf_counter() - start
            if index:
                row.samples_ms.append(events / elapsed)
        row.cpu_ms = meter.stop(runs)
    return row
