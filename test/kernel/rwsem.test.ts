// rwsem semantics and fairness (kernel/locking/rwsem.ts) against kernel/locking/rwsem.c:
// shared readers, exclusive writers, trylocks (RWSEM_READ_FAILED_MASK), a queued writer holding
// back new readers, rwsem_mark_wake's wake-up order (a writer at the head alone; otherwise every
// queued reader, writers keep their places), hand-off to the first waiter, downgrade_write
// (RWSEM_WAKE_READ_OWNED), and the per-caller contention accounting.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { Kernel } from '../../kernel/kernel.ts';
import { RwSemaphore } from '../../kernel/locking/rwsem.ts';
import type { KGen } from '../../kernel/sched/core.ts';

interface Ev {
  t: number;
  who: string;
  what: 'arrive' | 'got' | 'release' | 'try-ok' | 'try-fail';
}

function system(cpus: number, seed = 1): { k: Kernel; sem: RwSemaphore; log: Ev[] } {
  const k = new Kernel({ cpus, seed, memoryBytes: 16 << 20 });
  return { k, sem: new RwSemaphore(k, '&test->sem', k.lockdep), log: [] };
}

/**
 * A kernel thread on `cpu` that waits `delay` cycles, takes the lock (for write or read), holds
 * it `hold` cycles, and releases it.
 */
function locker(k: Kernel, sem: RwSemaphore, log: Ev[], who: string, o: { cpu: number; write: boolean; delay: number; hold: number; caller?: string }): void {
  k.kthread(who, function* (): KGen {
    if (o.delay) yield* k.sleepFor(o.delay);
    log.push({ t: k.now(), who, what: 'arrive' });
    if (o.write) yield* sem.down_write(o.caller ?? who);
    else yield* sem.down_read(o.caller ?? who);
    log.push({ t: k.now(), who, what: 'got' });
    yield* k.sleepFor(o.hold);
    log.push({ t: k.now(), who, what: 'release' });
    if (o.write) sem.up_write();
    else sem.up_read();
  }, o.cpu);
}

const at = (log: Ev[], who: string, what: Ev['what']): number => {
  const e = log.find((x) => x.who === who && x.what === what);
  if (!e) throw new Error(`${who} never did ${what}`);
  return e.t;
};
const order = (log: Ev[], what: Ev['what']): string[] => log.filter((e) => e.what === what).map((e) => e.who);

describe('rwsem: blocking read and write', () => {
  it('readers share the lock', () => {
    const { k, sem, log } = system(3);
    locker(k, sem, log, 'r1', { cpu: 0, write: false, delay: 0, hold: 100_000 });
    locker(k, sem, log, 'r2', { cpu: 1, write: false, delay: 10_000, hold: 100_000 });
    let maxReaders = 0;
    k.kthread('probe', function* () {
      yield* k.sleepFor(50_000);
      maxReaders = sem.readers;
    }, 2);
    k.run();
    expect(maxReaders).toBe(2);
    // r2 did not wait for r1.
    expect(at(log, 'r2', 'got')).toBeLessThan(at(log, 'r1', 'release'));
    expect(sem.isLocked).toBe(false);
    expect(statOf(sem, 'r2').contended).toBe(0);
  });

  it('a writer waits for the readers, and readers wait for a writer', () => {
    const { k, sem, log } = system(3);
    locker(k, sem, log, 'r1', { cpu: 0, write: false, delay: 0, hold: 100_000 });
    locker(k, sem, log, 'w', { cpu: 1, write: true, delay: 10_000, hold: 100_000 });
    locker(k, sem, log, 'r2', { cpu: 2, write: false, delay: 150_000, hold: 10_000 });
    k.run();
    expect(at(log, 'w', 'got')).toBeGreaterThanOrEqual(at(log, 'r1', 'release'));
    expect(at(log, 'r2', 'got')).toBeGreaterThanOrEqual(at(log, 'w', 'release'));
    expect(order(log, 'got')).toEqual(['r1', 'w', 'r2']);
  });

  it('writers exclude each other and are served in arrival order', () => {
    const { k, sem, log } = system(4);
    locker(k, sem, log, 'w1', { cpu: 0, write: true, delay: 0, hold: 100_000 });
    locker(k, sem, log, 'w3', { cpu: 2, write: true, delay: 30_000, hold: 10_000 });
    locker(k, sem, log, 'w2', { cpu: 1, write: true, delay: 20_000, hold: 10_000 });
    k.run();
    expect(order(log, 'got')).toEqual(['w1', 'w2', 'w3']);
    expect(at(log, 'w2', 'got')).toBeGreaterThanOrEqual(at(log, 'w1', 'release'));
    expect(at(log, 'w3', 'got')).toBeGreaterThanOrEqual(at(log, 'w2', 'release'));
  });
});

