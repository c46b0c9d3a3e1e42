/**
 * kernel/sched/parallel.ts — the kernel on the parallel engine: the kernel runs on the main
 * thread, every CPU's scheduler in turn, while user-mode access streams (User.run) run on worker
 * threads (hw/remote.ts), so the CPUs' user code really runs at once — TLB hits and misses, page
 * walks with their Accessed/Dirty updates racing the kernel's page-table writes, built-in TLB
 * invalidations — and comes back to the kernel at each page fault, each IPI for the kernel, each
 * preemption point and each access to a freed frame.
 *
 * The loop: each round, every CPU that is not away on a worker takes its pending IPIs and, if its
 * scheduler has something to do, runs one turn of at most a quantum of virtual time
 * (CpuScheduler.step, as under the deterministic engine). A waiting CPU's time passes as the
 * others' does: its wake-up (a sleeper's timer, the end of a computation) comes once every CPU
 * still running, here or on a worker, has passed it, and at once when none is. When nothing can
 * happen here, the main thread waits for a worker to give a CPU back or to get further (blocking,
 * with Atomics.wait: a run is a plain synchronous call, as on the deterministic engine); with no
 * CPU away either, the run is over (every task finished) or deadlocked (reported as the
 * deterministic engine reports it).
 *
 * Deviations, all of the kind the parallel engine has by nature (hw/parallel.ts): virtual clocks
 * advance by the cost model but are coupled only through the kernel's wake-ups and IPIs, and the
 * interleaving is whatever the host makes it, so results are not reproducible by seed. Kernel code
 * runs on one thread, one CPU's turn at a time (as under a big kernel lock): its own races
 * between CPUs are the deterministic engine's to explore, this engine's are those of user code
 * against the kernel. The kernel's rewrites of present page-table entries are atomic against a
 * worker's Accessed/Dirty updates as in Linux (ptep_get_and_clear, ptep_modify_prot_start, the
 * locked bit operations of ptep_set_wrprotect and the A/D setters), so no D bit set by a CPU is
 * lost. Checking mode (debugVm) is refused.
 */

import type { Kernel } from '../kernel.ts';
import { EngineError, checkRunLimits, type AgentStatus, type RunLimits, type RunResult } from '../../hw/engine.ts';
import { RemoteCpus } from '../../hw/remote.ts';

export interface ParallelRunOptions {
  /** Worker threads for user code (default: one per CPU, at most 2). */
  workers?: number;
  /**
   * Longest turn of a CPU in cycles (default DEFAULT_QUANTUM). Turns end earlier at every sleep,
   * wait and return to the kernel.
   */
  quantum?: number;
}

/**
 * The default longest turn, in cycles (~33 µs at 3 GHz). It bounds how far one CPU's clock runs
 * ahead of the others' between turns: kernel code and single accesses run here, one CPU's turn
 * at a time, and a turn of a whole tick (4 ms) let one CPU's events overtake another's that came
 * earlier in virtual time (two binder security scenarios, 1d and 4, lost the race they stage).
 * For a CPU on a worker it is one round trip per turn: at 100,000 cycles that cost nothing
 * measurable on two CPUs streaming 48 M accesses (30,000 cycles cost ~50%).
 */
export const DEFAULT_QUANTUM = 100_000;

/** Longest wait for a worker before the loop looks at everything again, in ms. */
const WAIT_MS = 50;
/** The same while a waiting CPU's wake-up is due once the CPUs away get there, in ms. */
const TIMER_POLL_MS = 1;

