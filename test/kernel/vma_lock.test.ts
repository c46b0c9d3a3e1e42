// Per-VMA locks (kernel/mm/mmap_lock.ts) against mm/mmap_lock.c and include/linux/mmap_lock.h:
// lock_vma_under_rcu never waits and fails exactly where vma_start_read fails (write-locked in
// the current mm_lock_seq cycle, being write-locked, detached, no VMA at the address);
// vma_start_write waits for readers; one mm_lock_seq bump at mmap_write_unlock or
// mmap_write_downgrade releases every VMA write lock; uffd_lock_vma (mm/userfaultfd.c) waits by
// taking the mmap read lock briefly.
import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { ENOENT } from '../../kernel/errno.ts';
import type { User } from '../../kernel/uapi.ts';
import type { KGen, Task } from '../../kernel/sched/core.ts';
import type { MmStruct, VmArea } from '../../kernel/mm/mm_types.ts';

const PAGE = 4096;

interface Scene {
  k: Kernel;
  log: { t: number; what: string }[];
}

/**
 * A process whose main thread (CPU 0) maps `n` separate private anonymous VMAs of 4 pages
 * (touched, so they have anon_vmas; separated by one-page holes so they cannot merge) and then
 * runs `main`; a second thread (CPU 1) runs `other` once the VMAs exist.
 */
