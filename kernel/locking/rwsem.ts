/**
 * kernel/locking/rwsem.ts — reader/writer semaphores in virtual time (kernel/locking/rwsem.c).
 *
 * Behaviour kept from Linux: readers share, a writer excludes everyone; a waiting writer blocks
 * new readers (a reader that would pass a queued writer waits, and down_read_trylock fails while
 * anyone waits); waiters queue FIFO; on release the lock is handed to the first waiter — if it is
 * a writer, to that writer alone, if a reader, to every reader in the queue (rwsem_mark_wake
 * wakes all queued readers, writers stay queued); downgrade_write turns the writer into a reader
 * and, unless a writer is first in the queue, lets every queued reader in (RWSEM_WAKE_READ_OWNED).
 * The lock is marked held by the tasks being woken before they run again, and lockdep learns of
 * an acquisition before the task blocks, as lock_acquire() runs before the slow path in Linux.
 *
 * Deviations: no optimistic spinning and no lock stealing — the lock is always handed off, which
 * is what Linux does after a waiter has waited long (RWSEM_FLAG_HANDOFF) and keeps runs
 * reproducible; no MAX_READERS_WAKEUP (256) cap on one wake-up; no killable/interruptible
 * variants.
 *
 * Every acquisition is accounted per caller (a label the call site passes, e.g. "binder" or
 * "do_user_addr_fault"): acquisitions, contended acquisitions, cycles waited, and which caller
 * was holding the lock when a waiter blocked, so an experiment can say whose holding made whom
 * wait.
 */

import type { Kernel } from '../kernel.ts';
import { might_sleep, type KGen, type Task } from '../sched/core.ts';
import type { Lockdep } from './lockdep.ts';

export interface LockStat {
  acquisitions: number;
  contended: number;
  waitCycles: number;
}

export interface LockStats {
  /** By the caller label of the acquirer. */
  byCaller: Map<string, LockStat>;
  /** Cycles waiters spent blocked, by the caller label of the holder they waited behind. */
  blockedBy: Map<string, number>;
  /** Cycles waited, by waiter pid. */
  waitByPid: Map<number, number>;
}

export function newLockStats(): LockStats {
  return { byCaller: new Map(), blockedBy: new Map(), waitByPid: new Map() };
}

export function statFor(s: LockStats, caller: string): LockStat {
  let x = s.byCaller.get(caller);
  if (!x) {
    x = { acquisitions: 0, contended: 0, waitCycles: 0 };
    s.byCaller.set(caller, x);
  }
  return x;
}

interface Waiter {
  task: Task;
  write: boolean;
  since: number;
  caller: string;
  site: string;
  /** Caller label of a holder at the moment the waiter blocked. */
  blockedBehind: string;
  granted: boolean;
}

export class RwSemaphore {
  /** Number of readers holding it. */
  readers = 0;
  writer: Task | null = null;
  /** Reader tasks holding it, with the caller label of each hold. */
  readonly readerTasks: { task: Task; caller: string }[] = [];
  writerCaller = '';
  private readonly waiters: Waiter[] = [];
  readonly stats: LockStats = newLockStats();
  /** Hooks for the mmap_lock tracepoints and the VMA-lock sequence count. */
  onWriteRelease: (() => void) | null = null;

  constructor(
    private readonly k: Kernel,
    readonly cls: string,
    private readonly lockdep: Lockdep,
  ) {}

  get waiting(): number {
    return this.waiters.length;
  }

  get isWriteLocked(): boolean {
    return this.writer !== null;
  }

  get isLocked(): boolean {
    return this.writer !== null || this.readers > 0;
  }

  private canRead(): boolean {
    return this.writer === null && this.waiters.length === 0;
  }

  private grantRead(t: Task, caller: string): void {
    this.readers++;
    this.readerTasks.push({ task: t, caller });
  }

  private holderLabel(): string {
    if (this.writer) return this.writerCaller;
    return this.readerTasks[0]?.caller ?? '?';
  }

  private account(caller: string, contended: boolean, waited: number, pid: number): void {
    const s = statFor(this.stats, caller);
    s.acquisitions++;
    if (contended) {
      s.contended++;
      s.waitCycles += waited;
      this.stats.waitByPid.set(pid, (this.stats.waitByPid.get(pid) ?? 0) + waited);
    }
  }

  /** down_read: may sleep. */
  *down_read(caller: string, site = caller): KGen {
    const k = this.k;
    const t = k.current!;
    k.charge(k.costs.lock);
    might_sleep(k, 'kernel/locking/rwsem.c:1523', site);
    if (this.canRead()) {
      this.grantRead(t, caller);
      this.account(caller, false, 0, t.pid);
      this.lockdep.acquire(this.cls, this, 'read', site, false);
      return;
    }
    // lock_acquire() precedes the slow path: a circular dependency is reported before the task
    // blocks on it (and so before it can deadlock).
    this.lockdep.acquire(this.cls, this, 'read', site, false);
    yield* this.block(t, false, caller, site);
  }

  /** down_read_trylock: fails if a writer holds it or anyone waits. */
  down_read_trylock(caller: string, site = caller): boolean {
    const k = this.k;
    const t = k.current;
    k.charge(k.costs.lock);
    if (!t || !this.canRead()) return false;
    this.grantRead(t, caller);
    this.account(caller, false, 0, t.pid);
    this.lockdep.acquire(this.cls, this, 'read', site, true);
    return true;
  }

