#!/usr/bin/env python3
"""Start, observe and stop a runfleet runner from redis-py alone.

Follows only docs/redis-schema.md, "Admission from any Redis client": builds the admission and
stop scripts from the repository's Lua files, seals the credentials with the fleet's key, admits
a job with EVALSHA, waits until a worker node runs it and its heartbeat lands, stops it in hold
mode and waits until it is stopped with its slot freed.

A worker node of the fleet must be running (the whole-fleet test `any_client` starts one).
Every option falls back on the fleet's own setting in the environment:

    --redis-url        RUNFLEET__REDIS__URL                  default redis://127.0.0.1:6379
    --prefix           RUNFLEET__REDIS__KEY_PREFIX           default runfleet
    --queue            RUNFLEET__QUEUE__NAME                 default jobs
    --credentials-key  RUNFLEET__SECURITY__CREDENTIALS_KEY   required (base64 of 32 bytes)

Needs the PyPI packages in requirements.txt beside this file. Exits 0 when every step held,
and 1 with a message saying which did not.
"""

import argparse
import base64
import json
import os
import sys
import time
import uuid
from pathlib import Path

import redis
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "shared" / "src" / "scripts"

# The 15 context arguments (docs/redis-schema.md, section 2) with the documented defaults;
# ARGV[1] (prefix) and ARGV[12] (ready list) are filled in from the options.
DEFAULT_CONTEXT = [
    None,  # 1 redis.key_prefix
    "1", "3", "10", "50",  # 2-5 tiers.free, basic, pro, enterprise
    "300000",  # 6 breaker.window_ms
    "86400",  # 7 retention of an ended job's record, seconds
    "0",  # 8 testing.audit
    "10000", "10000", "5000",  # 9-11 limits.*
    None,  # 12 the ready list key
    "100000", "604800000",  # 13-14 events.max_len, events.max_age_ms
    "",  # 15 the wake-up channel (a sharded fleet's; none here)
]


class Failed(Exception):
    """A step of the scenario did not hold."""


def say(message):
    print(f"any-client: {message}", flush=True)


def options():
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--redis-url", default=env("RUNFLEET__REDIS__URL", "redis://127.0.0.1:6379"))
    p.add_argument("--prefix", default=env("RUNFLEET__REDIS__KEY_PREFIX", "runfleet"))
    p.add_argument("--queue", default=env("RUNFLEET__QUEUE__NAME", "jobs"))
    p.add_argument("--credentials-key", default=env("RUNFLEET__SECURITY__CREDENTIALS_KEY"))
    p.add_argument("--timeout", type=float, default=60.0, help="seconds each wait may take")
    args = p.parse_args()
    if not args.credentials_key:
        p.error("the fleet's credentials key is needed: --credentials-key or "
                "RUNFLEET__SECURITY__CREDENTIALS_KEY")
    return args


def script(body):
    """A store script: the prelude, one newline, the body (section 1)."""
    prelude = (SCRIPTS / "lib.lua").read_text(encoding="utf-8")
    return prelude + "\n" + (SCRIPTS / body).read_text(encoding="utf-8")


def key_part(part):
    """One part of a key name, escaped as the schema says (% first, then : { })."""
    for raw, escaped in (("%", "%25"), (":", "%3A"), ("{", "%7B"), ("}", "%7D")):
        part = part.replace(raw, escaped)
    return part


def seal(credentials_key, job_id, api_key, api_secret):
    """Sealed credentials (section 4): AES-256-GCM, 12-byte random nonce, the job id as AAD."""
    try:
        key = base64.b64decode(credentials_key, validate=True)
    except ValueError as e:
        raise Failed(f"the credentials key is not base64: {e}") from e
    if len(key) != 32:
        raise Failed(f"the credentials key decodes to {len(key)} bytes, not 32")
    nonce = os.urandom(12)
    plaintext = json.dumps({"apiKey": api_key, "apiSecret": api_secret}).encode("utf-8")
    sealed = AESGCM(key).encrypt(nonce, plaintext, job_id.encode("utf-8"))  # ciphertext||tag
    return {
        "nonce": base64.b64encode(nonce).decode("ascii"),
        "ciphertext": base64.b64encode(sealed).decode("ascii"),
    }


