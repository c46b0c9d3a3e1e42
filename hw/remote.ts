/**
 * hw/remote.ts — user-mode access streams run on worker threads, for the kernel's parallel
 * engine (kernel/sched/parallel.ts). The main thread hands a CPU and a stretch of an access
 * stream to a worker; the worker runs it on its own view of the machine (the same shared
 * buffer: page tables, TLBs, clocks, counters, IPI mailboxes), so several CPUs' user code really
 * runs at once while the kernel runs on the main thread. The worker gives the CPU back, with the
 * index it reached, when the stream stretch ends or something needs the kernel:
 *
 *   EXIT_DONE   the stretch is done;
 *   EXIT_FAULT  access `at` raised an exception (the vector and error code are passed back;
 *               the access was not performed, as a faulting instruction is not);
 *   EXIT_IPI    an IPI is waiting whose vector has no handler on the worker (the kernel's
 *               CALL_FUNCTION: its handler and the flush state it works on are JavaScript
 *               objects of the main thread); access `at` has not been made. VEC_INVALIDATE,
 *               built into the hardware, is taken on the worker like any other message;
 *   EXIT_UNTIL  the CPU's clock reached the limit the scheduler gave (its tick, the end of the
 *               slice or of the turn), so the kernel can preempt;
 *   EXIT_WATCH  an access touched a watched (freed) frame: the hardware recorded it in the
 *               CPU's watch ring as always, and the worker stops at the end of that chunk of at
 *               most 256 accesses (or at the fault that ends it), so the kernel's use-after-free
 *               detector reports it from the task's context.
 *
 * Ownership of a CPU passes with Atomics on its slot's state word: the side that lets go syncs
 * the CPU (Cpu.sync: its lazily counted L1 hits and LRU clock into the buffer), the side that
 * takes over adopts it (Cpu.adopt). Streams are copied once into shared memory and sent to the
 * worker that owns the CPU. The main thread waits for exits with Atomics.waitAsync, so it keeps
 * its event loop; workers sleep on their own word while they have nothing to run.
 */

import { Worker, MessageChannel, type MessagePort } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import type { Machine } from './machine.ts';
import type { Cpu } from './cpu.ts';
import type { AccessStream } from './engine.ts';
import { EngineError } from './engine.ts';

// The slot of CPU i: SLOT_WORDS words at SLOT_BASE + i * SLOT_WORDS.
export const S_STATE = 0; // ST_IDLE, ST_RUN (main → worker), ST_EXITED (worker → main)
export const S_STREAM = 1; // stream id
export const S_FROM = 2; // first index to run
export const S_AT = 3; // the index reached (the next access to make)
export const S_REASON = 4; // EXIT_*
export const S_VECTOR = 5; // EXIT_FAULT: the exception vector
export const S_ERROR = 6; // EXIT_FAULT: its error code
export const S_UNTIL_F64 = 4; // Float64 index within the slot (words 8 and 9): the clock limit
export const SLOT_WORDS = 12;

// Global words.
export const G_MAIN = 0; // bumped and notified by a worker at each exit
export const G_ABORT = 1; // set by the main thread to stop the workers
export const G_WORKER = 2; // G_WORKER + w: bumped and notified by the main thread to wake worker w
export const SLOT_BASE = 8;
export const MAX_WORKERS = SLOT_BASE - G_WORKER;

export const ST_IDLE = 0;
export const ST_RUN = 1;
export const ST_EXITED = 2;

export const EXIT_DONE = 1;
export const EXIT_FAULT = 2;
export const EXIT_IPI = 3;
export const EXIT_UNTIL = 4;
export const EXIT_WATCH = 5;

export interface RemoteExit {
  reason: number;
  /** The next access to make. */
  at: number;
  vector: number;
  error: number;
}

/** A stream copied into shared memory, as sent to a worker. */
export interface SharedStream {
  id: number;
  his: Int32Array;
  los: Int32Array;
  kinds: Uint8Array;
  length: number;
}

