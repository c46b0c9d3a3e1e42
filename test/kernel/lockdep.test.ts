// Lock checking (kernel/locking/lockdep.ts, the assertions of kernel/mm/mmap_lock.ts):
// circular dependencies reported in the format of kernel/locking/lockdep.c's
// print_circular_bug (checked line by line), reported before a real deadlock blocks, no
// dependency from trylocks; and the lock assertions of include/linux/mmap_lock.h and
// include/linux/fs.h producing a report when a function runs without its lock.
import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import { RwSemaphore } from '../../kernel/locking/rwsem.ts';
import { Mutex } from '../../kernel/locking/mutex.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE, do_vmi_munmap } from '../../kernel/mm/mmap.ts';
import { zap_page_range_single } from '../../kernel/mm/memory.ts';
import { MMAP_LOCK_CLASS, VMA_LOCK_CLASS } from '../../kernel/mm/mmap_lock.ts';
import { I_MMAP_CLASS } from '../../kernel/fs/file.ts';
import type { Report } from '../../kernel/report.ts';
import type { User } from '../../kernel/uapi.ts';
import type { KGen, Task } from '../../kernel/sched/core.ts';
import type { MmStruct, VmArea } from '../../kernel/mm/mm_types.ts';

const CIRCULAR = 'WARNING: possible circular locking dependency detected';

function kernel(cpus = 2): Kernel {
  return new Kernel({ cpus, memoryBytes: 16 << 20 });
}

/** The report's text with lock addresses masked (they are per-run pseudo-pointers). */
function masked(r: Report): string[] {
  return r.text.replace(/ffff888[0-9a-f]{9}/g, 'ADDR').split('\n');
}

const circular = (k: Kernel): Report[] => k.reports.reports.filter((r) => r.title === CIRCULAR);

