// The mmap lock (kernel/mm/mmap_lock.ts) against include/linux/mmap_lock.h: mm_lock_seq odd
// exactly while write-locked (mm_lock_seqcount_begin/end), the exclusion matrix of
// Documentation/mm/process_addrs.rst (R excludes W; a downgraded holder excludes writers but not
// readers; W excludes all), the mmap_lock tracepoints (trace/events/mmap_lock.h) around every
// lock, trylock, downgrade and unlock, and contention accounted per caller.
import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { mmHash } from '../../kernel/mm/mmap_lock.ts';
import type { User } from '../../kernel/uapi.ts';
import type { KGen } from '../../kernel/sched/core.ts';
import type { MmStruct } from '../../kernel/mm/mm_types.ts';

/** A process with two threads (CPUs 0 and 1), each running a syscall body against the mm. */
function twoThreads(body0: (k: Kernel, mm: MmStruct) => KGen<unknown>, body1: (k: Kernel, mm: MmStruct) => KGen<unknown>, trace = false): { k: Kernel; mm: MmStruct } {
  const k = new Kernel({ cpus: 2, memoryBytes: 16 << 20, trace });
  let theMm: MmStruct | null = null;
  k.spawn(function* (u: User) {
    yield* u.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    yield* u.clone(function* (u2: User) {
      yield* u2.call('t1', (k2, t) => body1(k2, t.mm!));
    }, { cpu: 1 });
    yield* u.call('t0', function* (k2, t) {
      theMm = t.mm!;
      return yield* body0(k2, t.mm!);
    });
    yield* u.sleep(1_000_000); // keep the mm until the other thread is done
  }, { cpu: 0 });
  k.run();
  expect(k.reports.reports).toEqual([]);
  return { k, mm: theMm! };
}

describe('mm_lock_seq', () => {
  it('is odd exactly while the mmap lock is held for write', () => {
    const seqs: number[] = [];
    twoThreads(function* (k, mm) {
      seqs.push(mm.mm_lock_seq);
      yield* k.locks.mmap_read_lock(mm, 'r');
      seqs.push(mm.mm_lock_seq);
      k.locks.mmap_read_unlock(mm);
      yield* k.locks.mmap_write_lock(mm, 'w');
      seqs.push(mm.mm_lock_seq);
      k.locks.mmap_write_unlock(mm);
      seqs.push(mm.mm_lock_seq);
      expect(k.locks.mmap_write_trylock(mm, 'w')).toBe(true);
      seqs.push(mm.mm_lock_seq);
      k.locks.mmap_write_downgrade(mm);
      seqs.push(mm.mm_lock_seq);
      k.locks.mmap_read_unlock(mm);
      return 0;
    }, function* () {
      return 0;
    });
    const s0 = seqs[0]!;
    expect(s0 % 2).toBe(0);
    expect(seqs.map((x) => x - s0)).toEqual([0, 0, 1, 2, 3, 4]);
  });
});

describe('exclusion', () => {
  /** Holder on CPU 0 takes the lock in `mode` for 100k cycles; CPU 1 then tries each mode. */
  function probe(mode: 'read' | 'write' | 'downgraded'): { readTry: boolean; writeTry: boolean; readWaited: number; writeWaited: number } {
    const out = { readTry: false, writeTry: false, readWaited: 0, writeWaited: 0 };
    twoThreads(function* (k, mm) {
      if (mode === 'read') yield* k.locks.mmap_read_lock(mm, 'holder');
      else yield* k.locks.mmap_write_lock(mm, 'holder');
      if (mode === 'downgraded') k.locks.mmap_write_downgrade(mm);
      yield* k.sleepFor(100_000);
      if (mode === 'write') k.locks.mmap_write_unlock(mm);
      else k.locks.mmap_read_unlock(mm);
      return 0;
    }, function* (k, mm) {
      yield* k.sleepFor(20_000);
      out.readTry = k.locks.mmap_read_trylock(mm, 'prober');
      if (out.readTry) k.locks.mmap_read_unlock(mm);
      out.writeTry = k.locks.mmap_write_trylock(mm, 'prober');
      if (out.writeTry) k.locks.mmap_write_unlock(mm);
      let t = k.now();
      yield* k.locks.mmap_read_lock(mm, 'prober');
      out.readWaited = k.now() - t;
      k.locks.mmap_read_unlock(mm);
      t = k.now();
      yield* k.locks.mmap_write_lock(mm, 'prober');
      out.writeWaited = k.now() - t;
      k.locks.mmap_write_unlock(mm);
      return 0;
    });
    return out;
  }

  it('a read hold excludes writers only', () => {
    const r = probe('read');
    expect([r.readTry, r.writeTry]).toEqual([true, false]);
    expect(r.readWaited).toBeLessThan(1_000);
    expect(r.writeWaited).toBeGreaterThan(50_000);
  });

  it('a write hold excludes everyone', () => {
    const r = probe('write');
    expect([r.readTry, r.writeTry]).toEqual([false, false]);
    expect(r.readWaited).toBeGreaterThan(50_000);
  });

  it('a downgraded hold excludes writers, not readers', () => {
    const r = probe('downgraded');
    expect([r.readTry, r.writeTry]).toEqual([true, false]);
    expect(r.readWaited).toBeLessThan(1_000);
    expect(r.writeWaited).toBeGreaterThan(50_000);
  });
});

