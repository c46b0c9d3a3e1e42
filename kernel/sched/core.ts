/**
 * kernel/sched/core.ts — tasks, per-CPU run queues and the scheduler loop (kernel/sched/core.c
 * reduced to what memory-management experiments need).
 *
 * Every task is a generator. Kernel code that may sleep is written as generator functions called
 * with `yield*`; when it must wait it yields to the scheduler:
 *   PREEMPT          a preemption point: the scheduler may switch if the slice is used up
 *                    (a hot path may ask need_resched() first and skip a yield that the
 *                    scheduler would answer by resuming it at once);
 *   { kind:'sleep' } the task has put itself on a wait queue and set itself sleeping;
 *   { kind:'spin' }  the CPU busy-waits (interrupts enabled) until a condition holds, e.g. the
 *                    IPI acknowledgements of a TLB shootdown; nothing else runs on that CPU.
 *   { kind:'busy' }  the task computes without touching memory until a virtual time (user code
 *                    working in registers and caches): the CPU stays busy in the task's mm and
 *                    waits as a timed agent (Agent.wakeAt) for the end of the computation, the
 *                    next tick or the end of its slice, so interrupts are taken when they become
 *                    visible, ticks on time, and the task may be preempted meanwhile.
 *   { kind:'remote' } (parallel engine only) the task's user code runs on a worker thread until
 *                    the worker gives the CPU back; the time is the task's.
 * Plain (non-generator) kernel functions never sleep, which is how the code shows where
 * might_sleep() holds.
 *
 * Each CPU's scheduler is an agent of the deterministic engine (hw/engine.ts): the engine picks
 * CPUs by virtual clock; the scheduler runs its current task until the CPU's quantum ends,
 * switching on sleep, exit or an expired time slice (round robin within a CPU, FIFO wake-up
 * order). A task woken on an idle CPU runs there no earlier than the waker's clock; a remote idle
 * CPU is kicked with a reschedule IPI; an idle CPU waits for its next timer as one engine event
 * (a wake-up before it resumes the CPU at the waker's time). A sleeper whose timer expired
 * while another task kept the CPU gets it at the end of that task's slice (its timer fires then).
 * Going idle is a switch to the idle task: lazy TLB mode. Each context switch names its real
 * previous task, as __schedule's prev: the task that ran last on the CPU, although it has left
 * already (slept, exited, was preempted), or the idle task (null) when the CPU was idle. An oops
 * (a KernelBug) kills the task that hit it.
 * A CPU running a task takes a scheduler tick every 1/HZ of virtual time (between two steps of
 * the task), running the kernel's tick hooks; an idle CPU takes none (NOHZ idle).
 *
 * Simplifications: round robin instead of CFS, no wake-up preemption, no load balancing (a task
 * stays on its CPU unless its affinity is changed); tasks migrate only when requeued.
 */

import type { Cpu } from '../../hw/cpu.ts';
import type { AgentStatus, Agent } from '../../hw/engine.ts';
import type { Kernel } from '../kernel.ts';
import { KernelBug, type Report } from '../report.ts';
import type { MmStruct } from '../mm/mm_types.ts';

export const PREEMPT = Object.freeze({ kind: 'preempt' as const });
export interface SleepYield {
  kind: 'sleep';
  reason: string;
}
export interface SpinYield {
  kind: 'spin';
  reason: string;
  until: () => boolean;
  /** Called once the condition holds, before the task resumes (e.g. to settle IPI clocks). */
  after?: () => void;
}
export interface BusyYield {
  kind: 'busy';
  /** Virtual time (the CPU's clock) the computation ends at. */
  until: number;
}
/**
 * The task's user code runs on a worker thread (the parallel engine, kernel/sched/parallel.ts):
 * the CPU is the task's, in user mode, until `back()` says the worker gave it back.
 */
export interface RemoteYield {
  kind: 'remote';
  back: () => boolean;
}
export type SchedYield = typeof PREEMPT | SleepYield | SpinYield | BusyYield | RemoteYield;

