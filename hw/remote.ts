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
 * worker that owns the CPU.
 *
 * Everything here is synchronous, so a kernel run on the parallel engine is an ordinary call like
 * a run on the deterministic one: the main thread waits with Atomics.wait (Node allows it there),
 * and reads what a worker reports from shared words and with receiveMessageOnPort, never from an
 * event. Workers are pooled per process and outlive the machine they served: the first run
 * starts them (each imports the hardware model: a few hundred ms), later runs, on any machine,
 * attach the idle ones in well under a millisecond. Idle workers are unref'd, so they never keep
 * the process alive; they sleep on their home word until the next attach.
 */

import { Worker, MessageChannel, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
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

// A pooled worker's home words (its own small buffer, for its whole life).
export const H_CALL = 0; // bumped and notified by the main thread: an attach message is on the port
export const H_STATE = 1; // W_*: written by the worker, notified
export const W_STARTING = 0;
export const W_IDLE = 1;
export const W_ATTACHED = 2;
export const W_FAILED = 3;
export const HOME_WORDS = 2;

/** What a worker is sent to serve one machine. */
export interface AttachMessage {
  type: 'attach';
  sab: SharedArrayBuffer;
  ctl: SharedArrayBuffer;
  worker: number;
  cpus: number[];
}

/** A worker of the process's pool. */
interface PooledWorker {
  worker: Worker;
  /** The main thread's end of its channel: streams and attach messages out, failures in. */
  port: MessagePort;
  home: Int32Array;
  /** Exited or failed: never attached again. */
  gone: boolean;
}

/** Idle workers of this process. */
const idle: PooledWorker[] = [];
/**
 * Stream ids, unique in the process: a pooled worker may still hold (or later drain) a stream of
 * an earlier machine, which must never be taken for one of this machine's.
 */
let nextStreamId = 1;

/** What the pool has done in this process (for tests and curious users). */
export interface RemotePoolStats {
  /** Workers started. */
  started: number;
  /** Machines served: attaches of a worker to a machine. */
  attaches: number;
  /** Stretches of access streams handed to workers. */
  stretches: number;
  /** Workers idle in the pool now. */
  idle: number;
}

const stats = { started: 0, attaches: 0, stretches: 0 };

export function remotePoolStats(): RemotePoolStats {
  return { ...stats, idle: idle.length };
}

/** Longest wait for a worker to start (import the model) or to attach or detach, in ms. */
const START_MS = 60_000;

function spawnWorker(): PooledWorker {
  const file = fileURLToPath(new URL('./remote-worker-entry.mjs', import.meta.url));
  const { port1, port2 } = new MessageChannel();
  const home = new Int32Array(new SharedArrayBuffer(HOME_WORDS * 4));
  const worker = new Worker(file, { workerData: { home: home.buffer, port: port2 }, transferList: [port2] });
  const pw: PooledWorker = { worker, port: port1, home, gone: false };
  stats.started++;
  // Reported through the home word and the port as well; these only keep the pool clean (and an
  // 'error' event with no listener would end the process).
  worker.on('error', () => void (pw.gone = true));
  worker.on('exit', () => void (pw.gone = true));
  worker.unref();
  port1.unref();
  return pw;
}

/** The failure a worker reported on its port (or a generic one). */
function failureOf(pw: PooledWorker, what: string): string {
  for (let m = receiveMessageOnPort(pw.port); m !== undefined; m = receiveMessageOnPort(pw.port)) {
    const msg = m.message as { type?: string; message?: string };
    if (msg.type === 'error') return `${what}: ${msg.message}`;
  }
  return `${what}: it failed without a message`;
}

/** Wait until `pw`'s state leaves `from`; the state reached (W_FAILED on time-out). */
function waitLeave(pw: PooledWorker, from: number, timeoutMs: number): number {
  const end = performance.now() + timeoutMs;
  for (;;) {
    const s = Atomics.load(pw.home, H_STATE);
    if (s !== from) return s;
    const left = end - performance.now();
    if (left <= 0) return W_FAILED;
    Atomics.wait(pw.home, H_STATE, from, Math.min(left, 100));
  }
}

/** Take an idle worker of the pool, or start one; it is in state W_IDLE. */
function acquire(): PooledWorker {
  while (idle.length > 0) {
    const pw = idle.pop()!;
    if (!pw.gone && Atomics.load(pw.home, H_STATE) === W_IDLE) return pw;
    discard(pw);
  }
  const pw = spawnWorker();
  if (waitLeave(pw, W_STARTING, START_MS) !== W_IDLE) {
    // waitLeave says W_FAILED on a time-out too: the worker's own state tells which it was.
    const why = Atomics.load(pw.home, H_STATE) === W_FAILED ? failureOf(pw, 'a remote worker failed to start') : `a remote worker did not start within ${START_MS / 1000} s`;
    discard(pw);
    throw new EngineError(why);
  }
  return pw;
}

function discard(pw: PooledWorker): void {
  pw.gone = true;
  pw.port.close();
  void pw.worker.terminate();
}

/** The main thread's side: the workers, the slots, the streams sent. */
export class RemoteCpus {
  readonly ctl: Int32Array;
  private readonly ctlF: Float64Array;
  private readonly pooled: PooledWorker[] = [];
  /** Per stream object, its shared copy; per worker, the ids of the copies it has been sent. */
  private readonly shared = new WeakMap<AccessStream, SharedStream>();
  private readonly sent: Set<number>[] = [];
  /** Per CPU, the exit taken back (null while the CPU is not back from a worker). */
  private readonly exits: (RemoteExit | null)[];
  /** CPUs handed out and not yet taken back. */
  private outstanding = 0;
  private stopped = false;

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

  /**
   * Attach workers of the pool to `machine` (starting the ones the pool lacks). Synchronous: it
   * returns when every worker serves the machine, or throws with a worker's failure.
   */
  static start(machine: Machine, options: RemoteOptions = {}): RemoteCpus {
    const n = machine.cpus.length;
    const want = options.workers ?? Math.min(2, n);
    if (!Number.isInteger(want) || want < 1 || want > MAX_WORKERS) throw new EngineError(`workers must be an integer from 1 to ${MAX_WORKERS}, got ${String(options.workers)}`);
    const rc = new RemoteCpus(machine, Math.min(want, n));
    try {
      for (let w = 0; w < rc.nWorkers; w++) {
        const pw = acquire();
        const cpus = machine.cpus.map((c) => c.index).filter((i) => i % rc.nWorkers === w);
        const msg: AttachMessage = { type: 'attach', sab: machine.sab, ctl: rc.ctl.buffer as SharedArrayBuffer, worker: w, cpus };
        pw.port.postMessage(msg);
        Atomics.add(pw.home, H_CALL, 1);
        Atomics.notify(pw.home, H_CALL);
        if (waitLeave(pw, W_IDLE, START_MS) !== W_ATTACHED) {
          const why = Atomics.load(pw.home, H_STATE) === W_FAILED ? failureOf(pw, `remote worker ${w}`) : `remote worker ${w} did not attach within ${START_MS / 1000} s`;
          discard(pw);
          throw new EngineError(why);
        }
        rc.pooled.push(pw);
        rc.sent.push(new Set());
        stats.attaches++;
      }
    } catch (e) {
      rc.stop();
      throw e;
    }
    return rc;
  }

  /** The first failure a worker reported (the run stops with it), or null. */
  failure(): string | null {
    for (let w = 0; w < this.pooled.length; w++) {
      const pw = this.pooled[w]!;
      if (Atomics.load(pw.home, H_STATE) === W_FAILED) return failureOf(pw, `remote worker ${w}`);
    }
    return null;
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
      this.pooled[w]!.port.postMessage(shared);
      this.sent[w]!.add(shared.id);
    }
    cpu.sync();
    this.exits[i] = null;
    this.ctl[base + S_STREAM] = shared.id;
    this.ctl[base + S_FROM] = from;
    this.ctlF[(base >> 1) + S_UNTIL_F64] = until;
    Atomics.store(this.ctl, base + S_STATE, ST_RUN);
    this.outstanding++;
    stats.stretches++;
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

  /** Wait until a worker exits after `seen` was read, or `timeoutMs` passes (blocking). */
  waitExit(seen: number, timeoutMs: number): void {
    Atomics.wait(this.ctl, G_MAIN, seen, timeoutMs);
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
      s = { id: nextStreamId++, his, los, kinds, length: n };
      this.shared.set(stream, s);
    }
    return s;
  }

  /**
   * Detach the workers from the machine and return them to the pool. A CPU still away is not
   * taken back (its state in the buffer is what the worker left); the kernel's run loop takes
   * every CPU back before it stops them. A worker that failed, or does not detach in time, is
   * terminated instead.
   */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    Atomics.store(this.ctl, G_ABORT, 1);
    for (let w = 0; w < this.pooled.length; w++) {
      Atomics.add(this.ctl, G_WORKER + w, 1);
      Atomics.notify(this.ctl, G_WORKER + w);
    }
    for (const pw of this.pooled) {
      if (waitLeave(pw, W_ATTACHED, START_MS) === W_IDLE && !pw.gone) idle.push(pw);
      else discard(pw);
    }
  }
}