describe('mmap_lock tracepoints', () => {
  it('start_locking / acquire_returned / released around each operation, in Linux order and format', () => {
    const { k, mm } = twoThreads(function* (k, mm) {
      k.trace.clear();
      yield* k.locks.mmap_read_lock(mm, 'a');
      k.locks.mmap_read_unlock(mm);
      yield* k.locks.mmap_write_lock(mm, 'b');
      k.locks.mmap_write_downgrade(mm);
      k.locks.mmap_read_unlock(mm);
      yield* k.locks.mmap_write_lock(mm, 'c');
      k.locks.mmap_write_unlock(mm);
      yield* k.sleepFor(100_000);
      return 0;
    }, function* (k, mm) {
      yield* k.sleepFor(20_000);
      yield* k.locks.mmap_write_lock(mm, 'held');
      yield* k.sleepFor(50_000);
      k.locks.mmap_write_unlock(mm);
      return 0;
    }, true);
    const p = `mm=${mmHash(mm)} memcg_id=0`;
    const ev = k.trace.events.filter((e) => e.name.startsWith('mmap_lock:') && e.cpu === 0);
    expect(ev.map((e) => `${e.name.slice(10)} ${e.text}`)).toEqual([
      `mmap_lock_start_locking ${p} write=false`,
      `mmap_lock_acquire_returned ${p} write=false success=true`,
      `mmap_lock_released ${p} write=false`,
      `mmap_lock_start_locking ${p} write=true`,
      `mmap_lock_acquire_returned ${p} write=true success=true`,
      // mmap_write_downgrade traces the read acquisition it turns into.
      `mmap_lock_acquire_returned ${p} write=false success=true`,
      `mmap_lock_released ${p} write=false`,
      `mmap_lock_start_locking ${p} write=true`,
      `mmap_lock_acquire_returned ${p} write=true success=true`,
      `mmap_lock_released ${p} write=true`,
    ]);
  });

  it('a failed trylock traces success=false, for read and for write', () => {
    const { k, mm } = twoThreads(function* (k, mm) {
      yield* k.locks.mmap_write_lock(mm, 'holder');
      yield* k.sleepFor(100_000);
      k.locks.mmap_write_unlock(mm);
      return 0;
    }, function* (k, mm) {
      yield* k.sleepFor(20_000);
      k.trace.clear();
      expect(k.locks.mmap_read_trylock(mm, 'x')).toBe(false);
      expect(k.locks.mmap_write_trylock(mm, 'x')).toBe(false);
      return 0;
    }, true);
    const p = `mm=${mmHash(mm)} memcg_id=0`;
    expect(k.trace.events.filter((e) => e.name.startsWith('mmap_lock:') && e.cpu === 1).map((e) => e.text)).toEqual([
      `${p} write=false`,
      `${p} write=false success=false`,
      `${p} write=true`,
      `${p} write=true success=false`,
    ]);
  });
});

describe('contention per caller', () => {
  it('charges each caller its own acquisitions and waits, and names the holder waited behind', () => {
    const { mm } = twoThreads(function* (k, mm) {
      yield* k.locks.mmap_write_lock(mm, 'binder_alloc');
      yield* k.sleepFor(100_000);
      k.locks.mmap_write_unlock(mm);
      return 0;
    }, function* (k, mm) {
      yield* k.sleepFor(20_000);
      yield* k.locks.mmap_read_lock(mm, 'do_user_addr_fault');
      k.locks.mmap_read_unlock(mm);
      yield* k.locks.mmap_read_lock(mm, 'do_user_addr_fault');
      k.locks.mmap_read_unlock(mm);
      return 0;
    });
    const s = mm.mmap_lock.stats;
    const fault = s.byCaller.get('do_user_addr_fault')!;
    expect(fault.acquisitions).toBe(2);
    expect(fault.contended).toBe(1);
    expect(fault.waitCycles).toBeGreaterThan(70_000);
    expect(fault.waitCycles).toBeLessThan(100_000);
    expect(s.byCaller.get('binder_alloc')).toEqual({ acquisitions: 1, contended: 0, waitCycles: 0 });
    expect(s.blockedBy.get('binder_alloc')).toBe(fault.waitCycles);
  });
});
