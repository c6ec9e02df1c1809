// BullMQ's side of the runfleet benchmark. runfleet-bench (bench/src/main.rs) spawns
// `node --expose-gc bench.mjs <phase> --redis-port P ...` on the same private Redis and reads
// the JSON lines this prints on stdout; docs/benchmarks.md describes every phase.
//
// Phases:
//   add     --total N --concurrency C     N `queue.add` calls, C in flight at a time
//   bulk    --total N --batch B           N jobs in `addBulk` calls of B jobs
//   pickup  --samples K                   K jobs, one at a time: added -> processing callback
//   steady  --jobs N                      a worker (concurrency N) started on N jobs queued by
//                                         `bulk`; prints {"event":"running",...} when all are
//                                         active, holds them (default lock timings), answers
//                                         "memory" on stdin, ends on "stop"
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { Queue, Worker } from "bullmq";

const [phase, ...rest] = process.argv.slice(2);
const opts = {};
for (let i = 0; i < rest.length; i += 2) opts[rest[i].replace(/^--/, "")] = rest[i + 1];
const int = (name, fallback) => (opts[name] === undefined ? fallback : Number.parseInt(opts[name], 10));
const connection = { host: "127.0.0.1", port: int("redis-port", 6379), maxRetriesPerRequest: null };
const queueName = opts.queue ?? "bench";

// The same payload a runfleet start carries (tests/src/lib.rs `start_request`), so both
// systems move comparable bytes per job.
const payload = (i) => ({
  userId: `user-${i % 50}`,
  strategyId: `s${i}`,
  brokerId: "deribit",
  credentials: { apiKey: `key-user-${i % 50}`, apiSecret: `secret-user-${i % 50}` },
  config: {
    name: "BTC Scalping",
    type: "scalping",
    parameters: { timeframe: "1m", rsiPeriod: 5 },
    riskManagement: { maxPositionSize: 100, stopLossPercent: 2, takeProfitPercent: 3 },
    instruments: ["BTC-PERPETUAL", "ETH-PERPETUAL"],
  },
});

const now = () => performance.timeOrigin + performance.now();
const print = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
const rss = () => {
  globalThis.gc?.();
  globalThis.gc?.();
  return process.memoryUsage().rss;
};

async function add() {
  const total = int("total", 10000);
  const concurrency = int("concurrency", 50);
  const queue = new Queue(queueName, { connection });
  await queue.waitUntilReady();
  let next = 0;
  const cpu = process.cpuUsage();
  const started = now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < total) {
        const i = next++;
        await queue.add("start", payload(i));
      }
    }),
  );
  const seconds = (now() - started) / 1000;
  const used = process.cpuUsage(cpu);
  print({ starts: total, seconds, cpuMicros: used.user + used.system });
  await queue.close();
}

async function bulk() {
  const total = int("total", 10000);
  const batch = int("batch", 1000);
  const queue = new Queue(queueName, { connection });
  await queue.waitUntilReady();
  const started = now();
  for (let done = 0; done < total; done += batch) {
    const n = Math.min(batch, total - done);
    await queue.addBulk(Array.from({ length: n }, (_, k) => ({ name: "start", data: payload(done + k) })));
  }
  print({ starts: total, seconds: (now() - started) / 1000 });
  await queue.close();
}

async function pickup() {
  const samples = int("samples", 200);
  const queue = new Queue(queueName, { connection });
  const waiting = new Map();
  const worker = new Worker(
    queueName,
    async (job) => {
      // The same µs-resolution wall clock as the start's: runfleet's side reads its end the
      // same way (the bench's clock when it sees the claim's event).
      waiting.get(job.id)?.(now());
    },
    { connection, concurrency: 1 },
  );
  await Promise.all([queue.waitUntilReady(), worker.waitUntilReady()]);
  const latencies = [];
  for (let i = 0; i < samples; i++) {
    const jobId = `pickup-${i}`;
    const running = new Promise((resolve) => waiting.set(jobId, resolve));
    const t0 = now();
    await queue.add("start", payload(i), { jobId });
    latencies.push((await running) - t0);
    waiting.delete(jobId);
  }
  print({ latencies_ms: latencies });
  await worker.close();
  await queue.close();
}

async function steady() {
  // The jobs were queued by an earlier `bulk` run: this process is the worker alone, as a
  // runfleet node is.
  const jobs = int("jobs", 5000);
  const holds = [];
  let active = 0;
  let allActive;
  const running = new Promise((resolve) => (allActive = resolve));
  const worker = new Worker(
    queueName,
    () =>
      new Promise((resolve) => {
        holds.push(resolve);
        active += 1;
        if (active === jobs) allActive(now());
      }),
    // Default lockDuration (30 s) and lock renewal (every lockDuration / 2).
    { connection, concurrency: jobs, autorun: false },
  );
  await worker.waitUntilReady();
  // Let start-up garbage go first: the baseline is the connected, idle worker.
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const rssBaseline = rss();
  const t0 = now();
  const done = worker.run();
  const t1 = await running;
  print({ event: "running", drain_ms: t1 - t0, active, pid: process.pid });
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (line.trim() === "memory") print({ event: "memory", rss_baseline: rssBaseline, rss_running: rss(), active });
    if (line.trim() === "stop") break;
  }
  await worker.close(true);
  for (const h of holds) h();
  await done;
  print({ event: "stopped" });
}

const phases = { add, bulk, pickup, steady };
if (!phases[phase]) {
  console.error(`usage: bench.mjs <${Object.keys(phases).join("|")}> [--redis-port P] [options]`);
  process.exit(2);
}
await phases[phase]();
process.exit(0);