describe('rwsem: trylocks', () => {
  /** Run `probe` at `when` on its own CPU while the scenario runs. */
  function probeAt(k: Kernel, when: number, cpu: number, probe: () => void): void {
    k.kthread('probe', function* () {
      yield* k.sleepFor(when);
      probe();
    }, cpu);
  }

  it('down_read_trylock succeeds on a free or read-held lock and fails on a write-held one', () => {
    const { k, sem, log } = system(3);
    const results: boolean[] = [];
    probeAt(k, 1_000, 2, () => {
      results.push(sem.down_read_trylock('try'));
      sem.up_read();
    });
    locker(k, sem, log, 'r', { cpu: 0, write: false, delay: 10_000, hold: 50_000 });
    probeAt(k, 30_000, 1, () => {
      results.push(sem.down_read_trylock('try'));
      sem.up_read();
    });
    locker(k, sem, log, 'w', { cpu: 0, write: true, delay: 100_000, hold: 50_000 });
    probeAt(k, 120_000, 1, () => results.push(sem.down_read_trylock('try')));
    k.run();
    expect(results).toEqual([true, true, false]);
    expect(k.reports.reports).toEqual([]);
  });

  it('down_read_trylock fails while a writer waits (RWSEM_FLAG_WAITERS is in the read-fail mask)', () => {
    const { k, sem, log } = system(3);
    let r: boolean | null = null;
    locker(k, sem, log, 'r', { cpu: 0, write: false, delay: 0, hold: 100_000 });
    locker(k, sem, log, 'w', { cpu: 1, write: true, delay: 10_000, hold: 10_000 });
    probeAt(k, 50_000, 2, () => {
      expect(sem.waiting).toBe(1);
      r = sem.down_read_trylock('try');
    });
    k.run();
    expect(r).toBe(false);
  });

  it('down_write_trylock needs a free lock with nobody waiting', () => {
    const { k, sem, log } = system(3);
    const results: boolean[] = [];
    locker(k, sem, log, 'r', { cpu: 0, write: false, delay: 0, hold: 50_000 });
    probeAt(k, 10_000, 1, () => results.push(sem.down_write_trylock('try')));
    probeAt(k, 100_000, 2, () => {
      results.push(sem.down_write_trylock('try'));
      sem.up_write();
    });
    k.run();
    expect(results).toEqual([false, true]);
    expect(sem.isLocked).toBe(false);
  });
});

