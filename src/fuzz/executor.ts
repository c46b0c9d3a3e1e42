/**
 * src/fuzz/executor.ts — runs a fuzz Scenario (src/fuzz/ops.ts) on the deterministic engine (or,
 * with ExecOptions.engine, the parallel one) and judges it.
 *
 * The world: a kernel with a binder device whose design is chosen per process (by comm), and a
 * few processes, each with one or more threads ("actors") pinned to CPUs, each with its own
 * scratch memory, a non-blocking pipe per process and, normally, a binder fd and mapping (the
 * first process is the context manager). Threads, processes and binder opens come and go with
 * the sequence (clone, spawn, fork, exit, bopen).
 *
 * Rounds: a coordinator kernel thread hands the next `roundOps` operations to the actors (an
 * op's selector, modulo the live actors, picks one; each actor runs its share in order), wakes
 * them, and waits until every task is back at the barrier — so within a round processes and
 * threads really run concurrently on their CPUs, interleaved by the engine's seeded scheduler,
 * and between rounds the system is quiescent: no task is inside a kernel operation, and the
 * invariant checkers may look. Every `checkEvery` operations (and after the last one) it runs
 * check_vm_invariants (frames, refcounts, mapcounts, page tables, VMA trees, TLBs against freed
 * frames), binder_check_device (allocator books, LRU, binder PTEs) and looks at the new reports.
 * At the end every process exits and the machine must be back where it started: no address
 * space, no binder allocator, no LRU page, no leaked frame.
 *
 * Oracles besides the checkers, for binder traffic (each transaction's code is its id, its
 * payload a pattern derived from the id):
 *  - a transaction is delivered at most once, to the process its handle names, with the sizes
 *    it was sent with, its buffer inside the receiver's mapping and not overlapping a buffer the
 *    receiver still holds, its offsets right after its data;
 *  - while the receiver's mapping is intact (no mm operation of its process has touched it, from
 *    before the read starts until it ends), reading the buffer through the mapping succeeds and
 *    gives exactly the bytes sent, and the binder object in it is translated as binder.c does
 *    (a node becomes a handle in another process and stays the same handle; a handle to the
 *    receiver's own node becomes the node);
 *  - except for a send during which another thread of the sender's process ran an operation that
 *    may change the sender's scratch memory (an mm operation over it, a write touch): the driver
 *    copies the command and the payload as they are when it copies them, as on Linux, so only
 *    "at most once" and the buffer's place are checked for it; and the returns of a read during
 *    which another thread may have changed the reader's scratch memory (where the driver writes
 *    them) are not checked at all;
 *  - BINDER_SET_CONTEXT_MGR succeeds exactly when no live process is the context manager.
 *
 * Reports are classified by src/fuzz/classify.ts. Failures stop the run and come back as a
 * FuzzFailure naming the kind, the message and the operation being run or last checked.
 */

import { Kernel, type KernelEngine, type KernelOptions } from '../../kernel/kernel.ts';
import type { KGen, Task } from '../../kernel/sched/core.ts';
import { ExitRequest, type Program, type User } from '../../kernel/uapi.ts';
import { WaitQueue } from '../../kernel/sched/wait.ts';
import { SyscallError } from '../../kernel/errno.ts';
import { SignalError } from '../../kernel/signal.ts';
import { KernelBug } from '../../kernel/report.ts';
import { check_vm_invariants, liveMms } from '../../kernel/mm/debug_vm.ts';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_NORESERVE, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { O_NONBLOCK, SPLICE_F_GIFT, SPLICE_F_NONBLOCK } from '../../kernel/fs/pipe.ts';
import { BinderDevice } from '../../drivers/android/binder/binder.ts';
import { binderLru } from '../../drivers/android/binder/binder_alloc.ts';
import { binder_check_device } from '../../drivers/android/binder/binder_alloc_debug.ts';
import type { DesignOptions } from '../../drivers/android/binder/page_mapping.ts';
import {
  BC_ENTER_LOOPER, BC_EXIT_LOOPER, BC_REGISTER_LOOPER, BC_REPLY, BC_TRANSACTION, BINDER_SET_CONTEXT_MGR, BINDER_SET_MAX_THREADS, BINDER_THREAD_EXIT,
  BINDER_TYPE_BINDER, BINDER_TYPE_HANDLE, BINDER_VERSION, BINDER_WRITE_READ, BWR_SIZE, FLAT_BINDER_OBJECT_SIZE, TF_CLEAR_BUF, TF_ONE_WAY, decodeFlatBinderObject,
  encodeFlatBinderObject,
} from '../../drivers/android/binder/uapi.ts';
import { FUZZ_DESIGNS, TOP, WINDOW, fmtOp, type Addr, type Len, type Op, type OpName, type Scenario } from './ops.ts';
import { PAYLOAD_AT, PAYLOAD_CAP, SCRATCH_SIZE, cmdFree, cmdTransaction, cmdWord, concat, payload, payloadMismatch, setNonblock, writeRead, type BinderReturn } from './binder_client.ts';
import { bump, classifyReports, emptyOutcomes, type ExpectedOutcomes } from './classify.ts';

/** Bugs the executor can plant, to show that the fuzzer finds, shrinks and replays failures. */
export const PLANTS = ['exec-mprotect', 'leak-ref', 'skip-flush', 'zap-without-flush'] as const;
export type Plant = (typeof PLANTS)[number];
export const PLANT_HELP: Record<Plant, string> = {
  'exec-mprotect': 'a fake failure: any mprotect that makes window memory executable "fails" (an oracle bug, for testing shrinking)',
  'leak-ref': 'a leaked page reference after every successful write touch (the refcount invariant fails)',
  'skip-flush': 'the kernel skips every TLB flush (stale translations, use-after-free through the TLB)',
  'zap-without-flush': 'binder reclaim zaps PTEs without a TLB flush before freeing the page (security scenario 3)',
};

export interface ExecOptions {
  /** Operations handed out per round (default 16). */
  roundOps?: number;
  /** Run the checkers after at least this many operations (default 64; the last op is always checked). */
  checkEvery?: number;
  plant?: Plant | null;
  /** Give up (a hang) after this many cycles of waiting for a round to finish (default 4e9). */
  hangCycles?: number;
  /**
   * Capture JavaScript stack traces (default false). Every errno and signal of a fuzz run is an
   * Error object, and capturing its stack costs more than the system call; a failure is re-run
   * with stacks on to report where kernel code threw.
   */
  stacks?: boolean;
  /** Every process gets this binder design (default: the scenario's choice per process). */
  design?: DesignOptions;
  /** Cost model of the kernel (default: the built-in costs), and its checking mode. */
  kernel?: Pick<KernelOptions, 'hwCosts' | 'clockGhz' | 'costs' | 'debugVm'>;
  /**
   * The engine (default deterministic). The actors' operations are system calls and single
   * accesses, made with the kernel on the main thread, so a case on the parallel engine differs
   * only in its interleaving (turns of one CPU at a time instead of the seeded scheduler's).
   */
  engine?: KernelEngine;
  /**
   * Record each operation's outcome here, and for every transaction delivered its id, sizes,
   * offset in the mapping and a hash of the bytes read (the differential tests compare these).
   */
  log?: string[];
}

export type FailureKind = 'invariant' | 'report' | 'oracle' | 'crash' | 'hang' | 'leak';

export interface FuzzFailure {
  kind: FailureKind;
  message: string;
  /** Index of the operation being run (or the last one run before the check that failed). */
  op: number | null;
}

