/**
 * Scenarios shared by test/kernel/trace.test.ts and test/kernel/trace_export.test.ts: runs whose
 * traces contain every tracepoint the exporters handle (IPIs to several CPUs and to one, lazy
 * CPUs dropping an mm, sleeps, exits, a wake-up by reschedule IPI).
 */

import { expect } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import type { User } from '../../kernel/uapi.ts';

export const PAGE = 4096;

/**
 * main (CPU 0) and two threads (CPUs 1, 2) share 16 pages. With both threads running, main unmaps
 * 4 pages (a shootdown to CPUs 1 and 2), lets thread 2 exit, then unmaps one page (CPU 1 only),
 * and exits. Thread 1 exits last: exit_mmap frees the page tables, so the lazy CPUs 0 and 2 get
 * an IPI too and drop the mm.
 */
export function shootdownScenario(opts: { seed?: number } = {}): { k: Kernel; pids: { main: number; t1: number; t2: number } } {
  const k = new Kernel({ cpus: 3, memoryBytes: 32 << 20, trace: true, seed: opts.seed ?? 1 });
  const pids = { main: 0, t1: 0, t2: 0 };
  const flags = { ready1: false, ready2: false, stop1: false, stop2: false, done2: false };
  const worker = (n: 1 | 2, p: number) =>
    function* (v: User) {
      for (let i = 0; i < 16; i++) yield* v.load32(p + i * PAGE);
      flags[`ready${n}`] = true;
      while (!flags[`stop${n}`]) {
        yield* v.load32(p);
        yield* v.yield();
      }
      if (n === 2) flags.done2 = true;
    };
  const main = k.spawn(
    function* main(u: User) {
      const p = yield* u.mmap(0, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      for (let i = 0; i < 16; i++) yield* u.store32(p + i * PAGE, i);
      pids.t1 = yield* u.clone(worker(1, p), { cpu: 1, comm: 'worker1' });
      pids.t2 = yield* u.clone(worker(2, p), { cpu: 2, comm: 'worker2' });
      while (!flags.ready1 || !flags.ready2) yield* u.load32(p);
      yield* u.munmap(p + 8 * PAGE, 4 * PAGE);
      flags.stop2 = true;
      while (!flags.done2) yield* u.load32(p);
      yield* u.sleep(50_000); // let CPU 2 go idle
      yield* u.munmap(p + 12 * PAGE, PAGE);
      flags.stop1 = true;
    },
    { cpu: 0 },
  );
  pids.main = main.pid;
  const r = k.run({ maxSteps: 200_000 });
  expect(r.reason).toBe('done');
  return { k, pids };
}

/** A parent on CPU 0 waits for a child (on CPU 1) that sleeps and exits: the child's exit wakes it with a reschedule IPI. */
export function wakeupScenario(opts: { seed?: number } = {}): Kernel {
  const k = new Kernel({ cpus: 2, memoryBytes: 16 << 20, quantum: 2000, trace: true, seed: opts.seed ?? 1 });
  k.spawn(
    function* parent(u: User) {
      const p = yield* u.mmap(0, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      for (let i = 0; i < 4; i++) yield* u.store32(p + i * PAGE, i);
      const c = yield* u.fork(function* child(v: User) {
        yield* v.store32(p, 7);
        yield* v.sleep(60_000);
      }, 'child');
      yield* u.wait(c);
    },
    { cpu: 0 },
  );
  expect(k.run({ maxSteps: 100_000 }).reason).toBe('done');
  return k;
}