/** What kernel code that may sleep looks like. */
export type KGen<T = void> = Generator<SchedYield, T, unknown>;

export type TaskState = 'runnable' | 'running' | 'sleeping' | 'dead';

export interface TaskStats {
  /** Cycles spent running on a CPU. */
  runCycles: number;
  /** Cycles spent runnable but waiting for a CPU. */
  queueCycles: number;
  /** Cycles spent sleeping (blocked). */
  sleepCycles: number;
  switches: number;
  preemptions: number;
  /** Page faults taken in user mode or on user addresses (perf's page-faults event). */
  faults: number;
}

export class Task {
  state: TaskState = 'runnable';
  body: KGen<number | void> | null = null;
  /** CPU this task runs on or will run on next. */
  cpu = 0;
  /** CPUs it may run on (null: any). */
  allowed: number[] | null = null;
  /** Earliest virtual time it may run after a wake-up. */
  wakeAt = 0;
  /** A 'busy' computation in progress ends at this time (0: none). */
  busyUntil = 0;
  /** When it last started waiting (sleep or run queue). */
  since = 0;
  /** Nesting of kernel entries: 0 means the task is in user mode (CPL 3). */
  inKernel = 0;
  /** The address space it runs in (null for kernel threads). */
  mm: MmStruct | null = null;
  /** The mm loaded while it runs (a kernel thread borrows the previous one). */
  active_mm: MmStruct | null = null;
  exitCode: number | null = null;
  /** A report explaining why the task died, if it did not exit by itself. */
  killedBy: Report | null = null;
  readonly stats: TaskStats = { runCycles: 0, queueCycles: 0, sleepCycles: 0, switches: 0, preemptions: 0, faults: 0 };
  /** What it is blocked on (for reports and deadlock messages). */
  waitingFor = '';
  /** preempt_count: spinlocks held (a task holding one is atomic and must not sleep). */
  preemptCount = 0;
  /** Value passed into the generator at its next resumption. */
  resume: unknown = undefined;
  /** Exception to throw into the generator at its next resumption (signals). */
  pendingThrow: unknown = null;
  /** Creation order within its kernel (KernelIds.task). */
  readonly serial: number;
  /** Subsystem-private per-task data (signal state, user context…). */
  readonly ext = new Map<string, unknown>();
  /** The locks lockdep records as held by this task (kernel/locking/lockdep.ts owns it). */
  lockdepHeld: unknown[] | null = null;
  /** Called once when the task is dead (exit paths, waiters). */
  readonly onExit: ((t: Task) => void)[] = [];

  constructor(
    readonly pid: number,
    readonly tgid: number,
    public comm: string,
    /** A kernel thread (no user mm of its own). */
    readonly kthread: boolean,
    serial: number,
  ) {
    this.serial = serial;
  }
}

/** One CPU's scheduler: its run queue and its loop, as an engine agent. */
export class CpuScheduler implements Agent {
  readonly rq: Task[] = [];
  curr: Task | null = null;
  /**
   * The task this CPU switched to last, still rq->curr in Linux's terms after it left (slept,
   * exited, was preempted) until the next switch, whose prev it is; null while the idle task
   * runs (from boot, and from each time the CPU went idle).
   */
  private last: Task | null = null;
  private spin: SpinYield | null = null;
  /** The current task's user code is on a worker (parallel engine), since `remoteSince`. */
  private remote: RemoteYield | null = null;
  private remoteSince = 0;
  private sliceEnd = 0;
  /** Cycles this CPU spent idle / spinning. */
  idleCycles = 0;
  spinCycles = 0;
  private idleSince = -1;
  private spinSince = 0;
  /** When the next scheduler tick is due on this CPU. */
  private nextTick = 0;
  /** The end of the engine turn being run (step's `until`). */
  private turnEnd = 0;
  /** The clock when the running task was last resumed: its run time is counted from there. */
  private resumedAt = 0;
  /** The clock when the CPU began to wait for a computing task (-1: it does not). */
  private busySince = -1;