export interface RemoteOptions {
  /** Worker threads (default: one per CPU, at most 2). */
  workers?: number;
}

/** The main thread's side: the workers, the slots, the streams sent. */
export class RemoteCpus {
  readonly ctl: Int32Array;
  private readonly ctlF: Float64Array;
  private readonly workers: Worker[] = [];
  private readonly ports: MessagePort[] = [];
  /** Per stream object, its shared copy; per worker, the ids of the copies it has been sent. */
  private readonly shared = new WeakMap<AccessStream, SharedStream>();
  private readonly sent: Set<number>[] = [];
  private nextStreamId = 1;
  /** Per CPU, the exit taken back (null while the CPU is not back from a worker). */
  private readonly exits: (RemoteExit | null)[];
  /** CPUs handed out and not yet taken back. */
  private outstanding = 0;
  /** The first failure a worker reported (the run stops with it). */
  failure: string | null = null;

  private constructor(
    readonly machine: Machine,
    readonly nWorkers: number,
  ) {
    const n = machine.cpus.length;
    const sab = new SharedArrayBuffer((SLOT_BASE + n * SLOT_WORDS) * 4);
    this.ctl = new Int32Array(sab);
    this.ctlF = new Float64Array(sab);
    this.exits = new Array(n).fill(null);
  }

  /** Start the workers (each imports the hardware model first: allow a few hundred ms). */
  static async start(machine: Machine, options: RemoteOptions = {}): Promise<RemoteCpus> {
    const n = machine.cpus.length;
    const want = options.workers ?? Math.min(2, n);
    if (!Number.isInteger(want) || want < 1 || want > MAX_WORKERS) throw new EngineError(`workers must be an integer from 1 to ${MAX_WORKERS}, got ${String(options.workers)}`);
    const rc = new RemoteCpus(machine, Math.min(want, n));
    const file = fileURLToPath(new URL('./remote-worker-entry.mjs', import.meta.url));
    const ready: Promise<void>[] = [];
    for (let w = 0; w < rc.nWorkers; w++) {
      const { port1, port2 } = new MessageChannel();
      const cpus = machine.cpus.map((c) => c.index).filter((i) => i % rc.nWorkers === w);
      const worker = new Worker(file, { workerData: { sab: machine.sab, ctl: rc.ctl.buffer, port: port2, worker: w, cpus }, transferList: [port2] });
      rc.workers.push(worker);
      rc.ports.push(port1);
      rc.sent.push(new Set());
      ready.push(
        new Promise<void>((resolve, reject) => {
          worker.on('message', (m: { type: string; message?: string }) => {
            if (m.type === 'ready') resolve();
            else if (m.type === 'error') {
              rc.failure ??= `remote worker ${w}: ${m.message}`;
              reject(new EngineError(rc.failure));
              rc.wakeMain();
            }
          });
          worker.on('error', (e) => {
            rc.failure ??= `remote worker ${w} failed: ${e.message}`;
            reject(new EngineError(rc.failure));
            rc.wakeMain();
          });
        }),
      );
    }
    try {
      await Promise.all(ready);
    } catch (e) {
      await rc.stop();
      throw e;
    }
    return rc;
  }

  /** Worker that runs CPU `index`. */
  private workerOf(index: number): number {
    return index % this.nWorkers;
  }

  /**
   * Hand `cpu` to its worker to run `stream` from index `from` until it ends, the CPU's clock
   * reaches `until`, or something needs the kernel (see the file header).
   */
  ship(cpu: Cpu, stream: AccessStream, from: number, until: number): void {
    const i = cpu.index;
    const base = SLOT_BASE + i * SLOT_WORDS;
    if (Atomics.load(this.ctl, base + S_STATE) !== ST_IDLE) throw new EngineError(`CPU ${i} is already running user code on a worker`);
    const w = this.workerOf(i);
    const shared = this.share(stream);
    if (!this.sent[w]!.has(shared.id)) {
      this.ports[w]!.postMessage(shared);
      this.sent[w]!.add(shared.id);
    }
    cpu.sync();
    this.exits[i] = null;
    this.ctl[base + S_STREAM] = shared.id;
    this.ctl[base + S_FROM] = from;
    this.ctlF[(base >> 1) + S_UNTIL_F64] = until;
    Atomics.store(this.ctl, base + S_STATE, ST_RUN);
    this.outstanding++;
    Atomics.add(this.ctl, G_WORKER + w, 1);
    Atomics.notify(this.ctl, G_WORKER + w);
  }