describe('lockdep: circular locking dependencies', () => {
  it('reports a planted ABBA inversion in print_circular_bug format, naming both orders', () => {
    const k = kernel();
    const a = new Mutex(k, 'lock_A', k.lockdep);
    const b = new Mutex(k, 'lock_B', k.lockdep);
    // ab takes A then B; much later (no real deadlock) ba takes B then A.
    k.kthread('ab', function* () {
      yield* a.lock('ab', 'ab_take_A');
      yield* b.lock('ab', 'ab_take_B');
      b.unlock();
      a.unlock();
    }, 0);
    const ba = k.kthread('ba', function* () {
      yield* k.sleepFor(100_000);
      yield* b.lock('ba', 'ba_take_B');
      yield* a.lock('ba', 'ba_take_A');
      a.unlock();
      b.unlock();
    }, 1);
    k.run();
    const reps = circular(k);
    expect(reps).toHaveLength(1);
    const r = reps[0]!;
    expect(r.kind).toBe('lockdep');
    expect(r.pid).toBe(ba.pid);
    const lines = masked(r);
    const head = [
      '',
      '======================================================',
      CIRCULAR,
      '6.12.0-mmulab #1 Not tainted',
      '------------------------------------------------------',
      `ba/${ba.pid} is trying to acquire lock:`,
      'ADDR (lock_A){+.+.}-{4:4}, at: ba_take_A',
      '',
      'but task is already holding lock:',
      'ADDR (lock_B){+.+.}-{4:4}, at: ba_take_B',
      '',
      'which lock already depends on the new lock.',
      '',
      '',
      'the existing dependency chain (in reverse order) is:',
      '',
      // The held lock's entry carries the trace of the other order: B taken while A was held.
      '-> #1 (lock_B){+.+.}-{4:4}:',
      '       ab_take_B',
      '',
      '-> #0 (lock_A){+.+.}-{4:4}:',
      '       ba_take_A',
      '',
      'other info that might help us debug this:',
      '',
      ' Possible unsafe locking scenario:',
      '',
      '       CPU0                    CPU1',
      '       ----                    ----',
      '  lock(lock_B);',
      '                               lock(lock_A);',
      '                               lock(lock_B);',
      '  lock(lock_A);',
      '',
      ' *** DEADLOCK ***',
      '',
      `1 lock held by ba/${ba.pid}:`,
      ' #0: ADDR (lock_B){+.+.}-{4:4}, at: ba_take_B',
      '',
      'stack backtrace:',
    ];
    expect(lines.slice(0, head.length)).toEqual(head);
    expect(lines[head.length]).toMatch(new RegExp(`^CPU: 1 UID: 0 PID: ${ba.pid} Comm: ba `));
    expect(r.data).toMatchObject({ held: 'lock_B', acquiring: 'lock_A', chain: ['lock_A', 'lock_B'] });
  });

  for (const kind of ['rwsem', 'mutex'] as const) {
    it(`reports the inversion before a real ABBA deadlock blocks both tasks (${kind})`, () => {
      const k = kernel();
      const make = (name: string) => {
        if (kind === 'mutex') {
          const m = new Mutex(k, name, k.lockdep);
          return { lock: (who: string) => m.lock(who) };
        }
        const r = new RwSemaphore(k, name, k.lockdep);
        return { lock: (who: string) => r.down_write(who) };
      };
      const a = make('&a->lock');
      const b = make('&b->lock');
      k.kthread('t1', function* () {
        yield* a.lock('t1');
        yield* k.sleepFor(50_000);
        yield* b.lock('t1');
      }, 0);
      k.kthread('t2', function* () {
        yield* b.lock('t2');
        yield* k.sleepFor(50_000);
        yield* a.lock('t2');
      }, 1);
      expect(() => k.run()).toThrow(/deadlock/);
      const reps = circular(k);
      expect(reps).toHaveLength(1);
      const text = reps[0]!.text;
      expect(text).toContain('  lock(&a->lock);');
      expect(text).toContain('  lock(&b->lock);');
    });
  }

  it('says nothing about a consistent order, nor about a trylock taken in the other order', () => {
    const k = kernel();
    const a = new Mutex(k, 'lock_A', k.lockdep);
    const b = new Mutex(k, 'lock_B', k.lockdep);
    for (const [i, cpu] of [[0, 0], [1, 1]] as const) {
      k.kthread(`ab${i}`, function* () {
        yield* k.sleepFor(i * 100_000);
        yield* a.lock('ab');
        yield* b.lock('ab');
        b.unlock();
        a.unlock();
      }, cpu);
    }
    let tried: boolean | null = null;
    k.kthread('b_then_trylock_a', function* () {
      yield* k.sleepFor(300_000);
      yield* b.lock('x');
      tried = a.trylock('x');
      if (tried) a.unlock();
      b.unlock();
    }, 0);
    k.run();
    expect(tried).toBe(true);
    expect(k.reports.reports).toEqual([]);
    expect(k.lockdep.dependencies).toBe(1); // lock_A -> lock_B only
  });

  it('a trylock-held lock still orders what is taken after it', () => {
    // check_prevs_add uses every held lock as "prev", trylocked or not.
    const k = kernel();
    const a = new Mutex(k, 'lock_A', k.lockdep);
    const b = new Mutex(k, 'lock_B', k.lockdep);
    k.kthread('t', function* () {
      expect(a.trylock('t')).toBe(true);
      yield* b.lock('t', 'b_under_trylocked_a');
      b.unlock();
      a.unlock();
      yield* b.lock('t', 'b_first');
      yield* a.lock('t', 'a_second');
      a.unlock();
      b.unlock();
    }, 0);
    k.run();
    expect(circular(k)).toHaveLength(1);
    expect(masked(circular(k)[0]!)).toContain('       b_under_trylocked_a');
  });

  it('a three-lock cycle prints the whole chain and "Chain exists of"', () => {
    const k = kernel(3);
    const [a, b, c] = ['A', 'B', 'C'].map((n) => new Mutex(k, n, k.lockdep)) as [Mutex, Mutex, Mutex];
    const pair = (x: Mutex, y: Mutex, comm: string, delay: number, cpu: number): Task =>
      k.kthread(comm, function* () {
        yield* k.sleepFor(delay);
        yield* x.lock(comm, `${comm}:${x.cls}`);
        yield* y.lock(comm, `${comm}:${y.cls}`);
        y.unlock();
        x.unlock();
      }, cpu);
    pair(a, b, 'ab', 0, 0);
    pair(b, c, 'bc', 100_000, 1);
    const ca = pair(c, a, 'ca', 200_000, 2);
    k.run();
    const reps = circular(k);
    expect(reps).toHaveLength(1);
    const lines = masked(reps[0]!);
    const from = lines.indexOf('the existing dependency chain (in reverse order) is:');
    expect(lines.slice(from + 1, from + 10)).toEqual(['', '-> #2 (C){+.+.}-{4:4}:', '       bc:C', '', '-> #1 (B){+.+.}-{4:4}:', '       ab:B', '', '-> #0 (A){+.+.}-{4:4}:', '       ca:A']);
    const other = lines.indexOf('other info that might help us debug this:');
    expect(lines.slice(other + 1, other + 12)).toEqual([
      '',
      'Chain exists of:',
      '  A --> B --> C',
      '',
      ' Possible unsafe locking scenario:',
      '',
      '       CPU0                    CPU1',
      '       ----                    ----',
      '  lock(C);',
      '                               lock(B);',
      '                               lock(C);',
    ]);
    expect(lines[other + 12]).toBe('  lock(A);');
    expect(reps[0]!.pid).toBe(ca.pid);
  });

  it('reports an inversion once however often it recurs', () => {
    const k = kernel();
    const a = new Mutex(k, 'lock_A', k.lockdep);
    const b = new Mutex(k, 'lock_B', k.lockdep);
    k.kthread('t', function* () {
      yield* a.lock('t');
      yield* b.lock('t');
      b.unlock();
      a.unlock();
      for (let i = 0; i < 3; i++) {
        yield* b.lock('t');
        yield* a.lock('t');
        a.unlock();
        b.unlock();
      }
    }, 0);
    k.run();
    expect(circular(k)).toHaveLength(1);
  });

  it('shows a lock held for read as rlock() in the scenario, and its class usage as read', () => {
    const k = kernel();
    const a = new RwSemaphore(k, '&a->sem', k.lockdep);
    const b = new RwSemaphore(k, '&b->sem', k.lockdep);
    k.kthread('t', function* () {
      yield* a.down_write('t');
      yield* b.down_write('t');
      b.up_write();
      a.up_write();
      yield* b.down_read('t');
      yield* a.down_read('t');
      a.up_read();
      b.up_read();
    }, 0);
    k.run();
    const lines = masked(circular(k)[0]!);
    expect(lines).toContain('  rlock(&b->sem);');
    expect(lines).toContain('  rlock(&a->sem);');
    expect(lines).toContain('ADDR (&a->sem){++++}-{4:4}, at: t');
  });

  it('catches i_mmap_rwsem taken before the mmap lock (the order is mmap_lock → i_mmap_rwsem)', () => {
    const k = kernel();
    k.spawn(function* (u: User) {
      // A shared mapping links its VMA into the shmem file's i_mmap under the mmap write lock.
      const s = yield* u.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS);
      yield* u.call('invert', function* (k2, t) {
        const mm = t.mm!;
        const mapping = mm.vma_lookup(s)!.vm_file!.f_mapping;
        yield* mapping.i_mmap_rwsem.down_read('invert');
        yield* k2.locks.mmap_read_lock(mm, 'invert');
        k2.locks.mmap_read_unlock(mm);
        mapping.i_mmap_rwsem.up_read();
        return 0;
      });
    });
    k.run();
    const reps = circular(k);
    expect(reps).toHaveLength(1);
    expect(reps[0]!.data).toMatchObject({ held: I_MMAP_CLASS, acquiring: MMAP_LOCK_CLASS });
    expect(reps[0]!.text).toContain('                               lock(&mapping->i_mmap_rwsem);');
  });

  it('catches a VMA reader that then blocks on the mmap lock (vma_start_write orders mmap_lock → vm_lock)', () => {
    const k = kernel();
    k.spawn(function* (u: User) {
      const a = yield* u.mmap(0, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* u.store32(a, 1);
      yield* u.mprotect(a, 4096, PROT_READ); // splits: vma_start_write under the mmap write lock
      yield* u.call('invert', function* (k2, t) {
        const mm = t.mm!;
        const vma = k2.locks.lock_vma_under_rcu(mm, a + 4096, 'invert')!;
        yield* k2.locks.mmap_read_lock(mm, 'invert');
        k2.locks.mmap_read_unlock(mm);
        k2.locks.vma_end_read(vma);
        return 0;
      });
    });
    k.run();
    const reps = circular(k);
    expect(reps).toHaveLength(1);
    expect(reps[0]!.data).toMatchObject({ held: VMA_LOCK_CLASS, acquiring: MMAP_LOCK_CLASS });
  });
});

