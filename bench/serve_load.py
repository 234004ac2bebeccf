"""Load test of `aigc serve`: many concurrent streaming clients, latency percentiles, throughput, memory.

Starts a real server process on a loopback port, measures one client alone,
warms up with one request from each of the concurrent clients, then runs
``--clients`` concurrent clients that each send ``--requests`` streaming
completions one after another (fixed length: ``ignore_eos``). Reports failures,
time to first token and total latency (p50 / p99), aggregate generated tokens/s,
and the server's resident memory after the warm-up and after the run (VmRSS
from /proc): growth over the run would be a leak.

    .venv/bin/python bench/serve_load.py runs/bench-gpt-30min --clients 32 --requests 20 --max-tokens 64

Writes bench/results/serve_load.json (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

import httpx

from aigc.serve.process import start_server

PROMPTS = ["明月", "春风", "秋天的落叶", "江上", "白日依山尽", "青山", "故人", "长安", "夜雨", "孤舟"]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


async def one_request(http: httpx.AsyncClient, model: str, prompt: str, seed: int, max_tokens: int) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "seed": seed, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, tokens, done = None, 0, False
    async with http.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return {"ok": False, "why": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                return {"ok": False, "why": chunk["error"]["message"]}
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if first is None and any(c.get("text") for c in chunk["choices"]):
                first = time.perf_counter()
    end = time.perf_counter()
    if not done or first is None:
        return {"ok": False, "why": "stream ended without [DONE] or without text"}
    return {"ok": True, "ttft": first - start, "latency": end - start, "tokens": tokens}


async def run_clients(url: str, model: str, clients: int, requests: int, max_tokens: int) -> tuple[list, float]:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        async def client(c: int) -> list[dict]:
            out = []
            for r in range(requests):
                try:
                    out.append(await one_request(http, model, PROMPTS[(c + r) % len(PROMPTS)], c * 1000 + r,
                                                 max_tokens))
                except Exception as e:  # noqa: BLE001 - counted as a failure
                    out.append({"ok": False, "why": f"{type(e).__name__}: {e}"})
            return out

        start = time.perf_counter()
        results = await asyncio.gather(*(client(c) for c in range(clients)))
        return [r for rs in results for r in rs], time.perf_counter() - start


def summarise(results: list[dict], wall: float) -> dict:
    ok = [r for r in results if r["ok"]]
    failures = [r["why"] for r in results if not r["ok"]]
    tokens = sum(r["tokens"] for r in ok)
    return {
        "requests": len(results), "failures": len(failures), "failure_examples": failures[:5],
        "wall_s": round(wall, 2), "tokens": tokens, "tokens_per_s": round(tokens / wall, 1),
        "ttft_p50_s": round(percentile([r["ttft"] for r in ok], 0.5), 3) if ok else None,
        "ttft_p99_s": round(percentile([r["ttft"] for r in ok], 0.99), 3) if ok else None,
        "latency_p50_s": round(percentile([r["latency"] for r in ok], 0.5), 3) if ok else None,
        "latency_p99_s": round(percentile([r["latency"] for r in ok], 0.99), 3) if ok else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="run or model folder to serve")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=20, help="requests per client, one after another")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="server CPU threads (0 = all cores)")
    ap.add_argument("--out", default="bench/results/serve_load.json")
    args = ap.parse_args()

    server, url = start_server([f"m={args.model}"], "--threads", str(args.threads), "--log-level", "warning")
    try:
        rss_start = rss_mib(server.pid)
        single, single_wall = asyncio.run(run_clients(url, "m", 1, 10, args.max_tokens))
        asyncio.run(run_clients(url, "m", args.clients, 1, args.max_tokens))  # warm-up at full concurrency
        rss_before = rss_mib(server.pid)
        print(f"server up: {rss_start:.0f} MiB; after the warm-up ({args.clients} clients x 1 request): "
              f"{rss_before:.0f} MiB; one client alone: {summarise(single, single_wall)['tokens_per_s']} tokens/s",
              flush=True)
        results, wall = asyncio.run(run_clients(url, "m", args.clients, args.requests, args.max_tokens))
        time.sleep(2)
        rss_after = rss_mib(server.pid)
        metrics = httpx.get(url + "/metrics").text
    finally:
        server.terminate()
        server.wait(timeout=30)

    summary = summarise(results, wall)
    report = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": "python " + " ".join(sys.argv), "model": args.model, "clients": args.clients,
        "requests_per_client": args.requests, "max_tokens": args.max_tokens,
        "single_client": summarise(single, single_wall), "load": summary,
        "rss_mib": {"server_up": round(rss_start, 1), "before": round(rss_before, 1), "after": round(rss_after, 1),
                    "change_pct": round(100 * (rss_after - rss_before) / rss_before, 1)},
        "server_metrics": [line for line in metrics.splitlines()
                           if line.startswith(("aigc_requests_total", "aigc_generation_tokens_total",
                                               "aigc_requests_cancelled_total", "aigc_requests_rejected"))],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0 if summary["failures"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