describe('rwsem: fairness and wake-up order (rwsem_mark_wake)', () => {
  it('a waiting writer blocks readers that arrive after it, even while readers hold the lock', () => {
    const { k, sem, log } = system(3);
    locker(k, sem, log, 'r1', { cpu: 0, write: false, delay: 0, hold: 100_000 });
    locker(k, sem, log, 'w', { cpu: 1, write: true, delay: 10_000, hold: 50_000 });
    locker(k, sem, log, 'r2', { cpu: 2, write: false, delay: 20_000, hold: 10_000 });
    k.run();
    expect(order(log, 'got')).toEqual(['r1', 'w', 'r2']);
    expect(at(log, 'r2', 'got')).toBeGreaterThanOrEqual(at(log, 'w', 'release'));
    expect(statOf(sem, 'r2').contended).toBe(1);
  });

  it('a writer at the head of the queue is woken alone; readers behind it wait for it', () => {
    const { k, sem, log } = system(3);
    locker(k, sem, log, 'w1', { cpu: 0, write: true, delay: 0, hold: 100_000 });
    locker(k, sem, log, 'w2', { cpu: 1, write: true, delay: 10_000, hold: 50_000 });
    locker(k, sem, log, 'r', { cpu: 2, write: false, delay: 20_000, hold: 10_000 });
    k.run();
    expect(order(log, 'got')).toEqual(['w1', 'w2', 'r']);
    expect(at(log, 'r', 'got')).toBeGreaterThanOrEqual(at(log, 'w2', 'release'));
  });

  it('with a reader at the head, every queued reader is woken together and queued writers keep their turn', () => {
    // rwsem_mark_wake (phase-fair since v5.3): "all readers are eligible to acquire the lock at
    // the same time irrespective of their order in the queue. The writers acquire the lock
    // according to their order in the queue."
    const { k, sem, log } = system(6);
    locker(k, sem, log, 'w1', { cpu: 0, write: true, delay: 0, hold: 100_000 });
    locker(k, sem, log, 'r1', { cpu: 1, write: false, delay: 10_000, hold: 50_000 });
    locker(k, sem, log, 'r2', { cpu: 2, write: false, delay: 20_000, hold: 50_000 });
    locker(k, sem, log, 'w2', { cpu: 3, write: true, delay: 30_000, hold: 50_000 });
    locker(k, sem, log, 'r3', { cpu: 4, write: false, delay: 40_000, hold: 50_000 });
    let readersAfterRelease = -1;
    let w2Waiting = false;
    k.kthread('probe', function* () {
      yield* k.sleepFor(120_000);
      readersAfterRelease = sem.readers;
      w2Waiting = sem.waiting === 1 && !sem.isWriteLocked;
    }, 5);
    k.run();
    expect(readersAfterRelease).toBe(3);
    expect(w2Waiting).toBe(true);
    const released = at(log, 'w1', 'release');
    for (const r of ['r1', 'r2', 'r3']) expect(at(log, r, 'got')).toBeGreaterThanOrEqual(released);
    expect(order(log, 'got').indexOf('w2')).toBe(4); // last
    for (const r of ['r1', 'r2', 'r3']) expect(at(log, 'w2', 'got')).toBeGreaterThanOrEqual(at(log, r, 'release'));
  });

  it('hands the lock off: the first waiter owns it at release time, nobody can steal it', () => {
    const { k, sem } = system(3);
    let owner: string | null = null;
    let steal: boolean | null = null;
    let readSteal: boolean | null = null;
    k.kthread('w1', function* () {
      yield* sem.down_write('w1');
      yield* k.sleepFor(100_000);
      sem.up_write();
      owner = sem.writer?.comm ?? null;
      // The releasing task tries to take it back at once: it was handed to w2 already.
      steal = sem.down_write_trylock('w1');
      readSteal = sem.down_read_trylock('w1');
    }, 0);
    k.kthread('w2', function* () {
      yield* k.sleepFor(10_000);
      yield* sem.down_write('w2');
      sem.up_write();
    }, 1);
    k.run();
    expect(owner).toBe('w2');
    expect(steal).toBe(false);
    expect(readSteal).toBe(false);
    expect(sem.isLocked).toBe(false);
  });

  it('property: writers never overlap anyone, writers are served in arrival order, everyone gets the lock', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ write: fc.boolean(), delay: fc.integer({ min: 0, max: 40 }), hold: fc.integer({ min: 1, max: 20 }) }), { minLength: 1, maxLength: 7 }),
        fc.integer({ min: 1, max: 1000 }),
        (ops, seed) => {
          const { k, sem, log } = system(ops.length, seed);
          let readers = 0;
          let writers = 0;
          let bad = 0;
          ops.forEach((o, i) => {
            const who = `${o.write ? 'w' : 'r'}${i}`;
            k.kthread(who, function* () {
              if (o.delay) yield* k.sleepFor(o.delay * 5_000);
              log.push({ t: k.now(), who, what: 'arrive' });
              if (o.write) {
                yield* sem.down_write(who);
                if (readers || writers) bad++;
                writers++;
              } else {
                yield* sem.down_read(who);
                if (writers) bad++;
                readers++;
              }
              log.push({ t: k.now(), who, what: 'got' });
              yield* k.sleepFor(o.hold * 5_000);
              if (o.write) {
                writers--;
                sem.up_write();
              } else {
                readers--;
                sem.up_read();
              }
            }, i);
          });
          k.run();
          expect(bad).toBe(0);
          expect(order(log, 'got').length).toBe(ops.length);
          const w = (x: string[]) => x.filter((n) => n.startsWith('w'));
          expect(w(order(log, 'got'))).toEqual(w(order(log, 'arrive')));
          expect(sem.isLocked).toBe(false);
          expect(sem.waiting).toBe(0);
          let acq = 0;
          for (const s of sem.stats.byCaller.values()) acq += s.acquisitions;
          expect(acq).toBe(ops.length);
        },
      ),
      { numRuns: 40 },
    );
  });
});

