/**
 * Sleeping in atomic context: a sleeping lock taken with a spinlock held is reported as
 * might_sleep() prints it, and a task that sleeps while holding a spinlock as "scheduling
 * while atomic"; both are reports, not crashes, and correct code files neither.
 */

import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import type { User } from '../../kernel/uapi.ts';
import { Mutex, SpinLock } from '../../kernel/locking/mutex.ts';
import { RwSemaphore } from '../../kernel/locking/rwsem.ts';

function boot() {
  const k = new Kernel({ cpus: 1, memoryBytes: 16 << 20 });
  return { k, spin: new SpinLock(k, 'test_spin', k.lockdep), mutex: new Mutex(k, 'test_mutex', k.lockdep), sem: new RwSemaphore(k, 'test_rwsem', k.lockdep) };
}

describe('might_sleep and scheduling while atomic', () => {
  it('reports a mutex or rwsem taken with a spinlock held, naming the task and the preempt count', () => {
    const { k, spin, mutex, sem } = boot();
    k.spawn(function* bad(u: User) {
      yield* u.call('bad', function* () {
        spin.lock('bad');
        yield* mutex.lock('bad_mutex');
        mutex.unlock();
        yield* sem.down_read('bad_rwsem');
        sem.up_read();
        spin.unlock();
        return 0;
      });
    });
    expect(k.run().reason).toBe('done');
    const titles = k.reports.reports.map((r) => r.title);
    expect(titles).toEqual([
      'BUG: sleeping function called from invalid context at kernel/locking/mutex.c:283',
      'BUG: sleeping function called from invalid context at kernel/locking/rwsem.c:1523',
    ]);
    expect(k.reports.reports[0]!.text).toMatch(/in_atomic\(\): 1, irqs_disabled\(\): 0, non_block: 0, pid: \d+, name: bad\npreempt_count: 1, expected: 0/);
  });

  it('reports a task that sleeps with a spinlock held', () => {
    const { k, spin } = boot();
    k.spawn(function* sleeper(u: User) {
      yield* u.call('sleepy', function* (kk) {
        spin.lock('sleepy');
        yield* kk.sleepFor(1000);
        spin.unlock();
        return 0;
      });
    });
    expect(k.run().reason).toBe('done');
    expect(k.reports.reports.map((r) => r.title)).toEqual([expect.stringMatching(/^BUG: scheduling while atomic: sleeper\/\d+\/0x00000001$/)]);
  });

  it('files nothing for correct code, and trylock and unlock keep the count balanced', () => {
    const { k, spin, mutex } = boot();
    let counts: number[] = [];
    k.spawn(function* good(u: User) {
      yield* u.call('good', function* (kk) {
        const t = kk.current!;
        yield* mutex.lock('good');
        spin.lock('good');
        counts.push(t.preemptCount);
        spin.unlock();
        mutex.unlock();
        counts.push(t.preemptCount);
        expect(spin.trylock('good')).toBe(true);
        counts.push(t.preemptCount);
        spin.unlock();
        counts.push(t.preemptCount);
        yield* kk.sleepFor(1000);
        return 0;
      });
    });
    expect(k.run().reason).toBe('done');
    expect(counts).toEqual([1, 0, 1, 0]);
    expect(k.reports.reports).toEqual([]);
  });
});
