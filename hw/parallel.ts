/**
 * hw/parallel.ts — the parallel engine: emulated CPUs run in worker_threads attached to the same
 * machine buffer, so hardware races really happen — A/D updates against other threads' entry
 * writes, TLB fills against shootdowns. IPIs go through the mailboxes in the buffer and are
 * acknowledged with Atomics; a sender waits for its acknowledgements by spinning.
 *
 * Agents cannot be sent to a worker as closures, so each CPU is given an agent *specification*:
 * a module (URL or absolute path), the name of a factory it exports, and JSON-serialisable
 * arguments. Each worker imports the module and calls `factory(args, cpuIndex, machine)`.
 * The same hw/ code runs in every worker; only the engine differs from the deterministic one.
 *
 * Every worker builds its agents (imports, factories) first; then all start together, so no CPU
 * runs while another worker is still loading code (that start-up would both skew the race and
 * share the host's cores with the CPUs already running).
 *
 * Wall-clock time in this engine is real; virtual clocks still advance by the cost model but
 * interleavings are whatever the host scheduler makes them, so results are not reproducible by
 * seed (use the deterministic engine for that).
 */

import { Worker } from 'node:worker_threads';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { Machine } from './machine.ts';
import { EngineError } from './engine.ts';

export interface AgentSpec {
  /** Module URL (file:) or absolute path. */
  module: string;
  /** Exported factory: (args, cpuIndex, machine) => Agent. */
  export: string;
  args?: unknown;
}

export interface ParallelOptions {
  /** Worker threads to spread the CPUs over (default: one per CPU with an agent, at most 2). */
  workers?: number;
  /** Quantum in cycles between mailbox polls and agent switches (default 20,000). */
  quantum?: number;
  /** Give up after this much wall time (default 120 s). */
  timeoutMs?: number;
}

export interface ParallelResult {
  wallMs: number;
  workers: number;
  /** Per worker: wall milliseconds spent running agents. */
  workerMs: number[];
}

/** Words of the coordination buffer shared with the workers. */
export const P_DONE = 0; // workers whose agents have all finished
export const P_ABORT = 1; // set by the main thread to stop everything
export const P_READY = 2; // workers that have built their agents (the start barrier)
export const P_WORDS = 4;

export class ParallelEngine {
  private readonly specs = new Map<number, AgentSpec>();

  constructor(
    readonly machine: Machine,
    private readonly options: ParallelOptions = {},
  ) {}

  assign(cpu: number, spec: AgentSpec): void {
    this.machine.cpu(cpu);
    if (typeof spec?.module !== 'string' || typeof spec.export !== 'string') throw new EngineError('an agent spec needs { module, export, args? }');
    this.specs.set(cpu, spec);
  }

  async run(): Promise<ParallelResult> {
    const cpus = [...this.specs.keys()].sort((a, b) => a - b);
    if (cpus.length === 0) throw new EngineError('no CPU has an agent');
    const nWorkers = Math.max(1, Math.min(this.options.workers ?? Math.min(2, cpus.length), cpus.length));
    const groups: number[][] = Array.from({ length: nWorkers }, () => []);
    cpus.forEach((c, i) => groups[i % nWorkers]!.push(c));
    // L1 hits on this thread are counted lazily (see Cpu.sync): fold them into the buffer, with
    // the LRU clock, before the workers attach their own views of the CPUs.
    for (const c of this.machine.cpus) c.sync();
    const coord = new Int32Array(new SharedArrayBuffer(P_WORDS * 4));
    const workerFile = new URL('./parallel-worker-entry.mjs', import.meta.url);
    const t0 = performance.now();
    const timeoutMs = this.options.timeoutMs ?? 120_000;
    const workers: Worker[] = [];
    const results = await new Promise<number[]>((resolve, reject) => {
      const times: number[] = new Array(nWorkers).fill(0);
      let finished = 0;
      let failed = false;
      const timer = setTimeout(() => {
        failed = true;
        Atomics.store(coord, P_ABORT, 1);
        for (const w of workers) void w.terminate();
        reject(new EngineError(`parallel run exceeded ${timeoutMs} ms`));
      }, timeoutMs);
      groups.forEach((group, wi) => {
        const w = new Worker(fileURLToPath(workerFile), {
          workerData: {
            sab: this.machine.sab,
            coord: coord.buffer,
            workers: nWorkers,
            quantum: this.options.quantum ?? 20_000,
            cpus: group.map((c) => ({ index: c, spec: normalise(this.specs.get(c)!) })),
          },
        });
        workers.push(w);
        w.on('message', (m: { type: string; ms?: number; message?: string }) => {
          if (m.type === 'finished') {
            times[wi] = m.ms ?? 0;
            if (++finished === nWorkers && !failed) {
              clearTimeout(timer);
              resolve(times);
            }
          } else if (m.type === 'error' && !failed) {
            failed = true;
            clearTimeout(timer);
            Atomics.store(coord, P_ABORT, 1);
            for (const x of workers) void x.terminate();
            reject(new EngineError(`worker ${wi}: ${m.message}`));
          }
        });
        w.on('error', (e) => {
          if (failed) return;
          failed = true;
          clearTimeout(timer);
          Atomics.store(coord, P_ABORT, 1);
          for (const x of workers) void x.terminate();
          reject(new EngineError(`worker ${wi} failed: ${e.message}`));
        });
      });
    });
    await Promise.all(workers.map((w) => w.terminate()));
    // The workers synced their CPUs into the buffer; take them back on this thread.
    for (const c of this.machine.cpus) c.adopt();
    return { wallMs: performance.now() - t0, workers: nWorkers, workerMs: results };
  }
}

function normalise(spec: AgentSpec): AgentSpec {
  const module = spec.module.startsWith('file:') ? spec.module : pathToFileURL(spec.module).href;
  return { module, export: spec.export, args: spec.args ?? null };
}