describe('rwsem: downgrade_write (rwsem_downgrade_wake)', () => {
  it('keeps the lock for read and lets every queued reader in, but not a queued writer', () => {
    const { k, sem, log } = system(5);
    let afterDowngrade = { readers: -1, writeLocked: true, waiting: -1 };
    k.kthread('w', function* () {
      yield* sem.down_write('w');
      yield* k.sleepFor(100_000);
      sem.downgrade_write();
      afterDowngrade = { readers: sem.readers, writeLocked: sem.isWriteLocked, waiting: sem.waiting };
      log.push({ t: k.now(), who: 'w', what: 'release' });
      yield* k.sleepFor(50_000);
      sem.up_read();
    }, 0);
    locker(k, sem, log, 'r1', { cpu: 1, write: false, delay: 10_000, hold: 20_000 });
    locker(k, sem, log, 'w2', { cpu: 2, write: true, delay: 20_000, hold: 20_000 });
    locker(k, sem, log, 'r2', { cpu: 3, write: false, delay: 30_000, hold: 20_000 });
    k.run();
    // The downgrader plus both queued readers (RWSEM_WAKE_READ_OWNED wakes all queued readers).
    expect(afterDowngrade).toEqual({ readers: 3, writeLocked: false, waiting: 1 });
    expect(order(log, 'got').slice(0, 2).sort()).toEqual(['r1', 'r2']);
    expect(order(log, 'got')[2]).toBe('w2');
    expect(at(log, 'r2', 'got')).toBeLessThan(at(log, 'w', 'release') + 10_000);
    expect(at(log, 'w2', 'got')).toBeGreaterThanOrEqual(at(log, 'w', 'release') + 50_000);
    expect(k.reports.reports).toEqual([]);
  });

  it('wakes nobody when a writer is first in the queue', () => {
    const { k, sem, log } = system(4);
    let readersAfter = -1;
    k.kthread('w', function* () {
      yield* sem.down_write('w');
      yield* k.sleepFor(100_000);
      sem.downgrade_write();
      readersAfter = sem.readers;
      yield* k.sleepFor(50_000);
      sem.up_read();
    }, 0);
    locker(k, sem, log, 'w2', { cpu: 1, write: true, delay: 10_000, hold: 20_000 });
    locker(k, sem, log, 'r1', { cpu: 2, write: false, delay: 20_000, hold: 20_000 });
    k.run();
    expect(readersAfter).toBe(1);
    expect(order(log, 'got')).toEqual(['w2', 'r1']);
  });

  it('a downgrade by a task that does not hold the lock for write is a warning', () => {
    const { k, sem } = system(1);
    k.kthread('x', function* () {
      yield* sem.down_read('x');
      sem.downgrade_write();
      sem.up_read();
    }, 0);
    k.run();
    expect(k.reports.reports.map((r) => r.title)).toEqual(['WARNING: downgrade_write by a task that does not own the rwsem']);
  });
});

describe('rwsem: release by a non-owner', () => {
  it('up_read without holding it and up_write by another task are warnings (DEBUG_RWSEMS_WARN_ON)', () => {
    const { k, sem } = system(2);
    k.kthread('owner', function* () {
      yield* sem.down_write('owner');
      yield* k.sleepFor(50_000);
      sem.up_write();
    }, 0);
    k.kthread('other', function* () {
      yield* k.sleepFor(10_000);
      sem.up_write();
      sem.up_read();
    }, 1);
    k.run();
    expect(k.reports.reports.map((r) => [r.kind, r.title])).toEqual([
      ['WARN', 'WARNING: up_write by a task that does not own the rwsem'],
      ['WARN', 'WARNING: up_read on an rwsem not held for read'],
    ]);
    expect(sem.isLocked).toBe(false);
  });
});

