# bench/idle_watchers.py HOST PORT CA N PLAIN: open N change streams (HTTPS unless PLAIN is 1,
# trusting the CA file CA), keep them idle, print "open N" once all answered 200, then wait.
# Used by bench/watcher_memory.sh.
import asyncio, ssl, sys
host, port, ca, n, plain = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
ctx = None
if not plain:
    ctx = ssl.create_default_context(cafile=ca)
held = []
async def one(i):
    r, w = await asyncio.open_connection(host, port, ssl=ctx)
    w.write(f"GET /v1/watch/services/w{i % 100} HTTP/1.1\r\nhost: {host}\r\naccept: text/event-stream\r\n\r\n".encode())
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n")[0]:
        raise SystemExit(f"not 200: {head[:200]!r}")
    held.append((r, w))
async def main():
    sem = asyncio.Semaphore(64)
    async def guarded(i):
        async with sem:
            await one(i)
    await asyncio.gather(*(guarded(i) for i in range(n)))
    print(f"open {len(held)}", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
