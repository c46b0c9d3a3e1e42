/**
 * kernel/locking/mutex.ts — sleeping mutexes (kernel/locking/mutex.c) and spinlocks
 * (include/linux/spinlock.h) in virtual time.
 *
 * A mutex hands off to its first waiter in FIFO order (no optimistic spinning, as rwsem.ts) and
 * is accounted per caller like an rwsem. A spinlock never sleeps: in one simulated thread it can
 * only be found held if its holder yielded while holding it, which Linux forbids ("BUG:
 * scheduling while atomic") — the scheduler reports that; a trylock on a held spinlock fails.
 * Holding a spinlock raises the task's preempt_count; taking a sleeping lock then is reported
 * as might_sleep() does ("BUG: sleeping function called from invalid context").
 */

import type { Kernel } from '../kernel.ts';
import { might_sleep, type KGen, type Task } from '../sched/core.ts';
import type { Lockdep } from './lockdep.ts';
import { newLockStats, statFor, type LockStats } from './rwsem.ts';

export class Mutex {
  owner: Task | null = null;
  ownerCaller = '';
  private readonly waiters: { task: Task; since: number; caller: string; site: string; behind: string; granted: boolean }[] = [];
  readonly stats: LockStats = newLockStats();

  constructor(
    private readonly k: Kernel,
    readonly cls: string,
    private readonly lockdep: Lockdep,
  ) {}

  get isLocked(): boolean {
    return this.owner !== null;
  }

  *lock(caller: string, site = caller): KGen {
    const k = this.k;
    const t = k.current!;
    k.charge(k.costs.lock);
    might_sleep(k, 'kernel/locking/mutex.c:283', site);
    if (this.owner === t) k.bug(`BUG: ${this.cls}: recursive mutex_lock`, `DEBUG_LOCKS_WARN_ON(lock->owner == current): ${this.cls} taken again by ${t.comm}/${t.pid} at ${site}`, { cls: this.cls });
    if (this.owner === null && this.waiters.length === 0) {
      this.owner = t;
      this.ownerCaller = caller;
      const s = statFor(this.stats, caller);
      s.acquisitions++;
      this.lockdep.acquire(this.cls, this, 'exclusive', site, false);
      return;
    }
    // mutex_acquire() precedes the slow path: lockdep sees the attempt before the task blocks.
    this.lockdep.acquire(this.cls, this, 'exclusive', site, false);
    const w = { task: t, since: k.now(), caller, site, behind: this.ownerCaller, granted: false };
    this.waiters.push(w);
    while (!w.granted) {
      t.state = 'sleeping';
      t.since = w.since;
      yield { kind: 'sleep', reason: `${this.cls} (${caller})` };
    }
    const waited = k.now() - w.since;
    const s = statFor(this.stats, caller);
    s.acquisitions++;
    s.contended++;
    s.waitCycles += waited;
    this.stats.blockedBy.set(w.behind, (this.stats.blockedBy.get(w.behind) ?? 0) + waited);
    this.stats.waitByPid.set(t.pid, (this.stats.waitByPid.get(t.pid) ?? 0) + waited);
  }

  trylock(caller: string, site = caller): boolean {
    const k = this.k;
    const t = k.current;
    k.charge(k.costs.lock);
    if (!t || this.owner !== null || this.waiters.length !== 0) return false;
    this.owner = t;
    this.ownerCaller = caller;
    statFor(this.stats, caller).acquisitions++;
    this.lockdep.acquire(this.cls, this, 'exclusive', site, true);
    return true;
  }

  unlock(): void {
    const k = this.k;
    k.charge(k.costs.lock);
    const t = k.current;
    if (this.owner === null || this.owner !== t) {
      k.warn(`WARNING: ${this.cls}: mutex_unlock by a task that does not own it`, `DEBUG_LOCKS_WARN_ON(__owner_task(owner) != current): ${this.cls}`, { cls: this.cls });
      return;
    }
    this.lockdep.release(this, t);
    this.owner = null;
    this.ownerCaller = '';
    const w = this.waiters.shift();
    if (w) {
      this.owner = w.task;
      this.ownerCaller = w.caller;
      w.granted = true;
      k.wake(w.task);
    }
  }

  heldByCurrent(): boolean {
    return this.owner !== null && this.owner === this.k.current;
  }
}

export class SpinLock {
  owner: Task | null = null;
  /** Acquisition counts per caller (never contended in a correct run). */
  readonly stats: LockStats = newLockStats();

  constructor(
    private readonly k: Kernel,
    readonly cls: string,
    private readonly lockdep: Lockdep,
  ) {}

  lock(caller: string, site = caller): void {
    const k = this.k;
    k.charge(k.costs.lock / 2);
    if (this.owner !== null) {
      // Only possible if the holder slept while holding it: report it as Linux's spinlock
      // debugging does, then take it anyway (the run continues to show the consequences).
      k.bug(`BUG: spinlock ${this.cls} already held`, `BUG: spinlock recursion or lockup on CPU#${k.thisCpu()}, ${this.cls} held by ${this.owner.comm}/${this.owner.pid}, wanted at ${site}`, { cls: this.cls });
    }
    this.owner = k.current;
    if (k.current) k.current.preemptCount++;
    statFor(this.stats, caller).acquisitions++;
    this.lockdep.acquire(this.cls, this, 'exclusive', site, false);
  }

  trylock(caller: string, site = caller): boolean {
    this.k.charge(this.k.costs.lock / 2);
    if (this.owner !== null) return false;
    this.owner = this.k.current;
    if (this.owner) this.owner.preemptCount++;
    statFor(this.stats, caller).acquisitions++;
    this.lockdep.acquire(this.cls, this, 'exclusive', site, true);
    return true;
  }

  unlock(): void {
    this.k.charge(this.k.costs.lock / 2);
    this.lockdep.release(this, this.owner);
    if (this.owner && this.owner.preemptCount > 0) this.owner.preemptCount--;
    this.owner = null;
  }
}
