#!/usr/bin/env python3
"""Memory under a flood (docs/observability.md, "Overload and memory").

Drives a running polygate with N concurrent keep-alive connections for a few
seconds and reports the gateway's peak RSS (VmHWM) and answer counts.  Modes:

  fast      GET /v1/sessions/<id> as fast as the gateway answers
  hung      GET on an orders shard the caller has hung (kill -STOP) — the
            circuit breaker's fast 503s
  bodies    every connection sends the headers of a BODY-byte PUT and then
            the body slowly (the per-connection read buffer, worst case)

  bench/flood.py --pid PID --port 8080 --conns 2000 --seconds 5 --mode fast

It prints figures; it is not a test.
"""
import argparse
import asyncio
import collections
import time


def vm(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


async def one(args, stats, stop):
    try:
        r, w = await asyncio.open_connection("127.0.0.1", args.port)
    except OSError:
        stats["connect_failed"] += 1
        return
    try:
        if args.mode == "bodies":
            body = b"x" * args.body
            w.write(b"PUT /v1/sessions/flood HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body))
            sent = 0
            while not stop.is_set() and sent < len(body) - 1:
                n = min(4096, len(body) - 1 - sent)
                w.write(body[sent:sent + n])
                sent += n
                await w.drain()
                await asyncio.sleep(0.001)
            await stop.wait()
            return
        path = args.path.encode()
        while not stop.is_set():
            w.write(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            await w.drain()
            head = await r.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await r.readexactly(length)
            stats[status] += 1
    except (OSError, asyncio.IncompleteReadError, ValueError):
        stats["closed"] += 1
    finally:
        w.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--mode", choices=["fast", "hung", "bodies"], default="fast")
    ap.add_argument("--path", default="/v1/sessions/flood")
    ap.add_argument("--body", type=int, default=65536)
    args = ap.parse_args()
    rss0 = vm(args.pid, "VmRSS")
    stats = collections.Counter()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(one(args, stats, stop)) for _ in range(args.conns)]
    t0 = time.time()
    peak = rss0
    while time.time() - t0 < args.seconds:
        await asyncio.sleep(0.1)
        peak = max(peak, vm(args.pid, "VmRSS"))
    stop.set()
    await asyncio.wait(tasks, timeout=10)
    rss1 = vm(args.pid, "VmRSS")
    answers = {k: v for k, v in stats.items()}
    print("mode=%s conns=%d seconds=%.1f rss_before=%.1fMiB rss_peak=%.1fMiB rss_after=%.1fMiB "
          "answers=%s" % (args.mode, args.conns, args.seconds, rss0 / 2**20, peak / 2**20,
                          rss1 / 2**20, answers))


if __name__ == "__main__":
    asyncio.run(main())