export function runParallel(k: Kernel, limits: RunLimits = {}, options: ParallelRunOptions = {}): RunResult {
  checkRunLimits(limits);
  if (k.debugVm) throw new EngineError('checking mode (debugVm) audits the mm after every step of the deterministic engine; it does not run on the parallel engine');
  if (k.remote !== null) throw new EngineError('this kernel is running on the parallel engine already');
  const quantum = options.quantum ?? DEFAULT_QUANTUM;
  if (!Number.isFinite(quantum) || quantum < 1) throw new EngineError(`quantum must be at least 1 cycle, got ${String(options.quantum)}`);
  const m = k.machine;
  const apic = m.apic;
  const remote = RemoteCpus.start(m, options.workers === undefined ? {} : { workers: options.workers });
  // Workers read frames with no kernel hook before the read: every freed frame holds its poison
  // while they run (they are attached but run nothing before the loop below hands them a CPU).
  const deferPoison = k.pages.deferPoison;
  k.pages.deferPoison = false;
  k.pages.poisonAllNow();
  const timed = apic.timed;
  const onSend = apic.onSend;
  apic.timed = false;
  apic.onSend = null;
  k.remote = remote;
  const status: AgentStatus[] = k.sched.map(() => 'run');
  let steps = 0;
  const until = limits.untilCycles ?? Infinity;
  try {
    for (;;) {
      const failed = remote.failure();
      if (failed !== null) throw new EngineError(failed);
      const seen = remote.exitCount();
      let progressed = false;
      for (const s of k.sched) {
        const i = s.index;
        const cpu = m.cpu(i);
        if (remote.away(i) && !remote.back(i)) continue;
        if (apic.pending(cpu) > 0 && apic.deliver(cpu, false) > 0) progressed = true;
        if (status[i] === 'wait' && !s.ready(cpu)) continue;
        if (cpu.cycles >= until) continue;
        if (limits.maxSteps !== undefined && steps >= limits.maxSteps) return { steps, reason: 'maxSteps' };
        status[i] = s.step(cpu, Math.min(until, cpu.cycles + quantum));
        steps++;
        progressed = true;
      }
      // A waiting CPU's time passes as the others' does: its wake-up (a sleeper's timer, the end
      // of a computation) comes once every CPU that is running, here or on a worker, has passed
      // it — at once when none is. (Waiting only until nothing else can run would starve a
      // sleeper beside a CPU that spins in user code.)
      let horizon = Infinity;
      for (const s of k.sched) if (status[s.index] === 'run' || remote.away(s.index)) horizon = Math.min(horizon, s.hw.cycles);
      let best = -1;
      let at = Infinity;
      for (const s of k.sched) {
        if (status[s.index] !== 'wait' || remote.away(s.index)) continue;
        const w = s.wakeAt(s.hw);
        if (w <= horizon && w < until && s.hw.cycles < w) {
          s.hw.cycles = w;
          progressed = true;
        } else if (w < at) {
          at = w;
          best = s.index;
        }
      }
      if (progressed) continue;
      if (remote.running > 0) {
        remote.waitExit(seen, best >= 0 ? TIMER_POLL_MS : WAIT_MS);
        continue;
      }
      if (k.sched.some((s) => status[s.index] === 'run' || (status[s.index] === 'wait' && s.ready(s.hw)))) return { steps, reason: 'until' };
      if (best >= 0) return { steps, reason: 'until' };
      const stuck = k.sched.filter((s) => status[s.index] === 'wait' && !s.quiescent());
      if (stuck.length > 0) throw new EngineError(`deadlock: nothing can run and ${stuck.map((s) => `CPU ${s.index}: ${s.describe()}`).join('; ')} waits`, steps);
      return { steps, reason: 'done' };
    }
  } finally {
    // Every CPU comes back before the workers stop (each stops at its clock limit at the latest),
    // so the tasks on them resume later in a consistent state, on either engine.
    for (;;) {
      const seen = remote.exitCount();
      for (let i = 0; i < m.cpus.length; i++) if (remote.away(i)) remote.back(i);
      if (remote.running === 0 || remote.failure() !== null) break;
      remote.waitExit(seen, WAIT_MS);
    }
    remote.stop();
    k.remote = null;
    apic.timed = timed;
    apic.onSend = onSend;
    k.pages.deferPoison = deferPoison;
  }
}