function scene(n: number, main: (k: Kernel, t: Task, mm: MmStruct, addrs: number[], log: Scene['log']) => KGen<unknown>, other: (k: Kernel, t: Task, mm: MmStruct, addrs: number[], log: Scene['log']) => KGen<unknown>): Scene {
  const k = new Kernel({ cpus: 2, memoryBytes: 32 << 20 });
  const log: Scene['log'] = [];
  k.spawn(function* (u: User) {
    const base = yield* u.mmap(0, (5 * n) * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    const addrs: number[] = [];
    for (let i = 0; i < n; i++) {
      const a = base + 5 * i * PAGE;
      yield* u.munmap(a + 4 * PAGE, PAGE);
      yield* u.store32(a, i);
      addrs.push(a);
    }
    yield* u.clone(function* (u2: User) {
      yield* u2.call('other', (k2, t) => other(k2, t, t.mm!, addrs, log));
    }, { cpu: 1 });
    yield* u.call('main', (k2, t) => main(k2, t, t.mm!, addrs, log));
  }, { cpu: 0 });
  k.run();
  // No scenario here may crash a task or trip a checker.
  expect(k.reports.reports.filter((r) => r.kind !== 'lockdep' && r.kind !== 'WARN')).toEqual([]);
  return { k, log };
}

const idle = function* (): KGen<unknown> {
  return 0;
};

describe('lock_vma_under_rcu', () => {
  it('takes the read lock of an unlocked VMA and counts VMA_LOCK_SUCCESS', () => {
    let got: VmArea | null = null;
    let vmaAt: VmArea | null = null;
    const { k } = scene(1, function* (k, _t, mm, [a]) {
      vmaAt = mm.vma_lookup(a!);
      got = k.locks.lock_vma_under_rcu(mm, a! + 3 * PAGE, 'test');
      expect(got!.readers).toHaveLength(1);
      expect(got!.vm_refcnt).toBe(2);
      expect(k.locks.vma_assert_locked(got!, 'test')).toBe(true);
      k.locks.vma_end_read(got!);
      expect(got!.vm_refcnt).toBe(1);
      return 0;
    }, idle);
    expect(got).toBe(vmaAt);
    expect(k.locks.vmaStats.byCaller.get('test')).toEqual({ success: 1, fail: 0 });
    expect(k.reports.reports).toEqual([]);
  });

  it('fails where there is no VMA, including just outside one (VMA_LOCK_ABORT)', () => {
    const results: (VmArea | null)[] = [];
    const { k } = scene(1, function* (k, _t, mm, [a]) {
      const aborts = k.locks.vmaStats.abort;
      results.push(k.locks.lock_vma_under_rcu(mm, a! - 1, 'test'));
      results.push(k.locks.lock_vma_under_rcu(mm, a! + 4 * PAGE, 'test')); // vm_end is exclusive
      results.push(k.locks.lock_vma_under_rcu(mm, 0x1000, 'test'));
      expect(k.locks.vmaStats.abort - aborts).toBe(3);
      return 0;
    }, idle);
    expect(results).toEqual([null, null, null]);
    expect(k.locks.vmaStats.byCaller.get('test')).toEqual({ success: 0, fail: 3 });
  });

  it('fails on a VMA write-locked in the current cycle, without waiting, and succeeds once the writer unlocks', () => {
    let during: VmArea | null | undefined;
    let during2: VmArea | null | undefined;
    let after: VmArea | null | undefined;
    let tDuring = 0;
    let tAfter = 0;
    const { log } = scene(2, function* (k, _t, mm, [a], ev) {
      yield* k.locks.mmap_write_lock(mm, 'writer');
      yield* k.locks.vma_start_write(mm.vma_lookup(a!)!, 'writer');
      yield* k.sleepFor(200_000);
      ev.push({ t: k.now(), what: 'unlock' });
      k.locks.mmap_write_unlock(mm);
      return 0;
    }, function* (k, _t, mm, [a, b]) {
      yield* k.sleepFor(50_000);
      const t0 = k.now();
      during = k.locks.lock_vma_under_rcu(mm, a!, 'reader');
      tDuring = k.now() - t0;
      // A VMA the writer did not write-lock stays available under the mmap write lock.
      during2 = k.locks.lock_vma_under_rcu(mm, b!, 'reader');
      if (during2) k.locks.vma_end_read(during2);
      yield* k.sleepFor(300_000);
      tAfter = k.now();
      after = k.locks.lock_vma_under_rcu(mm, a!, 'reader');
      if (after) k.locks.vma_end_read(after);
      return 0;
    });
    expect(during).toBeNull();
    expect(tDuring).toBeLessThan(1_000); // no waiting
    expect(during2).not.toBeNull();
    expect(after).not.toBeNull();
    expect(tAfter).toBeGreaterThan(log.find((e) => e.what === 'unlock')!.t);
  });

  it('succeeds on a VMA write-locked in an earlier cycle', () => {
    let v: VmArea | null = null;
    scene(1, function* (k, _t, mm, [a]) {
      const vma = mm.vma_lookup(a!)!;
      yield* k.locks.mmap_write_lock(mm, 'w');
      yield* k.locks.vma_start_write(vma, 'w');
      const seq = vma.vm_lock_seq;
      k.locks.mmap_write_unlock(mm);
      yield* k.locks.mmap_write_lock(mm, 'w'); // a new cycle, this VMA not write-locked in it
      expect(vma.vm_lock_seq).toBe(seq);
      k.locks.mmap_write_unlock(mm);
      v = k.locks.lock_vma_under_rcu(mm, a!, 'test');
      if (v) k.locks.vma_end_read(v);
      return 0;
    }, idle);
    expect(v).not.toBeNull();
  });

  it('fails on a detached VMA (refcount 0) and counts VMA_LOCK_MISS', () => {
    let v: VmArea | null | undefined;
    let misses = -1;
    scene(1, function* (k, _t, mm, [a]) {
      const vma = mm.vma_lookup(a!)!;
      const before = k.locks.vmaStats.miss;
      // What an RCU walker can meet in Linux: the tree still leads to a VMA already detached.
      vma.vm_refcnt = 0;
      v = k.locks.lock_vma_under_rcu(mm, a!, 'test');
      misses = k.locks.vmaStats.miss - before;
      vma.vm_refcnt = 1;
      return 0;
    }, idle);
    expect(v).toBeNull();
    expect(misses).toBe(1);
  });
});

describe('vma_start_write', () => {
  it('waits for the VMA readers to leave, and refuses new readers meanwhile', () => {
    let refusedWhileWaiting: VmArea | null | undefined;
    let readerRelease = 0;
    let writerHasIt = 0;
    let excludeSeen = false;
    scene(1, function* (k, _t, mm, [a]) {
      const v = k.locks.lock_vma_under_rcu(mm, a!, 'reader')!;
      yield* k.sleepFor(200_000);
      readerRelease = k.now();
      k.locks.vma_end_read(v);
      return 0;
    }, function* (k, _t, mm, [a]) {
      yield* k.sleepFor(50_000);
      yield* k.locks.mmap_write_lock(mm, 'writer');
      k.kthread('probe', function* () {
        yield* k.sleepFor(50_000);
        excludeSeen = mm.vma_lookup(a!)!.excludeReaders;
        refusedWhileWaiting = k.locks.lock_vma_under_rcu(mm, a!, 'late-reader');
      }, 0);
      yield* k.locks.vma_start_write(mm.vma_lookup(a!)!, 'writer');
      writerHasIt = k.now();
      expect(k.locks.isWriteLocked(mm.vma_lookup(a!)!)).toBe(true);
      k.locks.mmap_write_unlock(mm);
      return 0;
    });
    expect(excludeSeen).toBe(true);
    expect(refusedWhileWaiting).toBeNull();
    expect(writerHasIt).toBeGreaterThanOrEqual(readerRelease);
  });

  it('is a no-op on a VMA already write-locked in this cycle', () => {
    scene(1, function* (k, _t, mm, [a]) {
      const vma = mm.vma_lookup(a!)!;
      yield* k.locks.mmap_write_lock(mm, 'w');
      yield* k.locks.vma_start_write(vma, 'w');
      const dep = k.lockdep.dependencies;
      const before = k.now();
      yield* k.locks.vma_start_write(vma, 'w');
      expect(k.now()).toBe(before);
      expect(k.lockdep.dependencies).toBe(dep);
      k.locks.mmap_write_unlock(mm);
      return 0;
    }, idle);
  });
});

describe('mm_lock_seq: all VMA write locks end with the mmap write lock', () => {
  it('mmap_write_unlock releases every VMA write-locked in the cycle at once', () => {
    const locked: boolean[] = [];
    const readable: boolean[] = [];
    scene(3, function* (k, _t, mm, addrs) {
      yield* k.locks.mmap_write_lock(mm, 'w');
      expect(mm.mm_lock_seq % 2).toBe(1);
      for (const a of addrs) yield* k.locks.vma_start_write(mm.vma_lookup(a)!, 'w');
      for (const a of addrs) locked.push(k.locks.isWriteLocked(mm.vma_lookup(a)!));
      k.locks.mmap_write_unlock(mm);
      expect(mm.mm_lock_seq % 2).toBe(0);
      for (const a of addrs) {
        const v = k.locks.lock_vma_under_rcu(mm, a, 'r');
        readable.push(v !== null);
        if (v) k.locks.vma_end_read(v);
      }
      return 0;
    }, idle);
    expect(locked).toEqual([true, true, true]);
    expect(readable).toEqual([true, true, true]);
  });

  it('mmap_write_downgrade releases them too, while the mmap lock stays held for read', () => {
    let readerGot: boolean | null = null;
    let writerWaited = false;
    let downgradeAt = 0;
    let writerAt = 0;
    scene(2, function* (k, _t, mm, addrs) {
      yield* k.locks.mmap_write_lock(mm, 'w');
      for (const a of addrs) yield* k.locks.vma_start_write(mm.vma_lookup(a)!, 'w');
      yield* k.sleepFor(50_000);
      k.locks.mmap_write_downgrade(mm);
      downgradeAt = k.now();
      expect(mm.mm_lock_seq % 2).toBe(0);
      expect(k.locks.mmap_assert_locked(mm, 'downgraded')).toBe(true);
      yield* k.sleepFor(100_000);
      k.locks.mmap_read_unlock(mm);
      return 0;
    }, function* (k, _t, mm, addrs) {
      yield* k.sleepFor(100_000);
      // After the downgrade: the VMA locks are free, the mmap lock excludes writers.
      const v = k.locks.lock_vma_under_rcu(mm, addrs[0]!, 'r');
      readerGot = v !== null;
      if (v) k.locks.vma_end_read(v);
      writerWaited = !k.locks.mmap_write_trylock(mm, 'w2');
      yield* k.locks.mmap_write_lock(mm, 'w2');
      writerAt = k.now();
      k.locks.mmap_write_unlock(mm);
      return 0;
    });
    expect(readerGot).toBe(true);
    expect(writerWaited).toBe(true);
    expect(writerAt).toBeGreaterThanOrEqual(downgradeAt + 100_000);
  });
});

describe('the fault path uses the VMA lock and falls back to the mmap lock', () => {
  it('faults on other VMAs proceed under the mmap write lock; a fault on a write-locked VMA waits for it', () => {
    let tOther = 0;
    let tLocked = 0;
    let unlockAt = 0;
    let theMm: MmStruct | null = null;
    const k2 = new Kernel({ cpus: 2, memoryBytes: 32 << 20 });
    k2.spawn(function* (u: User) {
      const a = yield* u.mmap(0, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      const b = yield* u.mmap(0, 4 * PAGE, PROT_READ | PROT_WRITE | 0x4, MAP_PRIVATE | MAP_ANONYMOUS); // different flags: no merge
      yield* u.store32(a, 1);
      yield* u.store32(b, 1);
      yield* u.clone(function* (u2: User) {
        yield* u2.sleep(50_000);
        yield* u2.store32(b + PAGE, 2); // a new page in the other VMA: faults under its VMA lock
        tOther = u2.k.now();
        yield* u2.store32(a + PAGE, 2); // the write-locked VMA: falls back and waits
        tLocked = u2.k.now();
      }, { cpu: 1 });
      yield* u.call('writer', function* (kk, t) {
        const mm = t.mm!;
        theMm = mm;
        yield* kk.locks.mmap_write_lock(mm, 'writer');
        yield* kk.locks.vma_start_write(mm.vma_lookup(a)!, 'writer');
        yield* kk.sleepFor(300_000);
        unlockAt = kk.now();
        kk.locks.mmap_write_unlock(mm);
        return 0;
      });
    }, { cpu: 0 });
    k2.run();
    expect(tOther).toBeLessThan(unlockAt);
    expect(tLocked).toBeGreaterThanOrEqual(unlockAt);
    const fault = k2.locks.vmaStats.byCaller.get('do_user_addr_fault')!;
    expect(fault.fail).toBeGreaterThanOrEqual(1);
    const st = theMm!.mmap_lock.stats;
    expect(st.byCaller.get('do_user_addr_fault')!.contended).toBe(1);
    expect(st.blockedBy.get('writer')).toBeGreaterThan(200_000);
    expect(k2.reports.reports).toEqual([]);
  });
});

describe('uffd_lock_vma', () => {
  it('takes an unlocked VMA through lock_vma_under_rcu, without the mmap lock', () => {
    let r: VmArea | number = 0;
    let mmapLocks = -1;
    scene(1, function* (k, _t, mm, [a]) {
      const before = mm.mmap_lock.stats.byCaller.get('uffd_lock_vma')?.acquisitions ?? 0;
      r = yield* k.locks.uffd_lock_vma(mm, a!);
      mmapLocks = (mm.mmap_lock.stats.byCaller.get('uffd_lock_vma')?.acquisitions ?? 0) - before;
      if (typeof r !== 'number') k.locks.vma_end_read(r);
      return 0;
    }, idle);
    expect(typeof r).toBe('object');
    expect(mmapLocks).toBe(0);
  });

  it('prepares the anon_vma of a private VMA under the mmap read lock and returns it read-locked', () => {
    let r: VmArea | number = 0;
    let readers = -1;
    let mmapLocks = -1;
    const k = new Kernel({ cpus: 1, memoryBytes: 16 << 20 });
    k.spawn(function* (u: User) {
      const a = yield* u.mmap(0, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS); // never touched
      yield* u.call('t', function* (kk, t) {
        const mm = t.mm!;
        expect(mm.vma_lookup(a)!.anon_vma).toBeNull();
        r = yield* kk.locks.uffd_lock_vma(mm, a);
        mmapLocks = mm.mmap_lock.stats.byCaller.get('uffd_lock_vma')!.acquisitions;
        if (typeof r !== 'number') {
          readers = r.readers.length;
          expect(r.anon_vma).not.toBeNull();
          expect(mm.mmap_lock.isLocked).toBe(false);
          kk.locks.vma_end_read(r);
        }
        return 0;
      });
    });
    k.run();
    expect(typeof r).toBe('object');
    expect(readers).toBe(1);
    expect(mmapLocks).toBe(1);
    expect(k.reports.reports).toEqual([]);
  });

  it('waits out a writer of the VMA through the mmap read lock', () => {
    let got = 0;
    let unlockAt = 0;
    let r: VmArea | number = 0;
    scene(1, function* (k, _t, mm, [a]) {
      yield* k.locks.mmap_write_lock(mm, 'writer');
      yield* k.locks.vma_start_write(mm.vma_lookup(a!)!, 'writer');
      yield* k.sleepFor(200_000);
      unlockAt = k.now();
      k.locks.mmap_write_unlock(mm);
      return 0;
    }, function* (k, _t, mm, [a]) {
      yield* k.sleepFor(50_000);
      r = yield* k.locks.uffd_lock_vma(mm, a!);
      got = k.now();
      if (typeof r !== 'number') k.locks.vma_end_read(r);
      return 0;
    });
    expect(typeof r).toBe('object');
    expect(got).toBeGreaterThanOrEqual(unlockAt);
  });

  it('returns -ENOENT where there is no VMA, and shared VMAs need no anon_vma', () => {
    const rs: (VmArea | number)[] = [];
    const k = new Kernel({ cpus: 1, memoryBytes: 16 << 20 });
    k.spawn(function* (u: User) {
      const s = yield* u.mmap(0, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS);
      yield* u.call('t', function* (kk, t) {
        rs.push(yield* kk.locks.uffd_lock_vma(t.mm!, 0x10000));
        const v = yield* kk.locks.uffd_lock_vma(t.mm!, s);
        rs.push(v);
        if (typeof v !== 'number') {
          expect(v.anon_vma).toBeNull();
          kk.locks.vma_end_read(v);
        }
        return 0;
      });
    });
    k.run();
    expect(rs[0]).toBe(-ENOENT);
    expect(typeof rs[1]).toBe('object');
    // The shared VMA came from the RCU path: no mmap lock taken.
    expect([...k.mms].some((m) => m.mmap_lock.stats.byCaller.has('uffd_lock_vma') && m.mmap_lock.stats.byCaller.get('uffd_lock_vma')!.acquisitions > 1)).toBe(false);
  });
});
