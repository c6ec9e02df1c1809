#!/usr/bin/env python3
"""scalping in Python: the built-in RSI strategy of trading/src/strategy/scalping.rs and the
``rsi`` of indicators.rs, decision for decision.

RSI (Cutler's: simple means of gains and losses) over ``rsiPeriod`` closes. Flat and RSI below
30: buy; flat and above 70: sell short; a long closes (reduce-only) once RSI is 50 or more, a
short once it is 50 or less. A window without any change reads 50, one that only rose 100,
one that only fell 0. Arithmetic in decimal with runfleet's context (28 digits, half-even).
"""

import os
import sys
from collections import deque
from decimal import Decimal

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from runfleet_strategy import Strategy, market, run  # noqa: E402

ZERO, HUNDRED = Decimal(0), Decimal(100)


def rsi(closes, period):
    if period == 0 or len(closes) <= period:
        return None
    values = list(closes)[-(period + 1):]
    gain, loss = ZERO, ZERO
    for a, b in zip(values, values[1:]):
        d = b - a
        if d > 0:
            gain += d
        else:
            loss -= d
    if loss == 0:
        return Decimal(50) if gain == 0 else HUNDRED
    return HUNDRED - HUNDRED / (Decimal(1) + gain / loss)


class Scalping(Strategy):
    def on_start(self, parameters, instruments, timeframe, state):
        self.period = int(parameters.get("rsiPeriod", 14))
        self.closes = {
            name: deque((Decimal(c) for c in closes), maxlen=self.period + 1)
            for name, closes in ((state or {}).get("closes") or {}).items()
        }

    def on_candle(self, ctx, candle):
        closes = self.closes.setdefault(ctx.instrument["name"], deque(maxlen=self.period + 1))
        closes.append(candle.close)
        value = rsi(closes, self.period)
        if value is None:
            return []
        pos = ctx.position
        if pos == 0 and value < 30:
            return [market("buy", ctx.order_size)]
        if pos == 0 and value > 70:
            return [market("sell", ctx.order_size)]
        if pos > 0 and value >= 50:
            return [market("sell", pos, reduce_only=True)]
        if pos < 0 and value <= 50:
            return [market("buy", -pos, reduce_only=True)]
        return []

    def save_state(self):
        return {"closes": {n: [str(c) for c in cs] for n, cs in self.closes.items()}}


if __name__ == "__main__":
    run(Scalping())
