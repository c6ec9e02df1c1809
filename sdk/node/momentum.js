#!/usr/bin/env node
// A runfleet strategy in plain Node.js (no dependencies): momentum over `lookback` candles.
// Holds +orderSize while the close is above the close `lookback` candles ago, -orderSize while
// below, flat on a tie; answers with a target position, so the runtime computes the order.
// Speaks the JSON-lines protocol of docs/strategy-protocol.md on stdin/stdout.
//
// Prices and sizes are decimal strings; this example compares prices as numbers, which is
// exact enough for a sign, and sends back `orderSize` as the string it was given.
'use strict';

const readline = require('readline');

let lookback = 10;
let closes = {};

function send(msg) {
  process.stdout.write(JSON.stringify(msg) + '\n');
}

function negate(s) {
  return s.startsWith('-') ? s.slice(1) : '-' + s;
}

const rl = readline.createInterface({ input: process.stdin, terminal: false });
rl.on('line', (line) => {
  const msg = JSON.parse(line);
  switch (msg.type) {
    case 'hello':
      if (msg.protocol !== 1) process.exit(2);
      lookback = Number(msg.parameters.lookback || 10);
      closes = (msg.state && msg.state.closes) || {};
      send({ type: 'ready' });
      break;
    case 'candle': {
      const list = (closes[msg.instrument] = closes[msg.instrument] || []);
      list.push(msg.candle.close);
      while (list.length > lookback + 1) list.shift();
      const orders = [];
      if (list.length > lookback) {
        const now = Number(list[list.length - 1]);
        const then = Number(list[0]);
        const goal = now > then ? msg.orderSize : now < then ? negate(msg.orderSize) : '0';
        orders.push({ kind: 'target', position: goal });
      }
      send({ type: 'orders', orders, state: { closes } });
      break;
    }
    case 'stop':
      process.exit(0);
      break;
    default:
      break;
  }
});
rl.on('close', () => process.exit(0));
