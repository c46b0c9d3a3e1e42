// The scheduler behaviour the concurrency tests rely on (kernel/sched/core.ts, as
// kernel/sched/core.c and idle do it): a CPU that goes idle switches to the idle task, which
// is lazy TLB mode even while a sleeping task's timer is pending; an idle CPU's clock does not
// leap past the time another CPU wakes a task on it; and a timer wakes its sleeper even while
// another task keeps the CPU busy (the sleeper then runs when that task's slice ends).
import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import type { User } from '../../kernel/uapi.ts';
import { WaitQueue } from '../../kernel/sched/wait.ts';
import { PREEMPT } from '../../kernel/sched/core.ts';

describe('idle', () => {
  it('a CPU whose task sleeps on a timer is in lazy TLB mode with that mm loaded', () => {
    const k = new Kernel({ cpus: 2, memoryBytes: 16 << 20 });
    let lazy: boolean | null = null;
    let loaded = -1;
    let mmId = -2;
    k.spawn(function* (u: User) {
      const a = yield* u.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* u.store32(a, 1);
      mmId = u.task.mm!.ctx_id;
      k.kthread('probe', function* () {
        yield* k.sleepFor(20_000);
        lazy = k.tlb.cpuState[0]!.is_lazy;
        loaded = k.tlb.cpuState[0]!.loaded_mm.ctx_id;
      }, 1);
      yield* u.sleep(100_000);
    }, { cpu: 0 });
    k.run();
    expect(lazy).toBe(true);
    expect(loaded).toBe(mmId);
  });

  it("an idle CPU waiting for a far timer runs a task woken by another CPU at the waker's time", () => {
    const k = new Kernel({ cpus: 2, memoryBytes: 16 << 20 });
    const wq = new WaitQueue('test');
    let wokenAt = -1;
    let wakeAt = -1;
    k.kthread('far-timer', function* () {
      yield* k.sleepFor(10_000_000);
    }, 0);
    k.kthread('waiter', function* () {
      yield* wq.sleep(k);
      wokenAt = k.now();
    }, 0);
    k.kthread('waker', function* () {
      yield* k.sleepFor(100_000);
      wakeAt = k.now();
      wq.wakeAll(k);
    }, 1);
    k.run();
    expect(wokenAt).toBeGreaterThanOrEqual(wakeAt);
    expect(wokenAt).toBeLessThan(wakeAt + 20_000);
  });
});

describe('timers', () => {
  it('wake their sleeper while another task keeps the CPU, which it gets at the end of the slice', () => {
    const k = new Kernel({ cpus: 1, memoryBytes: 16 << 20 });
    const st = { stop: false, sleeperAt: -1 };
    k.kthread('sleeper', function* () {
      yield* k.sleepFor(10_000);
      st.sleeperAt = k.now();
      st.stop = true;
    }, 0);
    k.kthread('busy', function* () {
      while (!st.stop) {
        k.charge(1_000);
        yield PREEMPT;
      }
    }, 0);
    k.run({ maxSteps: 100_000 });
    expect(k.liveTasks()).toBe(0);
    // The sleeper ran first and slept; busy took the CPU; the timer made the sleeper runnable
    // meanwhile, and it got the CPU at the end of busy's time slice.
    expect(st.sleeperAt).toBeGreaterThanOrEqual(k.costs.timeSlice);
    expect(st.sleeperAt).toBeLessThan(k.costs.timeSlice + 50_000);
  });
});
