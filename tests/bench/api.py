"""GET /api/v1/tasks/{id} of a completed task, beside a bare Falcon route on the same waitress.

Starts a private stack (Redis, MinIO, API, one worker), completes one task, then runs `wrk`
against three routes in turn, alternating, in the same run:

    bare      ../shared/peers/falcon_hello.py  GET /hello (static JSON): the ceiling
    naive     ../shared/peers/falcon_hello.py  GET /task/<id> (one HGETALL)
    maskflow  GET /api/v1/tasks/{task_id} (completed: the record plus two presigned URLs)

and prints requests/s and maskflow / bare.  maskflow runs as deployed: a bearer token (handed
to wrk in a script, not on its command line), metrics and body limits on.  Needs wrk
(apt-get install wrk).

    .venv/bin/python tests/bench/api.py --seconds 6 --rounds 3

Not collected by pytest.
"""
from __future__ import annotations

import argparse
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import redis  # noqa: E402
import requests  # noqa: E402

from conftest import make_config  # noqa: E402
from maskflow.infra.ops import install  # noqa: E402
from maskflow.infra.ops.processes import free_port, wait_until  # noqa: E402
from maskflow.infra.ops.stack import Stack  # noqa: E402
from maskflow.infra.sdk.client import Client  # noqa: E402

PEER = ROOT.parent / "shared" / "peers" / "falcon_hello.py"
PHOTO = ROOT / "tests" / "fixtures" / "photos" / "astronaut.jpg"


def wrk(url: str, seconds: int, script: Path | None = None) -> float:
    out = subprocess.run(["wrk", "-t2", "-c16", f"-d{seconds}s", *(["-s", str(script)] if script else []), url],
                         capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"{url}: {errors.group(1)} answers were not 2xx")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install -y wrk")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the finally stops the stack
    with tempfile.TemporaryDirectory() as tmp:
        token = secrets.token_urlsafe(24)
        cfg = make_config(Path(tmp), api={"token": token})
        authorised = Path(tmp) / "auth.lua"
        authorised.write_text(f'wrk.headers["Authorization"] = "Bearer {token}"\n')
        stack = Stack(cfg, log=lambda _msg: None)
        stack.up(app=True)
        peer = peer_redis = None
        try:
            client = Client(cfg.api_url, token=token)
            task_id = client.submit(PHOTO)
            assert client.get(task_id, wait=30)["status"] == "completed"
            # The peer logs in to no one: a Redis of its own, as bare as the peer (the stack's
            # has no default user).
            peer_port, peer_redis_port = free_port(), free_port()
            peer_redis = subprocess.Popen([str(install.redis_server()), "--bind", "127.0.0.1", "--port",
                                           str(peer_redis_port), "--save", "", "--appendonly", "no"],
                                          cwd=tmp, stdout=subprocess.DEVNULL)
            wait_until(lambda: redis.Redis(port=peer_redis_port).ping(), "the peer's Redis", 20)
            peer = subprocess.Popen([sys.executable, str(PEER), str(peer_port), str(peer_redis_port)])
            peer_url = f"http://127.0.0.1:{peer_port}"
            wait_until(lambda: requests.get(f"{peer_url}/hello", timeout=1).ok,
                       "the peer", 20)
            urls = {"bare": f"{peer_url}/hello", "naive": f"{peer_url}/task/abc",
                    "maskflow": f"{cfg.api_url}/api/v1/tasks/{task_id}"}
            rates: dict[str, list[float]] = {name: [] for name in urls}
            for _ in range(args.rounds):
                for name, url in urls.items():
                    rates[name].append(wrk(url, args.seconds, authorised if name == "maskflow" else None))
        finally:
            for proc in (peer, peer_redis):
                if proc is not None:
                    proc.terminate()
                    proc.wait()
            stack.down()
    bare = statistics.median(rates["bare"])
    print(f"wrk -t2 -c16 -d{args.seconds}s, {args.rounds} alternating rounds, median req/s")
    for name, samples in rates.items():
        median = statistics.median(samples)
        print(f"{name:9s} {median:8.0f} req/s  ({', '.join(f'{s:.0f}' for s in samples)})  "
              f"{median / bare:5.2f}x bare")
    per_round = [m / b for m, b in zip(rates["maskflow"], rates["bare"])]
    print(f"maskflow / bare per round: {', '.join(f'{r:.2f}' for r in per_round)} "
          f"(spread {min(per_round):.2f}-{max(per_round):.2f})")


if __name__ == "__main__":
    main()
