// The scheduler behaviour the concurrency tests rely on (kernel/sched/core.ts, as
// kernel/sched/core.c and idle do it): a CPU that goes idle switches to the idle task, which
// is lazy TLB mode even while a sleeping task's timer is pending; an idle CPU's clock does not
// leap past the time another CPU wakes a task on it; a timer wakes its sleeper even while
// another task keeps the CPU busy (the sleeper then runs when that task's slice ends); and every
// context switch names its real previous task, as __schedule hands prev to trace_sched_switch
// and context_switch: the task that was preempted, slept or exited, or the idle task.
import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import type { User } from '../../kernel/uapi.ts';
import { WaitQueue } from '../../kernel/sched/wait.ts';
import { PREEMPT } from '../../kernel/sched/core.ts';
import type { TraceEvent } from '../../kernel/trace/trace.ts';

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

describe('context switch: the real previous task', () => {
  /**
   * One CPU, two tasks with short slices: `a` computes throughout; `b` computes, sleeps while `a`
   * is runnable, computes again and exits while `a` still is. Returns the kernel, the
   * sched_switch and task-switch tlb_flush events (snapshot, so the final switch to idle is in),
   * and what the switch hooks were given.
   */
  function twoTasks(): { k: Kernel; switches: TraceEvent[]; flushes: TraceEvent[]; hooks: string[] } {
    const k = new Kernel({ cpus: 1, memoryBytes: 16 << 20, trace: true, costs: { timeSlice: 20_000 } });
    const hooks: string[] = [];
    k.switchHooks.push((_cpu, prev, next) => hooks.push(`${prev?.comm ?? '<idle>'} -> ${next.comm}`));
    const loads = (n: number) =>
      function* (u: User) {
        const p = yield* u.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
        for (let i = 0; i < n; i++) yield* u.load32(p);
        return p;
      };
    k.spawn(loads(20_000), { comm: 'a' });
    k.spawn(function* (u: User) {
      yield* loads(1_000)(u);
      yield* u.sleep(10_000);
      yield* loads(8_000)(u);
    }, { comm: 'b' });
    k.run({ maxSteps: 1_000_000 });
    const evs = k.trace.snapshot();
    return {
      k,
      switches: evs.filter((e) => e.name === 'sched:sched_switch'),
      flushes: evs.filter((e) => e.name === 'tlb:tlb_flush' && e.fields.reason === 0),
      hooks,
    };
  }

  it('sched_switch: a task that is preempted (R+), sleeps (S) or exits (X) with another runnable hands the CPU straight to it, no swapper/0 in between', () => {
    const { switches } = twoTasks();
    const line = (e: TraceEvent) => `${e.fields.prev_comm} ${e.fields.prev_state} ==> ${e.fields.next_comm}`;
    expect(switches.map(line)).toEqual([
      'swapper/0 R ==> a',
      'a R+ ==> b',
      'b S ==> a',
      'a R+ ==> b',
      'b R+ ==> a',
      'a R+ ==> b',
      'b X ==> a',
      'a X ==> swapper/0',
    ]);
    // Each event is the previous task's (it is current until switch_to), at the switch itself.
    for (const e of switches) expect([e.pid, e.comm]).toEqual([e.fields.prev_pid, e.fields.prev_pid === 0 ? '<idle>' : e.fields.prev_comm]);
  });

  it("switch_mm and the switch hooks see the real previous task too: the task-switch tlb_flush is prev's event", () => {
    const { switches, flushes, hooks } = twoTasks();
    expect(hooks).toEqual(['<idle> -> a', 'a -> b', 'b -> a', 'a -> b', 'b -> a', 'a -> b', 'b -> a']);
    // switch_mm_irqs_off runs in context_switch, after trace_sched_switch and before switch_to.
    for (const sw of switches.filter((e) => e.fields.next_pid !== 0)) {
      const f = flushes.find((e) => e.ts === sw.ts);
      expect(f).toBeDefined();
      expect(f!.pid).toBe(sw.fields.prev_pid);
    }
  });

  it('after an idle period the previous task is the idle task: prev ==> swapper/0 when it left, swapper/0 ==> next when the next one comes', () => {
    const k = new Kernel({ cpus: 1, memoryBytes: 16 << 20, trace: true });
    const hooks: string[] = [];
    k.switchHooks.push((_cpu, prev, next) => hooks.push(`${prev?.comm ?? '<idle>'} -> ${next.comm}`));
    k.kthread('sleeper', function* () {
      yield* k.sleepFor(50_000);
    }, 0);
    k.run({ maxSteps: 100_000 });
    const sw = k.trace.snapshot().filter((e) => e.name === 'sched:sched_switch');
    expect(sw.map((e) => `${e.fields.prev_comm} ${e.fields.prev_state} ==> ${e.fields.next_comm}`)).toEqual([
      'swapper/0 R ==> sleeper',
      'sleeper S ==> swapper/0',
      'swapper/0 R ==> sleeper',
      'sleeper X ==> swapper/0',
    ]);
    // The switch to idle is stamped when the sleeper left, well before it came back.
    expect(sw[2]!.ts - sw[1]!.ts).toBeGreaterThanOrEqual(45_000);
    expect(hooks).toEqual(['<idle> -> sleeper', '<idle> -> sleeper']);
  });
});
