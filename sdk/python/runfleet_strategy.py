"""runfleet strategy SDK: write a runfleet strategy in Python (standard library only).

A strategy is a subclass of :class:`Strategy`; :func:`run` speaks the JSON-lines protocol of
docs/strategy-protocol.md over stdin and stdout: it answers ``hello`` with ``ready`` (after
``on_start``), each ``candle`` with the orders ``on_candle`` returns and the state
``save_state`` gives, and exits on ``stop`` or when stdin closes.

Money and amounts are :class:`decimal.Decimal`, read from and written as strings, never floats.
Do not print to stdout yourself: it is the protocol's channel. Use :meth:`Strategy.log` (or
stderr, which runfleet copies into the runner's logs, bounded).

Copy this one file next to your strategy, or ``pip install ./sdk/python``.
"""

import decimal
import json
import sys
from decimal import Decimal

__all__ = ["Strategy", "Context", "Candle", "market", "target", "run", "PROTOCOL"]

#: The protocol version this SDK speaks.
PROTOCOL = 1

#: Decimal arithmetic as runfleet's (rust_decimal: 28 significant digits, half-even rounding).
CONTEXT = decimal.Context(prec=28, rounding=decimal.ROUND_HALF_EVEN)


class Candle:
    """A completed candle: ``start_ms``, ``period_ms``, ``open``, ``high``, ``low``, ``close``."""

    __slots__ = ("start_ms", "period_ms", "open", "high", "low", "close")

    def __init__(self, d):
        self.start_ms = int(d["startMs"])
        self.period_ms = int(d["periodMs"])
        self.open = Decimal(d["open"])
        self.high = Decimal(d["high"])
        self.low = Decimal(d["low"])
        self.close = Decimal(d["close"])


class Context:
    """What the strategy knows when a candle completes: the ``instrument`` (its spec, a dict),
    the signed ``position`` held on it, and ``order_size``, the largest position the risk
    limits allow (the size to trade)."""

    __slots__ = ("instrument", "position", "order_size")

    def __init__(self, instrument, position, order_size):
        self.instrument = instrument
        self.position = position
        self.order_size = order_size


def market(side, amount, reduce_only=False):
    """A market order: ``side`` ``"buy"`` or ``"sell"``, ``amount`` in the instrument's unit."""
    order = {"kind": "market", "side": side, "amount": str(amount)}
    if reduce_only:
        order["reduceOnly"] = True
    return order


def target(position):
    """Trade at market to hold ``position`` (signed, negative short)."""
    return {"kind": "target", "position": str(position)}


class Strategy:
    """Base class. Override :meth:`on_candle`; the rest is optional."""

    def __init__(self):
        self.parameters = {}
        self.instruments = {}
        self.timeframe = "1m"
        self._out = sys.stdout

    def on_start(self, parameters, instruments, timeframe, state):
        """Called once with the ``hello``: ``state`` is what :meth:`save_state` returned last
        (``None`` on a fresh start); restore from it."""

    def on_candle(self, ctx, candle):
        """Returns a list of orders (:func:`market`, :func:`target`) for ``ctx.instrument``."""
        return []

    def on_fill(self, fill):
        """Called with each fill on the account (a dict of decimal strings) before the next
        candle."""

    def on_account(self, positions):
        """Called with every position on the account (dicts of decimal strings: instrument,
        size, entryPrice, realizedPnl) when fills changed them, before the next candle."""

    def save_state(self):
        """JSON-serialisable state saved with the account; ``None`` saves nothing new."""
        return None

    def log(self, message, level="info"):
        """A line for the runner's logs."""
        _send(self._out, {"type": "log", "level": level, "message": str(message)})


def _send(out, msg):
    out.write(json.dumps(msg, separators=(",", ":")))
    out.write("\n")
    out.flush()


def run(strategy, stdin=None, stdout=None):
    """Runs ``strategy`` until ``stop`` or end of input."""
    decimal.setcontext(CONTEXT)
    stdin = stdin or sys.stdin
    out = stdout or sys.stdout
    strategy._out = out
    for line in stdin:
        msg = json.loads(line)
        kind = msg["type"]
        if kind == "hello":
            if msg["protocol"] != PROTOCOL:
                raise SystemExit("unsupported protocol version %r" % msg["protocol"])
            strategy.parameters = msg["parameters"]
            strategy.instruments = {i["name"]: i for i in msg["instruments"]}
            strategy.timeframe = msg["timeframe"]
            strategy.on_start(strategy.parameters, strategy.instruments, strategy.timeframe,
                              msg.get("state"))
            _send(out, {"type": "ready"})
        elif kind == "candle":
            ctx = Context(strategy.instruments[msg["instrument"]], Decimal(msg["position"]),
                          Decimal(msg["orderSize"]))
            orders = strategy.on_candle(ctx, Candle(msg["candle"])) or []
            answer = {"type": "orders", "orders": orders}
            state = strategy.save_state()
            if state is not None:
                answer["state"] = state
            _send(out, answer)
        elif kind == "fill":
            strategy.on_fill(msg["fill"])
        elif kind == "account":
            strategy.on_account(msg["positions"])
        elif kind == "stop":
            return