export interface ExecResult {
  /** Operations that ran (an op whose actor had nothing to do it with counts as skipped). */
  executed: number;
  skipped: number;
  checks: number;
  byOp: Partial<Record<OpName, number>>;
  outcomes: ExpectedOutcomes;
  failure: FuzzFailure | null;
  /** Virtual cycles of the run (the highest CPU clock). */
  cycles: number;
}

// ---- the harness's view of the world ----------------------------------------------------------

/** A binder node: the instance (binder_proc) that owns it and its ptr/cookie there. */
interface NodeRef {
  inst: number;
  ptr: number;
  cookie: number;
}

function sameNode(a: NodeRef, b: NodeRef): boolean {
  return a.inst === b.inst && a.ptr === b.ptr && a.cookie === b.cookie;
}

function fmtNode(n: NodeRef | null): string {
  return n ? `node ${n.ptr.toString(16)} of instance ${n.inst}` : 'an unknown node';
}

/** One open binder file (a binder_proc), as the programs know it. */
interface Instance {
  id: number;
  /** Live processes whose fd table holds it. */
  holders: number;
  /** The node this instance sends as itself (ptr, cookie = its id). */
  node: NodeRef;
  /** tgid of the process that opened it (binder_proc->pid, what the context-manager check compares). */
  owner: number;
  /** Handles it learned from objects, and the node each one names (null: unknown). */
  handles: Map<number, NodeRef | null>;
  /** Buffers delivered to it and not yet freed: user address → transaction id. */
  held: Map<number, { txid: number; bytes: number }>;
  /** Addresses it freed (for double frees). */
  freed: number[];
  /** Buffers a thread is reading right now: not yet held, so no other thread frees them meanwhile. */
  reading: Set<number>;
  /**
   * Children forked while its open was in progress: each may or may not have inherited the fd
   * (the kernel installs it inside the open, the harness learns of it when the open returns, and
   * fork copies the fd table at a moment of its own in between). Not counted in `holders`.
   */
  maybeHeldBy: Proc[];
}

/** A process's binder fd and, if mmap succeeded in it, its mapping. */
interface BinderView {
  inst: Instance;
  fd: number;
  base: number;
  size: number;
  /** The mapping is this process's own (not inherited through fork) and nothing touched it. */
  intact: boolean;
}

interface Proc {
  slot: number;
  tgid: number;
  alive: boolean;
  threads: Set<Actor>;
  /** Its latest binder fd (sends, binder-relative addresses, mmap of the binder fd). */
  view: BinderView | null;
  /** Every binder fd it knows, oldest first (reads and frees go round all of them). */
  views: BinderView[];
  /** Every binder instance its fd table holds. */
  insts: Set<Instance>;
  pipe: { r: number; w: number } | null;
  /** Binder opens of its threads in progress: the children forked meanwhile (see Instance.maybeHeldBy). */
  opening: Set<Set<Proc>>;
  /** Children being forked by its threads right now. */
  forking: Set<Proc>;
}

interface Actor {
  id: number;
  proc: Proc;
  cpu: number;
  task: Task | null;
  scratch: number;
  queue: [number, Op][];
  /** Synchronous transactions this thread received and has not answered (id, and the fd it came on). */
  replyStack: { txid: number; view: BinderView }[];
  /** Instances on which this thread has entered the looper (only loopers get process work). */
  entered: Set<number>;
  /** Round-robin position over the process's binder fds. */
  rr: number;
  /** A read lost returns (its copy_to_user failed): replyStack may no longer mirror the driver's stack. */
  stackLost: boolean;
  dead: boolean;
  ready: boolean;
  /**
   * The send (its SentTx, from the payload write to the end of the send) or the read of returns
   * (from the ioctl to the last byte read back) this thread runs from its scratch memory right
   * now: marked untrusted when another thread of the process may change that memory meanwhile.
   */
  scratchUse: { untrusted?: boolean } | null;
  /** The ranges the operation this thread is running may change (mm operations, write touches). */
  changing: [number, number][];
}

interface SentTx {
  from: number;
  /** The instance it must reach (null: unknown or invalid). */
  to: number | null;
  size: number;
  offsetsSize: number;
  /** A flat_binder_object was written at offset 8 (the payload check skips it). */
  skip: boolean;
  /** The object must arrive translated: what was sent and the node it names; null when not checked. */
  obj: { sent: 'binder' | 'handle'; node: NodeRef | null } | null;
  oneway: boolean;
  received: boolean;
  /**
   * Sent to handle 0: the BINDER_SET_CONTEXT_MGR count when it was sent. If another one started
   * since, the driver may have routed it to the new context manager before the harness knew.
   */
  cmSeq?: number;
  /** The handle it was sent to (for failure messages). */
  handle: number;
  /**
   * Another thread of the sender's process ran an operation that may change the sender's scratch
   * memory while the send was in progress (a MADV_DONTNEED over it zeroes the payload before the
   * driver copies it, as on Linux): what arrives is not checked against what was written.
   */
  untrusted?: boolean;
}

/** Does `range` overlap the scratch memory of `actor` (its payload, command and return areas)? */
function overlapsScratch(actor: Actor, range: [number, number]): boolean {
  return actor.scratch !== 0 && range[0] < actor.scratch + SCRATCH_SIZE && range[1] > actor.scratch;
}

class FuzzAbort extends Error {
  constructor(readonly failure: FuzzFailure) {
    super(failure.message);
  }
}

const MAX_PROCS = 6;
const MAX_ACTORS = 8;
const MAX_SLOTS = 64;
const BINDER_MAP = 128 * 1024;
const POLL_CYCLES = 20_000;

/** Run one scenario; never throws for a finding (it comes back in `failure`). */
export function executeScenario(s: Scenario, opts: ExecOptions = {}): ExecResult {
  const limit = Error.stackTraceLimit;
  if (!opts.stacks) Error.stackTraceLimit = 0;
  try {
    return new World(s, opts).run();
  } finally {
    Error.stackTraceLimit = limit;
  }
}

class World {
  readonly k: Kernel;
  readonly dev: BinderDevice;
  readonly roundOps: number;
  readonly checkEvery: number;
  readonly plant: Plant | null;
  readonly hangCycles: number;
  readonly engine: KernelEngine;
  readonly procs: Proc[] = [];
  readonly actors: Actor[] = [];
  readonly sent = new Map<number, SentTx>();
  readonly barrier = new WaitQueue('fuzz barrier');
  readonly outcomes = emptyOutcomes();
  readonly byOp: Partial<Record<OpName, number>> = {};
  round = 0;
  stopping = false;
  executed = 0;
  skipped = 0;
  checks = 0;
  failure: FuzzFailure | null = null;
  /** The op being executed or last dispatched (for failure messages). */
  lastOp: number | null = null;
  private nextActor = 0;
  private nextSlot = 0;
  private nextInst = 1;
  private nextTx = 1;
  /** The instance that is the context manager, if it is alive. */
  cm: Instance | null = null;
  /**
   * A context manager whose last holder exited this round: the driver releases it a little later
   * (the files are closed after the thread's bookkeeping here, an mm reference may defer the
   * VMA's fput to a worker), so until the next quiescent point it is unknown whether it is gone.
   */
  cmReleasing: Instance | null = null;
  /**
   * A context manager the harness saw go whose fd a child may still hold (Instance.maybeHeldBy):
   * whether the driver still has it is unknown until those children are gone.
   */
  cmUncertain: Instance | null = null;
  /** BINDER_SET_CONTEXT_MGR calls started, and in flight (a concurrent one makes the outcome unpredictable). */
  private cmSeq = 0;
  private cmInFlight = 0;
  private reportsSeen = 0;
  private coordinator: Task | null = null;
  private baseline = 0;
  readonly log: string[] | null;

