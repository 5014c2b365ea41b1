"""`jaxrnn serve` under load on loopback: starts the server on a trained run, measures, stops it.

    python tools/serve_load.py --run RUN_DIR [--clients 64] [--chars 200] [--bad 1000] [--json-out FILE]

In one command, against one server process on this machine:
1. the same `--clients` requests (`--chars` characters each, greedy, each its own prompt) one at a time, then
   all at once (after one such load to warm the server up; the median of 5): characters/s of each and their
   ratio, latency p50 and p99 of the concurrent ones (and their texts must equal the one-at-a-time ones);
2. the first streamed character's latency on the idle server (`--first` requests, one at a time): p50, p99;
3. the concurrent load again while `--bad` malformed requests arrive: every malformed one must get a 4xx and
   every valid one its text.
Prints a table on stdout (and the figures as JSON with --json-out); the server's own lines go to stderr.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from toolcli import Parser, ToolError, positive_int, run_main

READY = re.compile(r"^jaxrnn: serving (\S+) .* at http://127\.0\.0\.1:(\d+)/ \(ready\)$")
ROUNDS = 5  # concurrent loads measured, the median reported
PROMPTS = ["First Citizen:", "ROMEO:", "To be, or not", "KING HENRY", "O, what a", "My lord,", "Enter", "the"]


class Server:
    """A `jaxrnn serve` process on loopback (started with `flags`), its port and its stderr lines so far."""

    def __init__(self, run_dirs: list[str | Path], *flags: str, timeout: float = 600) -> None:
        args = [sys.executable, "-m", "jaxrnn.cli", "serve", "--port", "0", *flags]
        for d in run_dirs:
            args += ["--run", str(d)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.port: int | None = None
        ready = threading.Event()

        def read() -> None:
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                m = READY.match(self.lines[-1])
                if m:
                    self.port = int(m.group(2))
                    ready.set()
            ready.set()  # the process ended

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout) or self.port is None:
            self.stop()
            raise ToolError(f"the server did not start: {self.lines[-1] if self.lines else 'no output'}; run "
                            f"'jaxrnn serve --run {run_dirs[0]}' to see why")

    def call(self, method: str, path: str, body: object = None, raw: bytes | None = None,
             timeout: float = 300) -> tuple[int, object]:
        """(status, the parsed JSON reply, or its text) of one request on a new connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        try:
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            text = r.read().decode()
        finally:
            conn.close()
        is_json = r.getheader("content-type", "").startswith("application/json")
        return r.status, json.loads(text) if is_json else text

    def complete(self, **body: object) -> dict:
        status, reply = self.call("POST", "/v1/completions", body)
        if status != 200:
            raise ToolError(f"a valid request got {status}: {reply}; see the server's stderr")
        return reply

    def stream(self, body: dict, first: list[float] | None = None) -> list[str]:
        """The `data:` payloads of a streamed completion; `first` gets the seconds to the first one."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        t0 = time.perf_counter()
        conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True}))
        r = conn.getresponse()
        events, buf = [], ""
        while True:
            piece = r.read1(65536).decode()
            if not piece:
                break
            buf += piece
            *done, buf = buf.split("\n\n")
            if done and first is not None and not events:
                first.append(time.perf_counter() - t0)
            events += [e.removeprefix("data: ") for e in done]
        conn.close()
        return events

    def stop(self) -> int:
        """SIGTERM, then the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(120)


def percentile(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else xs[0]


def requests(clients: int, chars: int) -> list[dict]:
    return [{"prompt": PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS)), "max_tokens": chars,
             "temperature": 0} for i in range(clients)]