describe('rwsem: contention accounting per caller', () => {
  it('counts acquisitions, contended acquisitions, cycles waited and whom the waiters waited behind', () => {
    const { k, sem, log } = system(3);
    locker(k, sem, log, 'binder', { cpu: 0, write: true, delay: 0, hold: 200_000, caller: 'binder' });
    locker(k, sem, log, 'fault1', { cpu: 1, write: false, delay: 50_000, hold: 10_000, caller: 'do_user_addr_fault' });
    locker(k, sem, log, 'fault2', { cpu: 2, write: false, delay: 300_000, hold: 10_000, caller: 'do_user_addr_fault' });
    k.run();
    const b = statOf(sem, 'binder');
    expect(b).toEqual({ acquisitions: 1, contended: 0, waitCycles: 0 });
    const f = statOf(sem, 'do_user_addr_fault');
    expect(f.acquisitions).toBe(2);
    expect(f.contended).toBe(1);
    // fault1 blocked from its arrival until binder released (plus the wake-up latency).
    const blocked = at(log, 'binder', 'release') - at(log, 'fault1', 'arrive');
    expect(f.waitCycles).toBeGreaterThanOrEqual(blocked);
    expect(f.waitCycles).toBeLessThan(blocked + 20_000);
    expect(f.waitCycles).toBeLessThanOrEqual(at(log, 'fault1', 'got') - at(log, 'fault1', 'arrive'));
    expect(f.waitCycles).toBeGreaterThan(at(log, 'fault1', 'got') - at(log, 'fault1', 'arrive') - 100);
    expect(sem.stats.blockedBy.get('binder')).toBe(f.waitCycles);
    expect([...sem.stats.blockedBy.keys()]).toEqual(['binder']);
    expect(k.liveTasks()).toBe(0);
  });

  it('a waiter on a CPU idling until a far timer takes the lock at the release, not at the timer', () => {
    // The wake-up reaches an idle CPU as Linux's reschedule IPI does: its clock must not have
    // leapt to its next timer in the meantime (that would inflate the wait).
    const { k, sem, log } = system(2);
    k.kthread('sleeper', function* () {
      yield* k.sleepFor(5_000_000);
    }, 0);
    locker(k, sem, log, 'holder', { cpu: 1, write: true, delay: 0, hold: 100_000 });
    locker(k, sem, log, 'waiter', { cpu: 0, write: false, delay: 10_000, hold: 1_000 });
    k.run();
    const release = at(log, 'holder', 'release');
    expect(at(log, 'waiter', 'got')).toBeGreaterThanOrEqual(release);
    expect(at(log, 'waiter', 'got')).toBeLessThan(release + 20_000);
    expect(statOf(sem, 'waiter').waitCycles).toBeLessThan(120_000);
  });

  it('waits are attributed to the pid that waited', () => {
    const { k, sem } = system(2);
    let waiterPid = 0;
    k.kthread('holder', function* () {
      yield* sem.down_read('holder');
      yield* k.sleepFor(100_000);
      sem.up_read();
    }, 0);
    const t = k.kthread('waiter', function* () {
      yield* k.sleepFor(10_000);
      yield* sem.down_write('waiter');
      sem.up_write();
    }, 1);
    waiterPid = t.pid;
    k.run();
    expect([...sem.stats.waitByPid.keys()]).toEqual([waiterPid]);
    expect(sem.stats.waitByPid.get(waiterPid)).toBe(statOf(sem, 'waiter').waitCycles);
    expect(statOf(sem, 'waiter').waitCycles).toBeGreaterThan(80_000);
  });
});

function statOf(sem: RwSemaphore, caller: string): { acquisitions: number; contended: number; waitCycles: number } {
  const s = sem.stats.byCaller.get(caller);
  if (!s) throw new Error(`no stats for ${caller}`);
  return { ...s };
}
