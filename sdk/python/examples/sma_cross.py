#!/usr/bin/env python3
"""sma-cross in Python: the built-in strategy of trading/src/strategy/sma_cross.rs, decision
for decision.

Moving averages of ``fastPeriod`` and ``slowPeriod`` closes. From the first candle with
``slowPeriod`` closes on, each candle has a side: the sign of fast - slow, compared without a
division (fast_sum * slow against slow_sum * fast), so a tie is a true tie. A tie neither fires
nor changes the side remembered; a cross fires on the candle whose side is the opposite of the
side remembered; the first side after warm-up is only remembered. On a cross the strategy
trades to +order_size (fast above) or -order_size (below) in one market order.
"""

import os
import sys
from collections import deque
from decimal import Decimal

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from runfleet_strategy import Strategy, market, run  # noqa: E402


class SmaCross(Strategy):
    def on_start(self, parameters, instruments, timeframe, state):
        self.fast = int(parameters["fastPeriod"])
        self.slow = int(parameters["slowPeriod"])
        self.tracks = {}
        for name, t in ((state or {}).get("tracks") or {}).items():
            self.tracks[name] = {
                "closes": deque((Decimal(c) for c in t["closes"]), maxlen=self.slow),
                "above": int(t["above"]),
            }

    def on_candle(self, ctx, candle):
        track = self.tracks.setdefault(
            ctx.instrument["name"], {"closes": deque(maxlen=self.slow), "above": 0}
        )
        closes = track["closes"]
        closes.append(candle.close)
        if len(closes) < self.slow or len(closes) < self.fast:
            return []
        values = list(closes)
        fast_sum = sum(values[-self.fast:], Decimal(0))
        slow_sum = sum(values[-self.slow:], Decimal(0))
        fast_side = fast_sum * self.slow
        slow_side = slow_sum * self.fast
        if fast_side == slow_side:
            return []
        now = 1 if fast_side > slow_side else -1
        crossed = track["above"] != 0 and track["above"] != now
        track["above"] = now
        if not crossed:
            return []
        side, goal = ("buy", ctx.order_size) if now > 0 else ("sell", -ctx.order_size)
        amount = abs(goal - ctx.position)
        if amount == 0:
            return []
        return [market(side, amount)]

    def save_state(self):
        return {
            "tracks": {
                name: {"closes": [str(c) for c in t["closes"]], "above": t["above"]}
                for name, t in self.tracks.items()
            }
        }


if __name__ == "__main__":
    run(SmaCross())
