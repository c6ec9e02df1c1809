#!/usr/bin/env python3
"""A strategy that misbehaves on purpose, as its first argument says (trading/tests/external.rs):

crash-at-start   exits before answering hello
crash-mid-run    answers 5 candles, then raises
silent           never answers a candle
garbage          answers a candle with a line that is not the protocol
flood            answers a candle with 10,000 log messages
long-line        answers a candle with a 1 MiB line
memory           allocates 1 GiB on the first candle
cpu              spins the CPU on the first candle
oversize         buys 1000 times the order size on every candle
env              saves its whole environment as its state, then behaves
observe          alternates target positions +orderSize and 0, saving what fill and
                 account messages it was sent as its state
"""

import json
import os
import sys

mode = sys.argv[1]


def send(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


sys.stderr.write("misbehave: mode %s\n" % mode)
sys.stderr.flush()

if mode == "crash-at-start":
    sys.stderr.write("failing at start on purpose\n")
    sys.exit(3)

candles = 0
seen = {"fills": [], "accounts": []}
for line in sys.stdin:
    msg = json.loads(line)
    if msg["type"] == "hello":
        send({"type": "ready"})
    elif msg["type"] == "candle":
        candles += 1
        if mode == "crash-mid-run" and candles > 5:
            raise RuntimeError("crashing mid-run on purpose")
        if mode == "silent":
            continue
        if mode == "garbage":
            sys.stdout.write("this is not json\n")
            sys.stdout.flush()
            continue
        if mode == "flood":
            for i in range(10_000):
                send({"type": "log", "level": "info", "message": "flood %d" % i})
        if mode == "long-line":
            sys.stdout.write("x" * (1 << 20))
            sys.stdout.flush()
        if mode == "memory":
            hog = bytearray(1 << 30)
        if mode == "cpu":
            while True:
                pass
        orders = []
        if mode == "observe":
            goal = msg["orderSize"] if candles % 2 == 1 else "0"
            orders = [{"kind": "target", "position": goal}]
        if mode == "oversize":
            amount = str(int(msg["orderSize"]) * 1000)
            orders = [{"kind": "market", "side": "buy", "amount": amount}]
        state = None
        if mode == "env":
            state = {"env": dict(os.environ), "candles": candles, "uid": os.getuid(),
                     "gid": os.getgid(), "cwd": os.getcwd()}
        if mode == "observe":
            state = seen
        answer = {"type": "orders", "orders": orders}
        if state is not None:
            answer["state"] = state
        send(answer)
    elif msg["type"] == "fill":
        seen["fills"].append(msg["fill"])
    elif msg["type"] == "account":
        seen["accounts"].append(msg["positions"])
    elif msg["type"] == "stop":
        break