def timed(server: Server, body: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    text = server.complete(**body)["choices"][0]["text"]
    return time.perf_counter() - t0, text


def load(server: Server, bodies: list[dict]) -> tuple[float, list[float], list[str]]:
    """All `bodies` at once, a client (thread) each: (wall seconds, each one's latency, each one's text)."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(bodies)) as pool:
        done = list(pool.map(lambda b: timed(server, b), bodies))
    return time.perf_counter() - t0, [d[0] for d in done], [d[1] for d in done]


def measure(server: Server, clients: int, chars: int, first_n: int, bad: int) -> dict:
    bodies = requests(clients, chars)
    load(server, bodies)  # the first load pays for what a process builds lazily (threads, each batch size's call)
    t0 = time.perf_counter()
    alone = [timed(server, b)[1] for b in bodies]
    one_s = time.perf_counter() - t0
    rounds = [load(server, bodies) for _ in range(ROUNDS)]
    many_s, latency, together = sorted(rounds, key=lambda r: r[0])[ROUNDS // 2]  # the median round
    if any(r[2] != alone for r in rounds):
        raise ToolError("concurrent greedy texts differ from the same requests one at a time; this is a bug")
    first: list[float] = []
    for i in range(first_n):
        server.stream({"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": chars, "temperature": 0}, first)
    malformed = [b"{", b"[]", b'{"prompt": 1}', b'{"prompt": "a", "n": -1}', b'{"max_tokens": "x"}']
    statuses: list[int] = []

    def burst() -> None:
        with ThreadPoolExecutor(16) as pool:
            statuses.extend(pool.map(lambda i: server.call("POST", "/v1/completions",
                                                           raw=malformed[i % len(malformed)])[0], range(bad)))

    hammer = threading.Thread(target=burst)
    hammer.start()
    under_s, under_latency, under_texts = load(server, bodies)
    hammer.join()
    return {"clients": clients, "chars": chars, "one_at_a_time_chars_per_s": clients * chars / one_s,
            "concurrent_chars_per_s": clients * chars / many_s, "speedup": one_s / many_s,
            "latency_p50_s": percentile(latency, 50), "latency_p99_s": percentile(latency, 99),
            "first_char_p50_s": percentile(first, 50), "first_char_p99_s": percentile(first, 99),
            "bad_requests": bad, "bad_answered_4xx": sum(400 <= s < 500 for s in statuses),
            "valid_under_burst_ok": sum(t == a for t, a in zip(under_texts, alone)),
            "under_burst_chars_per_s": clients * chars / under_s, "under_burst_latency_p99_s":
                percentile(under_latency, 99)}


def table(r: dict) -> str:
    return "\n".join([
        "| figure | value |", "|---|---|",
        f"| {r['clients']} clients x {r['chars']} characters, one at a time | {r['one_at_a_time_chars_per_s']:,.0f} "
        "chars/s |",
        f"| the same, all at once | {r['concurrent_chars_per_s']:,.0f} chars/s ({r['speedup']:.1f}x) |",
        f"| latency of one of them, all at once | p50 {r['latency_p50_s'] * 1e3:.0f} ms, p99 "
        f"{r['latency_p99_s'] * 1e3:.0f} ms |",
        f"| first streamed character, idle server | p50 {r['first_char_p50_s'] * 1e3:.1f} ms, p99 "
        f"{r['first_char_p99_s'] * 1e3:.1f} ms |",
        f"| {r['bad_requests']} malformed requests during the load | {r['bad_answered_4xx']} answered 4xx; "
        f"{r['valid_under_burst_ok']}/{r['clients']} valid ones their text, p99 "
        f"{r['under_burst_latency_p99_s'] * 1e3:.0f} ms |"])


def main() -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a trained run directory (e.g. of --preset shakespeare-cpu)")
    p.add_argument("--clients", type=positive_int, default=64)
    p.add_argument("--chars", type=positive_int, default=200, help="characters each request asks for")
    p.add_argument("--first", type=positive_int, default=50, help="streamed requests timed to their first event")
    p.add_argument("--bad", type=positive_int, default=1000, help="malformed requests sent during the load")
    p.add_argument("--json-out", metavar="FILE")
    args, serve_flags = p.parse_known_args()
    if not Path(args.run).is_dir():
        raise ToolError(f"{args.run} is not a run directory; pass --run with a directory written by 'jaxrnn train'")
    server = Server([args.run], *serve_flags)
    try:
        r = measure(server, args.clients, args.chars, args.first, args.bad)
    finally:
        code = server.stop()
    r["server_exit"] = code
    print(table(r), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(r, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