  constructor(
    readonly kernel: Kernel,
    readonly index: number,
  ) {}

  get hw(): Cpu {
    return this.kernel.machine.cpu(this.index);
  }

  /** Is there anything for this CPU to do now? (The engine asks while it waits.) */
  ready(cpu: Cpu): boolean {
    if (this.remote) return this.remote.back();
    if (this.spin) return this.spin.until();
    return this.wakeAt(cpu) <= cpu.cycles;
  }

  /**
   * Agent.wakeAt: when step() next has something to do by itself, with the state as it is (the
   * engine asks again after a recheck, which enqueue() makes). A task computing ('busy') needs
   * the CPU again at the end of its computation, at the next tick, and at the end of its slice if
   * another task waits or a sleeper's timer here has expired by then; an idle CPU at the next
   * timer of a task here. Spinning CPUs are asked ready() instead (Infinity).
   */
  wakeAt(cpu: Cpu): number {
    if (this.spin || this.remote) return Infinity;
    const t = this.curr;
    const now = cpu.cycles;
    if (t !== null) {
      if (t.state !== 'running' || t.busyUntil <= now) return now;
      const slice = this.rq.length > 0 ? this.sliceEnd : Math.max(this.sliceEnd, this.kernel.nextTimer(this.index));
      return Math.min(t.busyUntil, this.nextTick, slice);
    }
    return this.rq.length > 0 ? now : this.kernel.nextTimer(this.index);
  }

  /**
   * Idle, not spinning and no timer of a task here (Agent.parked): only a task put on this
   * CPU's run queue (enqueue tells the engine) or an IPI can change that; a timer here belongs
   * to a task of this CPU, which cannot add one while the CPU idles.
   */
  parked(cpu: Cpu): boolean {
    return this.spin === null && this.remote === null && this.wakeAt(cpu) === Infinity;
  }

  /** Idle with no task alive anywhere: nothing can ever wake this CPU. */
  quiescent(): boolean {
    return this.spin === null && this.remote === null && this.kernel.liveTasks() === 0;
  }

  describe(): string {
    if (this.remote) return `running ${this.curr?.comm ?? '?'}/${this.curr?.pid ?? '?'} in user mode on a worker`;
    if (this.spin) return `spinning: ${this.spin.reason}`;
    const sleepers = [...this.kernel.tasks.values()].filter((t) => t.state === 'sleeping' && t.cpu === this.index);
    return sleepers.length ? `idle; sleeping here: ${sleepers.map((t) => `${t.comm}/${t.pid} on ${t.waitingFor}`).join(', ')}` : 'idle';
  }

  enqueue(t: Task, at: number): void {
    t.state = 'runnable';
    t.cpu = this.index;
    t.since = at;
    if (t.wakeAt < at) t.wakeAt = at;
    this.rq.push(t);
    // A timer of t's (should it have one left) now belongs to this CPU.
    this.kernel.timersChanged();
    this.kernel.engine.recheck(this.index);
  }