// ------------------------------------------------------------------------------------------------

/** Run `body` as a syscall of a process that has one private VMA of 4 pages (first page touched). */
function withVma(k: Kernel, body: (k: Kernel, t: Task, mm: MmStruct, vma: VmArea) => KGen<unknown>): void {
  k.spawn(function* (u: User) {
    const a = yield* u.mmap(0, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    yield* u.store32(a, 1);
    yield* u.call('test', function* (k2, t) {
      yield* body(k2, t, t.mm!, t.mm!.vma_lookup(a)!);
      return 0;
    });
  });
  k.run();
}

const assertions = (k: Kernel): Report[] => k.reports.reports.filter((r) => r.kind === 'lockdep' || r.kind === 'WARN');

describe('lock assertions', () => {
  it('mmap_assert_locked / mmap_assert_write_locked accept the right holds and report the rest', () => {
    const k = kernel();
    const results: boolean[] = [];
    withVma(k, function* (k2, _t, mm) {
      results.push(k2.locks.mmap_assert_locked(mm, 'no_lock')); // report
      yield* k2.locks.mmap_read_lock(mm, 'test');
      results.push(k2.locks.mmap_assert_locked(mm, 'read_ok'));
      results.push(k2.locks.mmap_assert_write_locked(mm, 'read_not_write')); // report
      k2.locks.mmap_read_unlock(mm);
      yield* k2.locks.mmap_write_lock(mm, 'test');
      results.push(k2.locks.mmap_assert_locked(mm, 'write_ok'));
      results.push(k2.locks.mmap_assert_write_locked(mm, 'write_ok'));
      k2.locks.mmap_write_unlock(mm);
    });
    expect(results).toEqual([false, true, false, true, true]);
    const reps = assertions(k);
    expect(reps.map((r) => r.title)).toEqual([
      `WARNING: no_lock: lockdep_assert_held(${MMAP_LOCK_CLASS}) failed`,
      `WARNING: read_not_write: lockdep_assert_held_write(${MMAP_LOCK_CLASS}) failed`,
    ]);
    const lines = reps[0]!.text.split('\n');
    expect(lines[0]).toBe('------------[ cut here ]------------');
    expect(lines[1]).toMatch(/^WARNING: CPU: \d+ PID: \d+ at no_lock$/);
    expect(lines.at(-1)).toBe('---[ end trace 0000000000000000 ]---');
    expect(reps[1]!.text).toContain('held for read');
  });

  it('lockdep_assert_held_read wants a read hold: a write hold does not do (lock_is_held_type(l, 1))', () => {
    const k = kernel();
    const sem = new RwSemaphore(k, '&x->sem', k.lockdep);
    const results: boolean[] = [];
    k.kthread('t', function* () {
      yield* sem.down_read('t');
      results.push(k.lockdep.assertHeld(sem, sem.cls, 'read', 'r_ok'));
      sem.up_read();
      yield* sem.down_write('t');
      results.push(k.lockdep.assertHeld(sem, sem.cls, 'read', 'w_not_r'));
      results.push(k.lockdep.assertHeld(sem, sem.cls, 'any', 'w_any'));
      sem.up_write();
    }, 0);
    k.run();
    expect(results).toEqual([true, false, true]);
    expect(assertions(k).map((r) => r.title)).toEqual(['WARNING: w_not_r: lockdep_assert_held_read(&x->sem) failed']);
  });

  it("another task's hold does not satisfy the assertion", () => {
    const k = kernel();
    let ok: boolean | null = null;
    k.spawn(function* (u: User) {
      const a = yield* u.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* u.clone(function* (u2: User) {
        yield* u2.call('check', function* (k2, t) {
          yield* k2.sleepFor(20_000);
          ok = k2.locks.mmap_assert_locked(t.mm!, 'other_thread');
          return 0;
        });
      }, { cpu: 1 });
      yield* u.call('hold', function* (k2, t) {
        yield* k2.locks.mmap_read_lock(t.mm!, 'hold');
        yield* k2.sleepFor(100_000);
        k2.locks.mmap_read_unlock(t.mm!);
        return a;
      });
    });
    k.run();
    expect(ok).toBe(false);
    expect(assertions(k)).toHaveLength(1);
  });

  it('vma_assert_locked wants the VMA lock itself: read lock, or write lock under the mmap write lock', () => {
    const k = kernel();
    const results: [string, boolean][] = [];
    withVma(k, function* (k2, _t, mm, vma) {
      results.push(['none', k2.locks.vma_assert_locked(vma, 'none')]);
      const v = k2.locks.lock_vma_under_rcu(mm, vma.vm_start, 'test')!;
      results.push(['vma read', k2.locks.vma_assert_locked(vma, 'vma_read')]);
      k2.locks.vma_end_read(v);
      yield* k2.locks.mmap_read_lock(mm, 'test');
      results.push(['mmap read', k2.locks.vma_assert_locked(vma, 'mmap_read')]);
      results.push(['stabilised by mmap read', k2.locks.vma_assert_stabilised(vma, 'stab')]);
      k2.locks.mmap_read_unlock(mm);
      yield* k2.locks.mmap_write_lock(mm, 'test');
      results.push(['mmap write, VMA not write-locked', k2.locks.vma_assert_locked(vma, 'mmap_write_only')]);
      yield* k2.locks.vma_start_write(vma, 'test');
      results.push(['VMA write-locked', k2.locks.vma_assert_locked(vma, 'vma_write')]);
      k2.locks.mmap_write_unlock(mm);
    });
    expect(results).toEqual([
      ['none', false],
      ['vma read', true],
      ['mmap read', false],
      ['stabilised by mmap read', true],
      ['mmap write, VMA not write-locked', false],
      ['VMA write-locked', true],
    ]);
    expect(assertions(k).map((r) => r.title)).toEqual([
      `WARNING: none: lockdep_assert_held_write(${MMAP_LOCK_CLASS}) failed`,
      `WARNING: mmap_read: lockdep_assert_held_write(${MMAP_LOCK_CLASS}) failed`,
      'WARNING: mmap_write_only: VMA not write-locked',
    ]);
  });

  it('i_mmap_assert_locked / i_mmap_assert_write_locked check the mapping rwsem', () => {
    const k = kernel();
    const results: boolean[] = [];
    k.spawn(function* (u: User) {
      const s = yield* u.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS);
      yield* u.call('test', function* (k2, t) {
        const mapping = t.mm!.vma_lookup(s)!.vm_file!.f_mapping;
        results.push(k2.locks.i_mmap_assert_locked(mapping, 'unlocked'));
        yield* mapping.i_mmap_rwsem.down_read('test');
        results.push(k2.locks.i_mmap_assert_locked(mapping, 'read'));
        results.push(k2.locks.i_mmap_assert_write_locked(mapping, 'read_not_write'));
        mapping.i_mmap_rwsem.up_read();
        yield* mapping.i_mmap_rwsem.down_write('test');
        results.push(k2.locks.i_mmap_assert_write_locked(mapping, 'write'));
        mapping.i_mmap_rwsem.up_write();
        return 0;
      });
    });
    k.run();
    expect(results).toEqual([false, true, false, true]);
    expect(assertions(k).map((r) => r.title)).toEqual([
      `WARNING: unlocked: lockdep_assert_held(${I_MMAP_CLASS}) failed`,
      `WARNING: read_not_write: lockdep_assert_held_write(${I_MMAP_CLASS}) failed`,
    ]);
  });

  it('functions that need a lock report when called without it', () => {
    const k = kernel();
    withVma(k, function* (k2, _t, mm, vma) {
      // munmap needs the mmap write lock (mmap_assert_write_locked in do_vmi_munmap) …
      yield* k2.locks.mmap_read_lock(mm, 'test');
      yield* do_vmi_munmap(k2, mm, vma.vm_end - 4096, 4096, false);
      k2.locks.mmap_read_unlock(mm);
      // … zapping needs the VMA stable (mmap, VMA or rmap lock) …
      yield* zap_page_range_single(k2, vma, vma.vm_start, 4096);
      // … a VMA write lock needs the mmap write lock.
      yield* k2.locks.vma_start_write(vma, 'test');
    });
    const titles = assertions(k).map((r) => r.title);
    expect(titles).toContain(`WARNING: do_vmi_munmap: lockdep_assert_held_write(${MMAP_LOCK_CLASS}) failed`);
    expect(titles.some((x) => x.startsWith('WARNING: zap_page_range_single'))).toBe(true);
    expect(titles).toContain(`WARNING: vma_start_write <- test: lockdep_assert_held_write(${MMAP_LOCK_CLASS}) failed`);
  });

  it('the same calls with their locks held report nothing', () => {
    const k = kernel();
    withVma(k, function* (k2, _t, mm, vma) {
      const start = vma.vm_start;
      yield* k2.locks.mmap_write_lock(mm, 'test');
      yield* k2.locks.vma_start_write(vma, 'test');
      yield* do_vmi_munmap(k2, mm, vma.vm_end - 4096, 4096, false);
      k2.locks.mmap_write_unlock(mm);
      // (the split left the unmapped top page in the original VMA object, as __split_vma with
      // new_below does; the lower part is a new VMA)
      const v = k2.locks.lock_vma_under_rcu(mm, start, 'test')!;
      yield* zap_page_range_single(k2, v, v.vm_start, 4096);
      k2.locks.vma_end_read(v);
    });
    expect(k.reports.reports).toEqual([]);
  });
});