  /** down_write: may sleep. */
  *down_write(caller: string, site = caller): KGen {
    const k = this.k;
    const t = k.current!;
    k.charge(k.costs.lock);
    might_sleep(k, 'kernel/locking/rwsem.c:1578', site);
    if (this.writer === null && this.readers === 0 && this.waiters.length === 0) {
      this.writer = t;
      this.writerCaller = caller;
      this.account(caller, false, 0, t.pid);
      this.lockdep.acquire(this.cls, this, 'write', site, false);
      return;
    }
    this.lockdep.acquire(this.cls, this, 'write', site, false);
    yield* this.block(t, true, caller, site);
  }

  down_write_trylock(caller: string, site = caller): boolean {
    const k = this.k;
    const t = k.current;
    k.charge(k.costs.lock);
    if (!t || this.writer !== null || this.readers !== 0 || this.waiters.length !== 0) return false;
    this.writer = t;
    this.writerCaller = caller;
    this.account(caller, false, 0, t.pid);
    this.lockdep.acquire(this.cls, this, 'write', site, true);
    return true;
  }

  private *block(t: Task, write: boolean, caller: string, site: string): KGen {
    const k = this.k;
    const w: Waiter = { task: t, write, since: k.now(), caller, site, blockedBehind: this.holderLabel(), granted: false };
    this.waiters.push(w);
    t.state = 'sleeping';
    t.since = w.since;
    while (!w.granted) {
      t.state = 'sleeping';
      yield { kind: 'sleep', reason: `${this.cls} (${write ? 'write' : 'read'}, ${caller})` };
    }
    const waited = k.now() - w.since;
    this.account(caller, true, waited, t.pid);
    this.stats.blockedBy.set(w.blockedBehind, (this.stats.blockedBy.get(w.blockedBehind) ?? 0) + waited);
  }

  /** up_read. */
  up_read(t: Task | null = this.k.current): void {
    const k = this.k;
    k.charge(k.costs.lock);
    const i = t ? this.readerTasks.findIndex((r) => r.task === t) : -1;
    if (this.readers <= 0 || i < 0) {
      k.warn('WARNING: up_read on an rwsem not held for read', `DEBUG_RWSEMS_WARN_ON(sem->owner != current): ${this.cls}`, { cls: this.cls });
      return;
    }
    this.readerTasks.splice(i, 1);
    this.readers--;
    this.lockdep.release(this, t);
    if (this.readers === 0) this.handOff();
  }

  /** up_write. */
  up_write(): void {
    const k = this.k;
    k.charge(k.costs.lock);
    if (this.writer === null || this.writer !== k.current) {
      k.warn('WARNING: up_write by a task that does not own the rwsem', `DEBUG_RWSEMS_WARN_ON(sem->owner != current): ${this.cls}`, { cls: this.cls });
      return;
    }
    const w = this.writer;
    this.writer = null;
    this.writerCaller = '';
    this.lockdep.release(this, w);
    if (this.onWriteRelease) this.onWriteRelease();
    this.handOff();
  }

  /** downgrade_write: keep holding, for read, and let queued readers in. */
  downgrade_write(): void {
    const k = this.k;
    const t = this.writer;
    if (t === null || t !== k.current) {
      k.warn('WARNING: downgrade_write by a task that does not own the rwsem', `DEBUG_RWSEMS_WARN_ON(sem->owner != current): ${this.cls}`, { cls: this.cls });
      return;
    }
    const caller = this.writerCaller;
    this.writer = null;
    this.writerCaller = '';
    if (this.onWriteRelease) this.onWriteRelease();
    this.grantRead(t, caller);
    this.lockdep.changeMode(this, 'read', t);
    // rwsem_downgrade_wake → rwsem_mark_wake(RWSEM_WAKE_READ_OWNED): nothing if a writer is
    // first; otherwise every queued reader, wherever it stands in the queue.
    if (this.waiters.length && !this.waiters[0]!.write) this.wakeReaders();
  }

  /** Give the lock to the waiters Linux would wake. */
  private handOff(): void {
    if (this.writer !== null || this.readers !== 0 || this.waiters.length === 0) return;
    const first = this.waiters[0]!;
    if (first.write) {
      this.waiters.shift();
      this.writer = first.task;
      this.writerCaller = first.caller;
      first.granted = true;
      this.k.wake(first.task);
      return;
    }
    this.wakeReaders();
  }

  /**
   * rwsem_mark_wake with a reader first: grant the lock to every queued reader (phase-fair:
   * "all readers are eligible to acquire the lock at the same time irrespective of their order
   * in the queue"); writers stay queued in order.
   */
  private wakeReaders(): void {
    for (let i = 0; i < this.waiters.length; ) {
      const w = this.waiters[i]!;
      if (w.write) i++;
      else {
        this.waiters.splice(i, 1);
        this.wakeWaiter(w);
      }
    }
  }

  private wakeWaiter(w: Waiter): void {
    this.grantRead(w.task, w.caller);
    w.granted = true;
    this.k.wake(w.task);
  }

  /** Does task `t` hold it (for `mode`)? */
  heldBy(t: Task | null, mode: 'any' | 'read' | 'write' = 'any'): boolean {
    if (!t) return false;
    if (mode !== 'read' && this.writer === t) return true;
    if (mode !== 'write' && this.readerTasks.some((r) => r.task === t)) return true;
    return false;
  }
}