  constructor(
    readonly s: Scenario,
    opts: ExecOptions,
  ) {
    this.roundOps = opts.roundOps ?? 16;
    this.checkEvery = opts.checkEvery ?? 64;
    this.plant = opts.plant ?? null;
    this.hangCycles = opts.hangCycles ?? 4e9;
    this.engine = opts.engine ?? 'deterministic';
    this.log = opts.log ?? null;
    this.k = new Kernel({ ...opts.kernel, cpus: s.cpus, memoryBytes: s.memoryMiB << 20, quantum: s.quantum, seed: 1 + s.ops.length });
    const bugs = this.plant === 'zap-without-flush' ? { zapWithoutFlush: true } : undefined;
    const perProcess: Record<string, DesignOptions> = {};
    for (let slot = 0; slot < MAX_SLOTS; slot++) perProcess[commOf(slot)] = { ...(opts.design ?? FUZZ_DESIGNS[s.designs[slot % s.designs.length]! % FUZZ_DESIGNS.length]!), ...(bugs ? { bugs } : {}) };
    this.dev = new BinderDevice(this.k, { design: perProcess[commOf(0)]!, perProcess });
    if (this.plant === 'skip-flush') this.k.tlb.skipFlush = () => true;
  }

  run(): ExecResult {
    const k = this.k;
    this.baseline = k.pages.usedFrames;
    const self = this;
    for (let i = 0; i < this.s.procs; i++) this.spawnProcess();
    this.coordinator = k.kthread('fuzz-coordinator', function* () {
      yield* self.coordinate();
    }, 0);
    try {
      const r = k.runOn(this.engine, { maxSteps: 200_000_000 });
      if (r.reason !== 'done' && !this.failure) this.failure = { kind: 'hang', message: `the run did not finish (${r.reason})`, op: this.lastOp };
    } catch (e) {
      if (e instanceof FuzzAbort) this.failure ??= e.failure;
      else this.failure ??= { kind: 'crash', message: `the simulation threw: ${errText(e)}`, op: this.lastOp };
    }
    if (!this.failure) this.finalChecks();
    return {
      executed: this.executed,
      skipped: this.skipped,
      checks: this.checks,
      byOp: this.byOp,
      outcomes: { ...this.outcomes, binderUserErrors: this.dev.stats.userErrors },
      failure: this.failure,
      cycles: Math.max(...k.machine.cpus.map((c) => c.cycles)),
    };
  }

  // ---- coordination -------------------------------------------------------------------------

  private *coordinate(): KGen {
    const ops = this.s.ops;
    yield* this.waitQuiet();
    this.check('after the setup');
    let sinceCheck = 0;
    for (let i = 0; i < ops.length; i += this.roundOps) {
      const live = this.actors.filter((a) => !a.dead && a.ready);
      if (live.length === 0) break;
      const end = Math.min(ops.length, i + this.roundOps);
      for (let j = i; j < end; j++) {
        const op = ops[j]!;
        live[op.a % live.length]!.queue.push([j, op]);
      }
      this.lastOp = end - 1;
      this.round++;
      this.barrier.wakeAll(this.k);
      yield* this.waitQuiet();
      if (this.failure) throw new FuzzAbort(this.failure);
      this.cmReleasing = null;
      sinceCheck += end - i;
      if (sinceCheck >= this.checkEvery || end === ops.length) {
        this.check(`after op ${end - 1}`);
        sinceCheck = 0;
      }
    }
    this.stopping = true;
    this.round++;
    this.barrier.wakeAll(this.k);
  }

  /** Wait until every task but this one sleeps at the barrier (nothing is inside the kernel). */
  private *waitQuiet(): KGen {
    const k = this.k;
    let waited = 0;
    for (;;) {
      if (this.failure) throw new FuzzAbort(this.failure);
      let quiet = true;
      for (const t of k.tasks.values()) {
        if (t === this.coordinator) continue;
        if (t.state !== 'sleeping' || !this.barrier.has(t)) {
          quiet = false;
          break;
        }
      }
      if (quiet) return;
      if (waited > this.hangCycles) {
        const busy = [...k.tasks.values()].filter((t) => t !== this.coordinator && !this.barrier.has(t)).map((t) => `${t.comm}/${t.pid} ${t.state}${t.waitingFor ? ` on ${t.waitingFor}` : ''}`);
        throw new FuzzAbort({ kind: 'hang', message: `round ${this.round} did not finish: ${busy.join('; ')}`, op: this.lastOp });
      }
      yield* k.sleepFor(POLL_CYCLES);
      waited += POLL_CYCLES;
    }
  }

  /** Run every checker; a finding aborts the run. */
  private check(where: string): void {
    this.checks++;
    const k = this.k;
    const inv = check_vm_invariants(k, { limit: 10 });
    if (!inv.ok) throw new FuzzAbort({ kind: 'invariant', message: `mm invariants violated ${where}:\n  ${inv.problems.join('\n  ')}`, op: this.lastOp });
    const b = binder_check_device(this.dev, 10);
    if (b.length) throw new FuzzAbort({ kind: 'invariant', message: `binder invariants violated ${where}:\n  ${b.join('\n  ')}`, op: this.lastOp });
    this.checkReports(where);
  }

  private checkReports(where: string): void {
    const all = this.k.reports.reports;
    const fresh = all.slice(this.reportsSeen);
    this.reportsSeen = all.length;
    const c = classifyReports(fresh);
    if (c.unexpected.length) {
      const r = c.unexpected[0]!;
      throw new FuzzAbort({ kind: 'report', message: `unexpected ${r.kind} report ${where}: ${r.title}\n${r.text}${c.unexpected.length > 1 ? `\n(+${c.unexpected.length - 1} more: ${c.unexpected.slice(1, 4).map((x) => x.title).join(' | ')})` : ''}`, op: this.lastOp });
    }
  }

  private finalChecks(): void {
    const k = this.k;
    const fail = (kind: FailureKind, message: string): void => {
      this.failure ??= { kind, message, op: this.lastOp };
    };
    try {
      this.checkReports('at the end');
    } catch (e) {
      if (e instanceof FuzzAbort) this.failure ??= e.failure;
      else throw e;
      return;
    }
    // An idle CPU may still hold the last process's mm lazily; its next switch would drop it.
    k.dropDeadLazyMms();
    const inv = check_vm_invariants(k, { limit: 10 });
    if (!inv.ok) return fail('invariant', `mm invariants violated after every process exited:\n  ${inv.problems.join('\n  ')}`);
    if (liveMms(k).length) return fail('leak', `${liveMms(k).length} address spaces still live after every process exited`);
    if (k.mms.size !== 1) return fail('leak', `${k.mms.size - 1} mm_structs never freed after every process exited`);
    if (this.dev.procs.size) return fail('leak', `${this.dev.procs.size} binder procs never released`);
    const lru = binderLru(k).count;
    if (lru) return fail('leak', `${lru} pages left on the binder LRU`);
    const leaked = k.pages.usedFrames - this.baseline;
    if (leaked !== 0) return fail('leak', `${leaked} frames leaked (used ${k.pages.usedFrames}, ${this.baseline} at boot)`);
  }

  fail(kind: FailureKind, message: string, op: number | null = this.lastOp): void {
    this.failure ??= { kind, message, op };
  }

  // ---- processes and threads ------------------------------------------------------------------