def wait_for(what, timeout, check):
    """Calls check() every 100 ms until it returns a true value; fails after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise Failed(f"timed out after {timeout:.0f} s waiting for: {what}")
        time.sleep(0.1)


def number(job, field):
    try:
        return int(job.get(field, ""))
    except ValueError:
        return None


def run(args):
    r = redis.Redis.from_url(args.redis_url, decode_responses=True)
    try:
        r.ping()
    except redis.RedisError as e:
        raise Failed(f"cannot reach Redis at {args.redis_url}: {e}") from e

    context = list(DEFAULT_CONTEXT)
    context[0] = args.prefix
    context[11] = f"{args.prefix}:queue:{args.queue}:ready"
    admit_sha = r.script_load(script("store_admit.lua"))
    stop_sha = r.script_load(script("store_stop.lua"))

    job_id = f"job-{uuid.uuid4()}"
    user = f"any-client-{uuid.uuid4().hex[:12]}"
    strategy = "any-client"
    spec = {
        "id": job_id,
        "userId": user,
        "strategyId": strategy,
        "brokerId": "paper",
        "config": {
            "name": "BTC Scalping",
            "type": "scalping",
            "parameters": {"timeframe": "1m", "rsiPeriod": 14},
            "riskManagement": {"maxPositionSize": 100, "stopLossPercent": 2,
                               "takeProfitPercent": 3},
            "instruments": ["BTC-PERPETUAL"],
        },
        "credentials": seal(args.credentials_key, job_id, "any-client-key", "any-client-secret"),
    }

    # Section 5: admit; the script queues the job in the same step.
    reply = r.evalsha(admit_sha, 0, *context, job_id, user, strategy, json.dumps(spec))
    if reply[0] != 1:
        raise Failed(f"admission refused: reply {reply} (docs/redis-schema.md, section 5)")
    say(f"admitted {job_id} for {user}: tier {reply[1]}, {reply[3]} of {reply[2]} slots")

    # Section 6: observe the job hash until a node runs it and its heartbeat lands.
    job_key = f"{args.prefix}:job:{key_part(job_id)}"

    def running():
        job = r.hgetall(job_key)
        if job.get("status") in ("failed", "stopped", "crashed"):
            raise Failed(f"the job became {job['status']} before running: {job.get('error')}")
        epoch, started, hb = number(job, "epoch"), number(job, "started"), number(job, "hb")
        if job.get("status") == "running" and epoch and epoch >= 1 and started and hb and hb > started:
            return job
        return None

    job = wait_for("the job running with a heartbeat after its start", args.timeout, running)
    say(f"running on {job['node']}: epoch {job['epoch']}, started {job['started']}, "
        f"heartbeat {job['hb']}")

    # Section 7: stop it, leaving positions open (hold), and wait for the node to confirm.
    reply = r.evalsha(stop_sha, 0, *context, job_id, "hold")
    if reply[0] != "sent":
        raise Failed(f"stopping a running job should send it to its node, but the reply was {reply}")
    say(f"stop sent to {reply[1]}")

    def stopped():
        job = r.hgetall(job_key)
        if job.get("status") == "failed":
            raise Failed(f"the job failed instead of stopping: {job.get('error')}")
        return job if job.get("status") == "stopped" else None

    job = wait_for("the job stopped", args.timeout, stopped)
    if job.get("stop_mode") != "hold":
        raise Failed(f"stop_mode is {job.get('stop_mode')!r}, not 'hold'")
    slots_key = f"{args.prefix}:user:{key_part(user)}:active"
    slots = r.smembers(slots_key)
    if slots:
        raise Failed(f"the user's slot set {slots_key} still holds {sorted(slots)}")
    say(f"stopped (ended {job['ended']}), the user's slot set is empty")


def main():
    args = options()
    try:
        run(args)
    except Failed as e:
        print(f"any-client: FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    except redis.RedisError as e:
        print(f"any-client: FAILED: Redis error: {e}", file=sys.stderr, flush=True)
        return 1
    say("ok: started, observed and stopped a runner from redis-py alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