  /**
   * Is CPU `index` back from its worker? The first time it is, the main thread takes it over
   * (Cpu.adopt) and keeps the exit for result().
   */
  back(index: number): boolean {
    if (this.exits[index] !== null) return true;
    const base = SLOT_BASE + index * SLOT_WORDS;
    if (Atomics.load(this.ctl, base + S_STATE) !== ST_EXITED) return false;
    const c = this.ctl;
    this.exits[index] = { reason: c[base + S_REASON]!, at: c[base + S_AT]!, vector: c[base + S_VECTOR]!, error: c[base + S_ERROR]! };
    Atomics.store(c, base + S_STATE, ST_IDLE);
    this.outstanding--;
    this.machine.cpu(index).adopt();
    return true;
  }

  /** Is CPU `index` on a worker now (handed out, not back)? */
  away(index: number): boolean {
    return this.exits[index] === null && Atomics.load(this.ctl, SLOT_BASE + index * SLOT_WORDS + S_STATE) !== ST_IDLE;
  }

  /** The exit of CPU `index`'s last stretch (after back() said so). */
  result(index: number): RemoteExit {
    const x = this.exits[index];
    if (x === null || x === undefined) throw new EngineError(`CPU ${index} is not back from its worker`);
    return x;
  }

  /** CPUs handed out and not back yet. */
  get running(): number {
    return this.outstanding;
  }

  /** The exit counter's value, to wait from (read it before looking at the slots). */
  exitCount(): number {
    return Atomics.load(this.ctl, G_MAIN);
  }

  /** Wait, keeping the event loop, until a worker exits after `seen` was read (or `timeoutMs`). */
  async waitExit(seen: number, timeoutMs: number): Promise<void> {
    const r = (Atomics as unknown as { waitAsync(a: Int32Array, i: number, v: number, t: number): { async: boolean; value: Promise<string> | string } }).waitAsync(this.ctl, G_MAIN, seen, timeoutMs);
    if (r.async) await r.value;
  }

  private wakeMain(): void {
    Atomics.add(this.ctl, G_MAIN, 1);
    Atomics.notify(this.ctl, G_MAIN);
  }

  /** The shared copy of `stream` (made once per stream object). */
  private share(stream: AccessStream): SharedStream {
    let s = this.shared.get(stream);
    if (s === undefined) {
      const n = stream.length;
      const his = new Int32Array(new SharedArrayBuffer(n * 4));
      const los = new Int32Array(new SharedArrayBuffer(n * 4));
      const kinds = new Uint8Array(new SharedArrayBuffer(n));
      his.set(stream.his.subarray(0, n));
      los.set(stream.los.subarray(0, n));
      kinds.set(stream.kinds.subarray(0, n));
      s = { id: this.nextStreamId++, his, los, kinds, length: n };
      this.shared.set(stream, s);
    }
    return s;
  }

  /**
   * Stop the workers. A CPU still away is not taken back (its state in the buffer is what the
   * worker left); the kernel's run loop takes every CPU back before it stops them.
   */
  async stop(): Promise<void> {
    Atomics.store(this.ctl, G_ABORT, 1);
    for (let w = 0; w < this.workers.length; w++) {
      Atomics.add(this.ctl, G_WORKER + w, 1);
      Atomics.notify(this.ctl, G_WORKER + w);
    }
    for (const p of this.ports) p.close();
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