  private spawnProcess(): Proc | null {
    if (this.procs.filter((p) => p.alive).length >= MAX_PROCS || this.liveActors() >= MAX_ACTORS || this.nextSlot >= MAX_SLOTS) return null;
    const slot = this.nextSlot++;
    const proc: Proc = { slot, tgid: 0, alive: true, threads: new Set(), view: null, views: [], insts: new Set(), pipe: null, opening: new Set(), forking: new Set() };
    const actor = this.newActor(proc);
    let t: Task;
    try {
      t = this.k.spawn(this.actorProgram(actor, 'new'), { comm: commOf(slot), cpu: actor.cpu });
    } catch (e) {
      // No memory for the new address space (ENOMEM, as fork would say): the process never
      // existed; the error is counted as an expected outcome by the caller.
      actor.dead = true;
      proc.threads.delete(actor);
      throw e;
    }
    proc.tgid = t.tgid;
    actor.task = t;
    this.procs.push(proc);
    return proc;
  }

  private newActor(proc: Proc): Actor {
    const id = this.nextActor++;
    const a: Actor = { id, proc, cpu: id % this.s.cpus, task: null, scratch: 0, queue: [], replyStack: [], entered: new Set(), rr: 0, stackLost: false, dead: false, ready: false, scratchUse: null, changing: [] };
    proc.threads.add(a);
    this.actors.push(a);
    return a;
  }

  liveActors(): number {
    return this.actors.filter((a) => !a.dead).length;
  }

  private actorProgram(actor: Actor, kind: 'new' | 'thread' | 'child'): Program {
    const self = this;
    return function* (u: User) {
      actor.task = u.task;
      try {
        yield* self.setup(u, actor, kind);
        if (self.failure) return 99;
        for (;;) {
          const r = self.round;
          actor.ready = true;
          yield* u.call('fuzz_barrier', function* (k) {
            yield* self.barrier.waitEvent(k, () => self.round !== r || self.stopping, 'fuzz barrier');
            return 0;
          });
          if (self.stopping) break;
          while (actor.queue.length) {
            const [index, op] = actor.queue.shift()!;
            self.lastOp = index;
            yield* self.exec(u, actor, op, index);
            if (self.failure) {
              actor.queue.length = 0;
              break;
            }
          }
        }
      } catch (e) {
        if (e instanceof ExitRequest || e instanceof KernelBug) throw e;
        if (e instanceof FuzzAbort) self.fail(e.failure.kind, e.failure.message);
        else self.fail('crash', `thread ${actor.id} threw out of the kernel: ${errText(e)}`);
        return 99;
      } finally {
        self.actorGone(actor);
      }
      return 0;
    };
  }

  /** Bookkeeping when a thread ends (exit op, end of run, or a kernel oops killed it). */
  private actorGone(actor: Actor): void {
    if (actor.dead) return;
    actor.dead = true;
    actor.queue.length = 0;
    const proc = actor.proc;
    proc.threads.delete(actor);
    if (proc.threads.size === 0 && proc.alive) {
      proc.alive = false;
      this.note(`  process ${proc.tgid} gone (instances ${[...proc.insts].map((i) => i.id).join(',')})`);
      for (const inst of proc.insts) {
        inst.holders--;
        if (inst.holders === 0 && this.cm === inst) {
          this.cm = null;
          // A child that may hold the fd keeps the driver's context manager alive, or not.
          if (inst.maybeHeldBy.some((p) => p.alive)) this.cmUncertain = inst;
          else this.cmReleasing = inst;
        }
      }
      const unsure = this.cmUncertain;
      if (unsure !== null && !unsure.maybeHeldBy.some((p) => p.alive)) {
        this.cmUncertain = null;
        this.cmReleasing = unsure;
      }
    }
  }