  step(cpu: Cpu, until: number): AgentStatus {
    const k = this.kernel;
    this.turnEnd = until;
    if (this.busySince >= 0) {
      // The task computed while the CPU waited for its wake-up: the time is the task's (with any
      // IPI handler that ran meanwhile, as Linux accounts it without IRQ_TIME_ACCOUNTING).
      if (this.curr !== null) this.curr.stats.runCycles += cpu.cycles - this.busySince;
      this.busySince = -1;
    }
    for (;;) {
      if (this.remote) {
        if (!this.remote.back()) return 'wait';
        this.remote = null;
        if (this.curr !== null) this.curr.stats.runCycles += cpu.cycles - this.remoteSince;
      }
      if (this.spin) {
        if (!this.spin.until()) return 'wait';
        const s = this.spin;
        this.spin = null;
        if (s.after) s.after();
        this.spinCycles += cpu.cycles - this.spinSince;
      }
      const now = cpu.cycles;
      if (now >= until) return 'run';
      let t = this.curr;
      if (t !== null && t.state !== 'running') t = this.curr = null;
      // Sleepers whose timer expired while another task kept the CPU get it when that task's
      // slice ends (there is no wake-up preemption): fire their timers then, so the slice check
      // below sees them waiting. (Firing them only here, as the task is about to leave, keeps
      // fireTimers a switch-out point for the tracer.)
      if (t !== null && now >= this.sliceEnd && this.rq.length === 0 && k.nextTimer(this.index) <= now) k.fireTimers(this.index, now);
      if (t !== null && now >= this.sliceEnd && this.rq.length > 0) {
        // Time slice used up and someone is waiting: round robin.
        t.stats.preemptions++;
        this.curr = null;
        this.enqueue(t, now);
        t = null;
      }
      if (t === null) {
        k.fireTimers(this.index, now);
        t = this.rq.shift() ?? null;
        if (t === null) {
          // Switching to the idle task: lazy TLB mode (enter_lazy_tlb), whether or not a timer
          // of a sleeping task is pending here.
          if (this.idleSince < 0) {
            this.idleSince = now;
            // __schedule picked the idle task: the task that left is switched out to it.
            k.trace.schedIdle(this.index);
            this.last = null;
            k.cpuIdle(this.index);
          }
          // Idle until the next timer of a task here (wakeAt), or until another CPU wakes a task
          // here (Linux's idle CPU takes the reschedule IPI): the engine resumes this CPU at the
          // waker's time then, so the task does not start after a clock that leapt ahead.
          return 'wait';
        }
        if (this.idleSince >= 0) {
          // Idle until the task may run: the woken task's time bounds this CPU's clock.
          if (cpu.cycles < t.wakeAt) cpu.cycles = t.wakeAt;
          this.idleCycles += cpu.cycles - this.idleSince;
          this.idleSince = -1;
        } else if (cpu.cycles < t.wakeAt) {
          cpu.cycles = t.wakeAt;
        }
        // The previous task is the one that last ran here, even though it has left already
        // (this.curr is cleared when a task sleeps, exits or is preempted), or the idle task.
        const prev = this.last;
        this.last = t;
        k.contextSwitch(this, prev, t);
        t.stats.queueCycles += Math.max(0, cpu.cycles - t.since);
        t.stats.switches++;
        t.state = 'running';
        this.curr = t;
        this.sliceEnd = cpu.cycles + k.costs.timeSlice;
      }
      // scheduler_tick: the periodic tick of a CPU running a task (an idle CPU has none, as
      // with NOHZ idle). Taken between two steps of the task.
      if (cpu.cycles >= this.nextTick) {
        const period = k.tickCycles;
        this.nextTick = (Math.floor(cpu.cycles / period) + 1) * period;
        k.runCpuHooks(k.tickHooks, this.index);
      }
      // A computation in progress: the CPU waits for its end, the next tick or the end of the
      // slice (wakeAt), taking IPIs meanwhile; the time is the task's (see the top).
      if (t.busyUntil > cpu.cycles) {
        this.busySince = cpu.cycles;
        return 'wait';
      }
      // Run the task up to its next yield.
      this.resumedAt = cpu.cycles;
      k.current = t;
      let r: IteratorResult<SchedYield, number | void>;
      try {
        if (t.pendingThrow !== null) {
          const e = t.pendingThrow;
          t.pendingThrow = null;
          r = t.body!.throw(e);
        } else {
          const v = t.resume;
          t.resume = undefined;
          r = t.body!.next(v);
        }
      } catch (e) {
        k.current = null;
        t.stats.runCycles += cpu.cycles - this.resumedAt;
        this.curr = null;
        k.taskCrashed(t, e);
        continue;
      }
      k.current = null;
      t.stats.runCycles += cpu.cycles - this.resumedAt;
      if (r.done) {
        this.curr = null;
        k.taskExited(t, typeof r.value === 'number' ? r.value : 0);
        continue;
      }
      const y = r.value;
      switch (y.kind) {
        case 'preempt':
          break;
        case 'sleep':
          if (t.state === 'running') throw new Error(`task ${t.pid} yielded sleep without sleeping (${y.reason})`);
          if (t.preemptCount > 0) {
            // __schedule_bug: printed, not fatal; the run goes on to show the consequences.
            k.report({
              kind: 'BUG',
              title: `BUG: scheduling while atomic: ${t.comm}/${t.pid}/0x${t.preemptCount.toString(16).padStart(8, '0')}`,
              text: `BUG: scheduling while atomic: ${t.comm}/${t.pid}/0x${t.preemptCount.toString(16).padStart(8, '0')}\nsleeping on ${y.reason} with ${t.preemptCount} spinlock(s) held`,
              pid: t.pid,
              comm: t.comm,
              data: { preemptCount: t.preemptCount, reason: y.reason },
            });
          }
          t.waitingFor = y.reason;
          if (this.curr === t) this.curr = null;
          break;
        case 'spin':
          this.spin = y;
          this.spinSince = cpu.cycles;
          break;
        case 'busy':
          t.busyUntil = y.until;
          break;
        case 'remote':
          this.remote = y;
          this.remoteSince = cpu.cycles;
          break;
        default:
          throw new Error(`task ${t.pid} yielded ${JSON.stringify(y)} to the scheduler`);
      }
    }
  }

  /**
   * The clock at which need_resched() turns true by time alone, the state being as it is: the
   * end of the engine turn, the next tick, the end of the slice if another task waits or a timer
   * here expires by then. A worker running the task's user code stops there (parallel engine).
   */
  userUntil(): number {
    const slice = this.rq.length > 0 ? this.sliceEnd : Math.max(this.sliceEnd, this.kernel.nextTimer(this.index));
    return Math.min(this.turnEnd, this.nextTick, slice);
  }

  /**
   * need_resched() for `t`, the task this CPU is running, at a preemption point (the return to
   * user mode, every 64 user accesses): true when a PREEMPT yield here would make the loop in
   * step() do anything but resume `t` at once — end the engine turn, take a tick, fire timers,
   * switch tasks, deliver a pending throw or value. When it returns false the yield would be a
   * round trip with no effect, so the caller may go on without it (as exit_to_user_mode calls
   * schedule() only when TIF_NEED_RESCHED is set); the run time of `t` is then accounted as that
   * round trip would have, in two parts split at this point.
   */
  need_resched(t: Task): boolean {
    if (this.curr !== t || this.kernel.current !== t || t.state !== 'running' || this.spin !== null) return true;
    const now = this.kernel.machine.cpu(this.index).cycles;
    if (now >= this.turnEnd || now >= this.nextTick || t.busyUntil > now) return true;
    if (now >= this.sliceEnd && (this.rq.length > 0 || this.kernel.nextTimer(this.index) <= now)) return true;
    if (t.pendingThrow !== null || t.resume !== undefined) return true;
    t.stats.runCycles += now - this.resumedAt;
    this.resumedAt = now;
    return false;
  }
}

/**
 * might_sleep() (__might_sleep in kernel/sched/core.c): a sleeping lock taken with a spinlock held (preempt_count > 0) is reported as
 * __might_sleep prints it, once per call site; the acquisition goes on.
 */
export function might_sleep(k: Kernel, file: string, site: string): void {
  const t = k.current;
  if (!t || t.preemptCount === 0) return;
  k.report({
    kind: 'BUG',
    title: `BUG: sleeping function called from invalid context at ${file}`,
    text: `BUG: sleeping function called from invalid context at ${file}\nin_atomic(): 1, irqs_disabled(): 0, non_block: 0, pid: ${t.pid}, name: ${t.comm}\npreempt_count: ${t.preemptCount}, expected: 0\ncaller: ${site}`,
    data: { site, preemptCount: t.preemptCount },
  });
}

export { KernelBug };