  private *setup(u: User, actor: Actor, kind: 'new' | 'thread' | 'child'): KGen {
    const proc = actor.proc;
    try {
      actor.scratch = yield* u.mmap(0, SCRATCH_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      if (kind === 'new') {
        const [r, wfd] = yield* u.pipe(O_NONBLOCK);
        proc.pipe = { r, w: wfd };
        yield* this.binderOpen(u, actor, BINDER_MAP, PROT_READ, false, proc.slot === 0);
        // Register with the context manager, as a service does: a oneway call carrying our node,
        // so the context manager learns a handle for us (and can call us).
        if (proc.slot !== 0) yield* this.bsend(u, actor, { t: 'bsend', a: 0, to: 0, oneway: true, size: 40, obj: 'self', bad: 'none', clear: false });
      }
      // Every thread takes process work (binder_thread_read hands proc->todo only to loopers).
      if (proc.view) yield* this.enterLooper(u, actor, proc.view);
    } catch (e) {
      if (!this.expected(e)) throw e;
    }
  }

  // ---- operations ---------------------------------------------------------------------------

  /** Was `e` an expected outcome (counted) rather than a failure? */
  private expected(e: unknown): boolean {
    if (e instanceof SyscallError) {
      bump(this.outcomes.errnos, e.code);
      return true;
    }
    if (e instanceof SignalError) {
      bump(this.outcomes.signals, e.signame);
      return true;
    }
    return false;
  }

  private note(line: string): void {
    if (this.log) this.log.push(line);
  }

  private *exec(u: User, actor: Actor, op: Op, index: number): KGen {
    let did = true;
    try {
      did = yield* this.execOp(u, actor, op, index);
      actor.changing.length = 0;
      this.note(`${index} ${op.t}: ${did ? 'ok' : 'skipped'}`);
    } catch (e) {
      actor.changing.length = 0;
      if (e instanceof ExitRequest || e instanceof KernelBug) {
        this.count(op);
        throw e;
      }
      this.note(`${index} ${op.t}: ${e instanceof SyscallError ? e.code : e instanceof SignalError ? e.signame : 'failure'}`);
      if (!this.expected(e)) {
        if (e instanceof FuzzAbort) this.fail(e.failure.kind, e.failure.message, index);
        else this.fail('crash', `op ${index} (${fmtOp(op)}) threw out of the kernel: ${errText(e)}`, index);
      }
    }
    if (did) this.count(op);
    else this.skipped++;
    // After a failure the thread stops; the coordinator sees it at the end of the round.
    if (this.failure) yield* u.exit(99);
  }

  private count(op: Op): void {
    this.executed++;
    bump(this.byOp as Record<string, number>, op.t);
  }

  private resolve(actor: Actor, a: Addr): number {
    switch (a.r) {
      case 'win':
        return WINDOW + a.page * 4096 + a.off;
      case 'bind': {
        const v = actor.proc.view;
        return (v && v.base ? v.base : WINDOW) + a.page * 4096 + a.off;
      }
      case 'top':
        return TOP - (a.page + 1) * 4096 + a.off;
      case 'wild':
        return a.v;
    }
  }

  private len(l: Len): number {
    return 'wild' in l ? l.wild : Math.max(0, l.pages * 4096 + l.delta);
  }

  /** An mm operation of this process may have changed [start, start + len): its binder mappings there are no longer trusted. */
  private touched(actor: Actor, start: number, len: number): void {
    this.changes(actor, start, len);
    for (const v of actor.proc.views) {
      if (!v.intact) continue;
      if (!Number.isFinite(start) || !Number.isFinite(len)) {
        v.intact = false;
        continue;
      }
      const end = start + Math.max(len, 0) + 4096; // page rounding
      if (start < v.base + v.size && end > v.base - 4096) v.intact = false;
    }
  }

  /**
   * The operation `actor` is about to run may change the memory [start, start + len) of its
   * process until it ends: a send or read in progress from that memory is no longer checked, and
   * one that starts meanwhile is not either (see beginScratchUse).
   */
  private changes(actor: Actor, start: number, len: number): void {
    const range: [number, number] = Number.isFinite(start) && Number.isFinite(len) ? [start - 4096, start + Math.max(len, 0) + 4096] : [-Infinity, Infinity];
    actor.changing.push(range);
    for (const t of actor.proc.threads) if (t.scratchUse !== null && overlapsScratch(t, range)) t.scratchUse.untrusted = true;
  }

  /** `actor` starts a send or read from its scratch memory (see Actor.scratchUse); end it with `actor.scratchUse = null`. */
  private beginScratchUse(actor: Actor, use: { untrusted?: boolean }): void {
    actor.scratchUse = use;
    for (const t of actor.proc.threads) if (t !== actor && t.changing.some((r) => overlapsScratch(actor, r))) use.untrusted = true;
  }

  /** Returns false when the op had nothing to act on (skipped). */
  private *execOp(u: User, actor: Actor, op: Op, index: number): KGen<boolean> {
    const proc = actor.proc;
    switch (op.t) {
      case 'mmap': {
        const addr = this.resolve(actor, op.addr);
        const len = this.len(op.len);
        const fd = op.fd === 'anon' ? -1 : op.fd === 'binder' ? (proc.view?.fd ?? -1) : op.fd === 'pipe' ? (proc.pipe?.r ?? -1) : 1000;
        if (op.flags & MAP_FIXED) this.touched(actor, addr, len);
        yield* u.mmap(addr, len, op.prot, op.flags, fd, op.pgoff * 4096);
        return true;
      }
      case 'munmap': {
        const addr = this.resolve(actor, op.addr);
        const len = this.len(op.len);
        this.touched(actor, addr, len);
        yield* u.munmap(addr, len);
        return true;
      }
      case 'mprotect': {
        const addr = this.resolve(actor, op.addr);
        const len = this.len(op.len);
        this.touched(actor, addr, len);
        yield* u.mprotect(addr, len, op.prot);
        if (this.plant === 'exec-mprotect' && op.prot & 4 && op.addr.r === 'win' && len > 0) this.fail('oracle', `planted failure: mprotect made window memory executable (op ${index})`, index);
        return true;
      }
      case 'mremap': {
        const addr = this.resolve(actor, op.addr);
        const old = this.len(op.old);
        const len = this.len(op.len);
        const dest = this.resolve(actor, op.dest);
        this.touched(actor, addr, Math.max(old, len));
        if (op.flags & 2) this.touched(actor, dest, len);
        const r = yield* u.mremap(addr, old, len, op.flags, dest);
        this.touched(actor, r, len);
        return true;
      }
      case 'madvise': {
        const addr = this.resolve(actor, op.addr);
        const len = this.len(op.len);
        this.touched(actor, addr, len);
        yield* u.madvise(addr, len, op.advice);
        return true;
      }
      case 'touch': {
        const base = this.resolve(actor, op.addr);
        if (op.kind === 'write') this.changes(actor, base, op.pages * 4096);
        for (let i = 0; i < op.pages; i++) {
          const va = base + i * 4096;
          try {
            if (op.kind === 'write') {
              yield* u.store32(va, ((index << 8) | 0x5a) >>> 0);
              if (this.plant === 'leak-ref') this.leakRef(proc, va);
            } else yield* u.touch(va, op.kind);
          } catch (e) {
            if (!(e instanceof SignalError)) throw e;
            bump(this.outcomes.signals, e.signame);
          }
        }
        return true;
      }
      case 'fork':
        return yield* this.fork(u, actor, op);
      case 'clone': {
        if (this.liveActors() >= MAX_ACTORS || proc.threads.size >= 3) return false;
        const t = this.newActor(proc);
        yield* u.clone(this.actorProgram(t, 'thread'), { cpu: t.cpu });
        return true;
      }
      case 'spawn':
        return this.spawnProcess() !== null;
      case 'exit': {
        if (this.liveActors() <= 1) return false;
        this.actorGone(actor);
        yield* u.exit(0);
        return true;
      }
      case 'bopen': {
        if (proc.insts.size >= 3) return false;
        yield* this.binderOpen(u, actor, this.len(op.len), op.prot, op.shared, op.cm);
        return true;
      }
      case 'bsend':
        return yield* this.bsend(u, actor, op);
      case 'brecv':
        return yield* this.brecv(u, actor, op.reply, op.free);
      case 'breply': {
        const v = proc.view;
        if (!v) return false;
        yield* this.reply(u, actor, v, op.size);
        return true;
      }
      case 'bfree':
        return yield* this.bfree(u, actor, op);
      case 'bcmd':
        return yield* this.bcmd(u, actor, op.kind);
      case 'vmsplice': {
        if (!proc.pipe) return false;
        const addr = this.resolve(actor, op.addr);
        const len = this.len(op.len);
        yield* u.vmsplice(proc.pipe.w, [{ base: addr, len }], SPLICE_F_NONBLOCK | (op.nonblock ? SPLICE_F_GIFT : 0));
        return true;
      }
      case 'pread': {
        if (!proc.pipe) return false;
        yield* u.readFd(proc.pipe.r, op.len);
        return true;
      }
      case 'shrink': {
        const dev = this.dev;
        const freed = yield* u.call('binder_shrink', function* () {
          return yield* dev.shrink(op.nr);
        });
        this.note(`  reclaimed ${freed}`);
        return true;
      }
    }
  }

  /** The planted leak: take a page reference nobody will drop. */
  private leakRef(proc: Proc, va: number): void {
    const mm = [...proc.threads][0]?.task?.mm;
    if (!mm) return;
    const ptep = this.k.pt.pte_offset(mm, va);
    if (ptep < 0) return;
    const lo = this.k.pt.lo(ptep);
    if (!(lo & 1)) return;
    const pfn = (this.k.pt.hi(ptep) & 0xfffff) * 0x100000 + (lo >>> 12);
    if (pfn < this.k.pages.nframes) this.k.pages.refcount[pfn]!++;
  }

  private *fork(u: User, actor: Actor, op: Extract<Op, { t: 'fork' }>): KGen<boolean> {
    const proc = actor.proc;
    const keep = op.keep && this.procs.filter((p) => p.alive).length < MAX_PROCS && this.liveActors() < MAX_ACTORS && this.nextSlot < MAX_SLOTS;
    if (keep) {
      const slot = this.nextSlot++;
      const child: Proc = { slot, tgid: 0, alive: true, threads: new Set(), view: null, views: [], insts: new Set(proc.insts), pipe: proc.pipe, opening: new Set(), forking: new Set() };
      // The child's fd table holds every binder file; its mappings are not copied (VM_DONTCOPY).
      child.views = proc.views.map((v) => ({ ...v, intact: false }));
      child.view = child.views[child.views.length - 1] ?? null;
      for (const inst of child.insts) inst.holders++;
      const a = this.newActor(child);
      this.procs.push(child);
      const self = this;
      const touches = op.touches;
      const body = this.actorProgram(a, 'child');
      // A binder open of another thread that is in progress meanwhile may or may not reach the child.
      proc.forking.add(child);
      for (const children of proc.opening) children.add(child);
      try {
        child.tgid = yield* u.fork(function* (c: User) {
          for (const t of touches) yield* self.childTouch(c, a, t);
          return yield* body(c);
        }, commOf(slot));
      } catch (e) {
        // No child: undo the bookkeeping (its thread never runs).
        this.actorGone(a);
        throw e;
      } finally {
        proc.forking.delete(child);
      }
      return true;
    }
    const self = this;
    const pid = yield* u.fork(function* (c: User) {
      for (const t of op.touches) yield* self.childTouch(c, actor, t);
    }, `${commOf(proc.slot)}c`);
    yield* u.wait(pid);
    return true;
  }

  private *childTouch(c: User, actor: Actor, t: { addr: Addr; kind: 'read' | 'write' | 'fetch' }): KGen {
    const va = this.resolve(actor, t.addr);
    try {
      if (t.kind === 'write') yield* c.store32(va, 0xc0ffee);
      else yield* c.touch(va, t.kind);
    } catch (e) {
      if (!(e instanceof SignalError)) throw e;
      bump(this.outcomes.signals, e.signame);
    }
  }

  // ---- binder ---------------------------------------------------------------------------------

  private *binderOpen(u: User, actor: Actor, len: number, prot: number, shared: boolean, cm: boolean): KGen {
    const proc = actor.proc;
    // Children another thread forks while the open is in progress (see Instance.maybeHeldBy).
    const forked = new Set(proc.forking);
    proc.opening.add(forked);
    let fd: number;
    try {
      fd = yield* u.open(this.dev.path);
    } finally {
      proc.opening.delete(forked);
    }
    setNonblock(u, fd);
    const id = this.nextInst++;
    const inst: Instance = { id, holders: 1, node: { inst: id, ptr: 0x10000 * id + 0x100, cookie: id }, owner: u.pid, handles: new Map(), held: new Map(), freed: [], reading: new Set(), maybeHeldBy: [...forked] };
    proc.insts.add(inst);
    const view: BinderView = { inst, fd, base: 0, size: 0, intact: false };
    proc.view = view;
    proc.views.push(view);
    yield* this.enterLooper(u, actor, view);
    if (cm) {
      // The outcome is predictable unless another process's context manager is being released
      // or may live on in a child (cmUncertain), or another BINDER_SET_CONTEXT_MGR overlaps this
      // one (the ioctl returns through a preemption point, so the harness learns of a success a
      // little after the driver).
      const expectOk = this.cm === null;
      const seq = ++this.cmSeq;
      const known = this.cmReleasing === null && this.cmUncertain === null && this.cmInFlight === 0;
      this.cmInFlight++;
      let ok = true;
      let errno = '';
      try {
        yield* u.ioctl(fd, BINDER_SET_CONTEXT_MGR, 0);
      } catch (e) {
        if (!(e instanceof SyscallError)) throw e;
        bump(this.outcomes.errnos, e.code);
        ok = false;
        errno = e.code;
      } finally {
        this.cmInFlight--;
      }
      if (known && this.cmSeq === seq && ok !== expectOk) {
        const kcm = this.dev.contextManager;
        const driver = kcm ? `the driver's is pid ${kcm.proc.pid}${kcm.proc.is_dead ? ' (dead)' : ''}` : 'the driver has none';
        throw new FuzzAbort({ kind: 'oracle', message: `BINDER_SET_CONTEXT_MGR ${ok ? 'succeeded' : `failed with ${errno}`} in pid ${u.pid}, but a live context manager ${expectOk ? 'did not exist' : `existed (instance ${this.cm!.id})`}; ${driver}`, op: this.lastOp });
      }
      if (ok) this.cm = inst;
      this.note(`  instance ${inst.id} of ${u.pid}: BINDER_SET_CONTEXT_MGR ${ok ? 'ok' : errno}${known ? '' : ' (unpredictable)'}`);
    }
    const base = yield* u.mmap(0, len, prot, (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_NORESERVE, fd, 0);
    view.base = base;
    // binder_alloc_mmap_handler uses the VMA (page-aligned) up to 4 MiB.
    view.size = Math.min(Math.ceil(len / 4096) * 4096, 4 << 20);
    // Only a readable mapping can be read back.
    view.intact = (prot & PROT_READ) !== 0;
  }

  /**
   * The handle `sel` picks among those the instance knows (0, the context manager, first) and
   * the node it names: as a transaction target (handle 0 is whoever is the context manager now)
   * or as an object (a handle the sender's refs hold).
   */
  private handleFor(inst: Instance, sel: number, asTarget: boolean): [number, NodeRef | null] {
    const learned = [...inst.handles.keys()].filter((h) => h !== 0).sort((a, b) => a - b);
    // The context manager's own process may not call handle 0 (a user error worth trying only
    // when it knows no other handle).
    const own = asTarget && this.cm !== null && this.cm.owner === inst.owner && learned.length > 0;
    const hs = own ? learned : [0, ...learned];
    const h = hs[sel % hs.length]!;
    if (h === 0 && asTarget) return [0, this.cm && this.cmInFlight === 0 && this.cmReleasing === null ? { inst: this.cm.id, ptr: 0, cookie: 0 } : null];
    return [h, inst.handles.get(h) ?? null];
  }

  private *bsend(u: User, actor: Actor, op: Extract<Op, { t: 'bsend' }>): KGen<boolean> {
    const v = actor.proc.view;
    if (!v) return false;
    const inst = v.inst;
    const txid = this.nextTx++;
    // The context manager's process calling handle 0 is a user error; with no other handle to
    // call, it tries that only now and then.
    if (this.cm !== null && this.cm.owner === inst.owner && inst.handles.size === 0 && op.to % 4 !== 0 && op.bad !== 'badhandle') return false;
    const cmSeq = this.cmSeq; // before the target is predicted
    const target = this.handleFor(inst, op.to, true);
    let handle = target[0];
    let to = target[1]?.inst ?? null;
    if (op.bad === 'badhandle') {
      handle = 1000 + op.to;
      to = null;
    }
    const size = op.size;
    // A handle object needs a handle the sender's refs hold: with none learned, send one only now
    // and then (a bad object), else no object.
    const objKind = op.obj === 'handle' && inst.handles.size === 0 && op.to % 4 !== 0 ? 'none' : op.obj;
    const withObj = objKind !== 'none' && size >= 8 + FLAT_BINDER_OBJECT_SIZE;
    const data = payload(txid, Math.min(size, PAYLOAD_CAP - 64));
    let names: NodeRef | null = null;
    if (withObj) {
      if (objKind === 'self') {
        encodeFlatBinderObject({ type: BINDER_TYPE_BINDER, flags: 0, binder: inst.node.ptr, cookie: inst.node.cookie }, data, 8);
        names = inst.node;
      } else {
        const [h, n] = this.handleFor(inst, op.to + 1, false);
        encodeFlatBinderObject({ type: BINDER_TYPE_HANDLE, flags: 0, binder: h, cookie: 0 }, data, 8);
        names = n;
      }
    }
    const dataAt = actor.scratch + PAYLOAD_AT;
    const offsAt = dataAt + Math.ceil(data.length / 8) * 8;
    let dataSize = size;
    let offsetsSize = withObj ? 8 : 0;
    let bufPtr = dataAt;
    const offs = new Uint8Array(8);
    new DataView(offs.buffer).setBigUint64(0, 8n, true);
    switch (op.bad) {
      case 'badbuf':
        bufPtr = 0x1000;
        break;
      case 'badoffs':
        new DataView(offs.buffer).setBigUint64(0, BigInt(size + 64), true);
        offsetsSize = 8;
        break;
      case 'oddoffs':
        offsetsSize = 4;
        break;
      case 'hugesize':
        dataSize = 2 ** 40;
        break;
      case 'hugeoffs':
        offsetsSize = 2 ** 40;
        break;
      default:
    }
    const tx: SentTx = { from: inst.id, to, size: dataSize, offsetsSize, skip: withObj, obj: withObj && op.bad === 'none' ? { sent: objKind === 'self' ? 'binder' : 'handle', node: names } : null, oneway: op.oneway, received: false, handle, ...(handle === 0 ? { cmSeq } : {}) };
    this.beginScratchUse(actor, tx);
    try {
      yield* u.write(dataAt, data.subarray(0, Math.min(data.length, dataSize)));
      if (offsetsSize) yield* u.write(offsAt, offs);
      const flags = (op.oneway ? TF_ONE_WAY : 0) | (op.clear ? TF_CLEAR_BUF : 0);
      this.sent.set(txid, tx);
      const cmd = cmdTransaction(BC_TRANSACTION, { target: handle, cookie: 0, code: txid, flags, sender_pid: 0, sender_euid: 0, data_size: dataSize, offsets_size: offsetsSize, buffer: bufPtr, offsets: offsAt });
      yield* writeRead(u, v.fd, actor.scratch, cmd, 0);
    } finally {
      actor.scratchUse = null;
    }
    return true;
  }

  /** BC_REPLY with a `size`-byte payload (a new transaction id) to the top of this thread's stack (on `v`, or the fd the request came on). */
  private *reply(u: User, actor: Actor, fallback: BinderView, size: number): KGen {
    const top = actor.replyStack.pop();
    const req = top?.txid;
    const v = top?.view ?? fallback;
    const txid = this.nextTx++;
    const data = payload(txid, Math.min(size, PAYLOAD_CAP - 64));
    const dataAt = actor.scratch + PAYLOAD_AT;
    const from = req !== undefined ? this.sent.get(req) : undefined;
    const tx: SentTx = { from: v.inst.id, to: from && !actor.stackLost ? from.from : null, size: data.length, offsetsSize: 0, skip: false, obj: null, oneway: false, received: false, handle: -1 };
    this.beginScratchUse(actor, tx);
    try {
      yield* u.write(dataAt, data);
      this.sent.set(txid, tx);
      const cmd = cmdTransaction(BC_REPLY, { target: 0, cookie: 0, code: txid, flags: 0, sender_pid: 0, sender_euid: 0, data_size: data.length, offsets_size: 0, buffer: dataAt, offsets: dataAt + Math.ceil(data.length / 8) * 8 });
      yield* writeRead(u, v.fd, actor.scratch, cmd, 0);
    } finally {
      actor.scratchUse = null;
    }
  }

  /** BC_ENTER_LOOPER on `v` for this thread, once. */
  private *enterLooper(u: User, actor: Actor, v: BinderView): KGen {
    if (actor.entered.has(v.inst.id)) return;
    actor.entered.add(v.inst.id);
    yield* writeRead(u, v.fd, actor.scratch, cmdWord(BC_ENTER_LOOPER), 0);
  }

  /** The next of the process's binder fds, round robin. */
  private nextView(actor: Actor): BinderView | null {
    const vs = actor.proc.views;
    return vs.length ? vs[actor.rr++ % vs.length]! : null;
  }

  private *brecv(u: User, actor: Actor, replyNow: boolean, freeNow: boolean): KGen<boolean> {
    const v = this.nextView(actor);
    if (!v) return false;
    yield* this.enterLooper(u, actor, v);
    const use: { untrusted?: boolean } = {};
    this.beginScratchUse(actor, use);
    let returns: BinderReturn[];
    try {
      returns = yield* writeRead(u, v.fd, actor.scratch, null, 512);
    } finally {
      actor.scratchUse = null;
    }
    // Another thread may have changed the returns between the driver's copy and this read:
    // what was read is not checked, and the reply stack may no longer mirror the driver's.
    if (use.untrusted) {
      actor.stackLost = true;
      this.note(`  (the returns' memory changed during the read)`);
    }
    for (const r of returns) {
      bump(this.outcomes.binderReturns, r.name);
      if (!r.tr) {
        this.note(`  ${r.name}`);
        continue;
      }
      if (use.untrusted) this.note(`  ${r.name} tx ${r.tr.code} (not checked)`);
      else yield* this.received(u, actor, v, r);
      if (r.name === 'BR_TRANSACTION' && !(r.tr.flags & TF_ONE_WAY)) {
        actor.replyStack.push({ txid: r.tr.code, view: v });
        if (replyNow) yield* this.reply(u, actor, v, (r.tr.code * 37) % 300);
      }
      if (freeNow) yield* this.freeBuffer(u, actor, v, r.tr.buffer);
    }
    return true;
  }

  /** Check a delivered transaction or reply against what was sent, and hold its buffer. */
  private *received(u: User, actor: Actor, v: BinderView, r: BinderReturn): KGen {
    const tr = r.tr!;
    const txid = tr.code;
    const what = `${r.name} of transaction ${txid} to instance ${v.inst.id}`;
    const bad = (m: string): never => {
      throw new FuzzAbort({ kind: 'oracle', message: `${what}: ${m}`, op: this.lastOp });
    };
    const sent = this.sent.get(txid);
    if (!sent) bad('no such transaction was sent');
    if (sent!.received) bad('delivered twice');
    sent!.received = true;
    const cmMoved = sent!.cmSeq !== undefined && sent!.cmSeq !== this.cmSeq;
    // An untrusted send's command may have changed too before the driver read it (its target and sizes).
    const trusted = sent!.untrusted !== true;
    if (trusted && sent!.to !== null && !cmMoved && sent!.to !== v.inst.id) bad(`sent by instance ${sent!.from} to its handle ${sent!.handle}, which names a node of instance ${sent!.to}`);
    if (trusted && (tr.data_size !== sent!.size || tr.offsets_size !== sent!.offsetsSize)) bad(`sizes ${tr.data_size}/${tr.offsets_size}, sent ${sent!.size}/${sent!.offsetsSize}`);
    if (tr.offsets !== tr.buffer + Math.ceil(tr.data_size / 8) * 8) bad(`offsets pointer 0x${tr.offsets.toString(16)} is not right after the data at 0x${tr.buffer.toString(16)}`);
    const bytes = Math.max(8, Math.ceil(tr.data_size / 8) * 8 + Math.ceil(tr.offsets_size / 8) * 8);
    if (v.base && (tr.buffer < v.base || tr.buffer + bytes > v.base + v.size)) bad(`buffer 0x${tr.buffer.toString(16)}+${bytes} outside the mapping 0x${v.base.toString(16)}+${v.size}`);
    for (const [at, h] of v.inst.held) {
      if (tr.buffer < at + h.bytes && at < tr.buffer + bytes) bad(`buffer 0x${tr.buffer.toString(16)}+${bytes} overlaps held buffer 0x${at.toString(16)}+${h.bytes} of transaction ${h.txid}`);
    }
    // Held (free-able by any thread) once this thread is done reading it.
    v.inst.reading.add(tr.buffer);
    try {
      yield* this.readBack(u, v, r, sent!);
    } finally {
      v.inst.reading.delete(tr.buffer);
      v.inst.held.set(tr.buffer, { txid, bytes });
    }
  }

  /** Read a delivered buffer back through the mapping and compare (when the mapping is intact). */
  private *readBack(u: User, v: BinderView, r: BinderReturn, sent: SentTx): KGen {
    const tr = r.tr!;
    const txid = tr.code;
    const bad = (m: string): never => {
      throw new FuzzAbort({ kind: 'oracle', message: `${r.name} of transaction ${txid} to instance ${v.inst.id}: ${m}`, op: this.lastOp });
    };

    const where = `${r.name} tx ${txid} ${tr.data_size}/${tr.offsets_size} at +0x${(tr.buffer - v.base).toString(16)} of instance ${v.inst.id}`;
    if (!v.intact) {
      this.note(`  ${where}`);
      return;
    }
    if (sent.untrusted) {
      this.note(`  ${where} (the sender's memory changed during the send)`);
      return;
    }
    // The mapping is intact: the receiver must read exactly what was sent. The read can wait (a
    // page fault behind the mmap lock), and meanwhile another thread of the process may start an
    // mm operation over the mapping (marking it untrusted before it starts, see touched()): then
    // a signal, or other bytes, are what Linux gives too, and nothing is checked.
    let got: Uint8Array;
    try {
      got = yield* u.read(tr.buffer, tr.data_size);
    } catch (e) {
      if (e instanceof SignalError && !v.intact) {
        this.note(`  ${where} ${e.signame} (the mapping changed during the read)`);
        return;
      }
      if (e instanceof SignalError) bad(`reading the buffer through the intact mapping raised ${e.signame} (${e.codename}) at 0x${e.addr.toString(16)}: ${e.why}`);
      throw e;
    }
    if (!v.intact) {
      this.note(`  ${where} (the mapping changed during the read)`);
      return;
    }
    this.note(`  ${where} bytes ${fnv(got!)}`);
    const obj = sent!.obj;
    const skip = sent!.skip;
    const mm = payloadMismatch(got!, txid, tr.data_size, skip ? 8 : 0, skip ? 8 + FLAT_BINDER_OBJECT_SIZE : 0);
    if (mm >= 0) bad(`byte ${mm} of the payload read through the mapping is 0x${got![mm]?.toString(16)}, sent 0x${payload(txid, tr.data_size)[mm]?.toString(16)}`);
    if (obj) {
      // binder_translate_binder makes every node a handle in the receiver (a process never
      // receives its own node as a binder: it cannot send to itself); binder_translate_handle
      // turns a handle back into the node when the receiver owns it, else into the receiver's
      // handle for the same node.
      const o = decodeFlatBinderObject(got!, 8);
      const node = obj.node;
      const typeName = (t: number): string => (t === BINDER_TYPE_BINDER ? 'a binder' : t === BINDER_TYPE_HANDLE ? 'a handle' : `type 0x${t.toString(16)}`);
      if (obj.sent === 'binder' && node && node.inst === v.inst.id) bad(`${fmtNode(node)} was delivered to its own process`);
      if (obj.sent === 'handle' && node && node.inst === v.inst.id) {
        if (o.type !== BINDER_TYPE_BINDER || o.binder !== node.ptr || o.cookie !== node.cookie) bad(`a handle to ${fmtNode(node)} arrived in its owner as ${typeName(o.type)} ${o.binder.toString(16)}/${o.cookie}, not as the node`);
      } else if (node) {
        if (o.type !== BINDER_TYPE_HANDLE) bad(`${fmtNode(node)} arrived as ${typeName(o.type)}, not as a handle`);
        const known = v.inst.handles.get(o.binder);
        if (known && !sameNode(known, node)) bad(`handle ${o.binder} names ${fmtNode(known)}, but now arrived for ${fmtNode(node)}`);
        v.inst.handles.set(o.binder, node);
      } else if (o.type === BINDER_TYPE_HANDLE && !v.inst.handles.has(o.binder)) v.inst.handles.set(o.binder, null);
    }
  }

  private *freeBuffer(u: User, actor: Actor, v: BinderView, ptr: number): KGen {
    if (v.inst.held.delete(ptr)) v.inst.freed.push(ptr);
    yield* writeRead(u, v.fd, actor.scratch, cmdFree(ptr), 0);
  }

  private *bfree(u: User, actor: Actor, op: Extract<Op, { t: 'bfree' }>): KGen<boolean> {
    const vs = actor.proc.views;
    if (!vs.length) return false;
    // Prefer an fd with buffers to free.
    const withHeld = vs.filter((x) => x.inst.held.size > 0);
    const v = withHeld.length ? withHeld[op.i % withHeld.length]! : vs[op.i % vs.length]!;
    const held = [...v.inst.held.keys()];
    let ptr: number;
    switch (op.which) {
      case 'held':
        if (held.length === 0) return false;
        ptr = held[op.i % held.length]!;
        break;
      case 'again': {
        // A double free: an address this instance freed that is no buffer now. The kernel's
        // allocator is asked which addresses start a buffer again (choosing the operation, not
        // judging it): a reused address can belong to a buffer another thread of the process
        // has just received but not yet counted as held, and freeing that is legal, not a
        // double free (the oracle would then wrongly expect the buffer to stay).
        const live = v.base !== 0 ? [...this.dev.procs].find((bp) => bp.pid === v.inst.owner && bp.alloc.vm_start === v.base)?.alloc.allocated : undefined;
        const again = v.inst.freed.filter((p) => !v.inst.held.has(p) && !live?.has(p));
        if (again.length === 0) return false;
        ptr = again[op.i % again.length]!;
        if (v.inst.reading.has(ptr)) return false;
        break;
      }
      case 'mid':
        // Inside a held buffer and never the start of one: buffers start 8-byte aligned and are
        // at least 8 bytes long (held + 8 was the next buffer's start after an empty one, which
        // another thread may be reading: freeing that is legal, and clears it with TF_CLEAR_BUF).
        if (held.length === 0) return false;
        ptr = held[op.i % held.length]! + 4;
        break;
      case 'unknown':
        ptr = (v.base || WINDOW) + op.i * 4096 + 4093;
        break;
      case 'zero':
        ptr = 0;
        break;
    }
    yield* this.freeBuffer(u, actor, v, ptr);
    return true;
  }

  private *bcmd(u: User, actor: Actor, kind: Extract<Op, { t: 'bcmd' }>['kind']): KGen<boolean> {
    const v = actor.proc.view;
    if (!v) return false;
    const s = actor.scratch;
    switch (kind) {
      case 'unknown':
        yield* writeRead(u, v.fd, s, cmdWord(0xdeadbeef), 0);
        break;
      case 'truncated':
        yield* writeRead(u, v.fd, s, cmdWord(BC_TRANSACTION, 10), 0);
        break;
      case 'badbwr':
        yield* u.ioctl(v.fd, BINDER_WRITE_READ, 0x1000);
        break;
      case 'nullbwr':
        yield* u.ioctl(v.fd, BINDER_WRITE_READ);
        break;
      case 'badread':
        actor.stackLost = true;
        yield* writeRead(u, v.fd, s, null, 512, s, s + BWR_SIZE, TOP - 4096);
        break;
      case 'badwrite':
        yield* writeRead(u, v.fd, s, cmdWord(BC_ENTER_LOOPER), 0, s, 0x1000);
        break;
      case 'looper':
        yield* writeRead(u, v.fd, s, concat([cmdWord(BC_REGISTER_LOOPER), cmdWord(BC_ENTER_LOOPER), cmdWord(BC_EXIT_LOOPER)].slice(0, 1 + (actor.id % 3))), 0);
        break;
      case 'threadexit':
        // A new binder_thread replaces this one on this fd: no stack, not a looper.
        actor.replyStack = actor.replyStack.filter((e) => e.view.inst !== v.inst);
        actor.entered.delete(v.inst.id);
        yield* u.ioctl(v.fd, BINDER_THREAD_EXIT, 0);
        break;
      case 'version': {
        const arg: { protocol_version?: number } = {};
        yield* u.ioctl(v.fd, BINDER_VERSION, arg);
        if (arg.protocol_version !== 8) throw new FuzzAbort({ kind: 'oracle', message: `BINDER_VERSION gave ${String(arg.protocol_version)}`, op: this.lastOp });
        break;
      }
      case 'badioctl':
        yield* u.ioctl(v.fd, 0x1234);
        break;
      case 'maxthreads':
        yield* u.ioctl(v.fd, BINDER_SET_MAX_THREADS, 4);
        break;
    }
    return true;
  }
}

/** FNV-1a of the bytes, as 8 hex digits. */
function fnv(b: Uint8Array): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < b.length; i++) h = Math.imul(h ^ b[i]!, 0x01000193);
  return (h >>> 0).toString(16).padStart(8, '0');
}

function commOf(slot: number): string {
  return `fz${slot}`;
}

function errText(e: unknown): string {
  if (e instanceof Error) return `${e.name}: ${e.message}${e.stack ? `\n${e.stack.split('\n').slice(1, 8).join('\n')}` : ''}`;
  return String(e);
}

