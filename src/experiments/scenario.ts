/**
 * src/experiments/scenario.ts — a scenario is a fresh kernel running one workload of `mmulab
 * run` (src/workloads/*): the touch patterns, fork with copy-on-write, a binder client and
 * server, a user's module, or a replayed lackey trace. `mmulab run` runs it to the end and
 * measures it (src/experiments/run.ts); the inspection commands (maps, smaps, pagemap, ptdump)
 * run it until its processes have finished their programs, or to a given scheduling step, and
 * look at one process's address space.
 *
 * A program monitor is attached to the kernel of a scenario: it wraps every program the kernel
 * starts (through Kernel.programHook, which spawn, fork and clone all reach). When a thread's
 * program returns it records the thread's page faults and run time and its process's RSS at that
 * moment, then, if the scenario parks, pauses the thread (a sleep on a wait queue, like
 * pause(2)) until the monitor releases it. So at the end of a parked run every process still has
 * its address space, exactly as it was when its program finished, and the engine stops with
 * nothing runnable (it reports that as a deadlock, which the monitor recognises by its parked
 * threads).
 */

import { Kernel, type KernelEngine, type KernelOptions } from '../../kernel/kernel.ts';
import type { Program, User } from '../../kernel/uapi.ts';
import type { KGen } from '../../kernel/sched/core.ts';
import { WaitQueue } from '../../kernel/sched/wait.ts';
import { EngineError } from '../../hw/engine.ts';
import type { DesignOptions } from '../../drivers/android/binder/page_mapping.ts';
import { TOUCH_PATTERNS, touchProgram, type TouchPattern } from '../workloads/touch.ts';
import { FORK_CHILD, FORK_PARENT, forkProgram } from '../workloads/fork_cow.ts';
import { BINDER_CLIENT, BINDER_SERVER, spawnBinderPair, type BinderPairResult } from '../workloads/binder_pair.ts';
import { lackeyProgram, type LackeyTrace } from '../workloads/lackey.ts';
import { asProgram, programLib, type LoadedModule } from '../workloads/module.ts';

/** The built-in workloads (a module or a lackey trace are given by file instead). */
export const BUILTIN_WORKLOADS = [...TOUCH_PATTERNS, 'fork', 'binder'] as const;
export type BuiltinWorkload = (typeof BUILTIN_WORKLOADS)[number];
export type WorkloadName = BuiltinWorkload | 'module' | 'lackey';

export const WORKLOAD_HELP: Record<BuiltinWorkload, string> = {
  sequential: 'touches of a region, line after line (--pages, --accesses, --writes, --threads)',
  strided: 'the same in steps of --stride bytes (default a page: a new page every access)',
  random: 'uniformly random cache lines of the region',
  zipf: 'pages drawn from a Zipf distribution (--zipf exponent), a random line in each',
  fork: `"${FORK_PARENT}" fills its region, forks "${FORK_CHILD}" (its stores copy on write), rewrites it`,
  binder: `"${BINDER_CLIENT}" sends --iterations transactions to "${BINDER_SERVER}" (--payload, --design)`,
};

export interface ScenarioOptions {
  workload: WorkloadName;
  seed: number;
  cpus: number;
  /** Further kernel options (memory, costs, tracing). */
  kernel?: KernelOptions;
  /** Touch and fork workloads. */
  pages: number;
  accesses: number;
  stride: number;
  zipf: number;
  writes: number;
  threads: number;
  /** Binder workload. */
  iterations: number;
  payload: number;
  design?: DesignOptions;
  /** workload 'lackey': the parsed trace. */
  lackey?: LackeyTrace;
  /** workload 'module': the loaded module. */
  module?: LoadedModule;
  /** Keep every thread alive at the end of its program until released (for inspection). */
  park: boolean;
}

export interface Scenario {
  k: Kernel;
  options: ScenarioOptions;
  monitor: Monitor;
  /** One line saying what runs. */
  description: string;
  /** The process inspected when none is named. */
  defaultProcess: string;
  binder?: BinderPairResult;
  /** Frames in use once the kernel booted, before any process: all of them again once every process exited. */
  bootFrames: number;
}

export function describeWorkload(o: ScenarioOptions): string {
  const w = o.workload;
  const writes = `${Math.round(o.writes * 100)}% stores`;
  const threads = o.threads > 1 ? `, ${o.threads} threads` : '';
  switch (w) {
    case 'sequential':
      return `sequential touches of ${o.pages} pages, ${o.accesses} accesses per thread, ${writes}${threads}`;
    case 'strided':
      return `strided touches (${o.stride}-byte stride) of ${o.pages} pages, ${o.accesses} accesses per thread, ${writes}${threads}`;
    case 'random':
      return `random touches of ${o.pages} pages, ${o.accesses} accesses per thread, ${writes}${threads}`;
    case 'zipf':
      return `Zipf (s=${o.zipf}) touches of ${o.pages} pages, ${o.accesses} accesses per thread, ${writes}${threads}`;
    case 'fork':
      return `fork with copy-on-write: ${o.pages} pages, the child makes ${o.accesses} touches, ${writes}`;
    case 'binder':
      return `binder client and server: ${o.iterations} transactions of ${o.payload} bytes, design ${o.design ? o.design.design + (o.design.identity ? ':' + o.design.identity : '') : 'eager'}`;
    case 'module':
      return `module ${o.module?.path ?? '?'}: ${o.module?.programs.map((p) => p.name).join(', ')}`;
    case 'lackey': {
      const c = o.lackey?.counts;
      return c ? `lackey trace replay: ${c.fetches} fetches, ${c.loads} loads, ${c.stores} stores, ${c.modifies} modifies over ${o.lackey!.pages} pages` : 'lackey trace replay';
    }
  }
}

/** Build the kernel and start the workload's processes (run it with runScenario). */
export function buildScenario(o: ScenarioOptions): Scenario {
  const k = new Kernel({ memoryBytes: 128 << 20, ...o.kernel, cpus: o.cpus, seed: o.seed });
  const monitor = new Monitor(k, o.park, o.workload === 'module' ? programLib(o.seed) : undefined);
  const spawn = (p: Program, comm: string) => void k.spawn(p, { comm });
  const s: Scenario = { k, options: o, monitor, description: describeWorkload(o), defaultProcess: o.workload, bootFrames: k.pages.usedFrames };
  switch (o.workload) {
    case 'sequential':
    case 'strided':
    case 'random':
    case 'zipf':
      spawn(touchProgram({ pattern: o.workload as TouchPattern, pages: o.pages, accesses: o.accesses, stride: o.stride, zipf: o.zipf, writes: o.writes, threads: o.threads, seed: o.seed }), o.workload);
      break;
    case 'fork':
      spawn(forkProgram({ pages: o.pages, accesses: o.accesses, writes: o.writes, seed: o.seed }), FORK_PARENT);
      s.defaultProcess = FORK_PARENT;
      break;
    case 'binder':
      s.binder = spawnBinderPair(k, { iterations: o.iterations, payload: o.payload, design: o.design }, spawn);
      s.defaultProcess = BINDER_SERVER;
      break;
    case 'lackey':
      if (!o.lackey) throw new Error('workload lackey needs a parsed trace');
      spawn(lackeyProgram(o.lackey), 'lackey');
      break;
    case 'module': {
      if (!o.module) throw new Error('workload module needs a loaded module');
      // The monitor hands every program its lib; asProgram's own lib argument is the same one.
      for (const p of o.module.programs) spawn(asProgram(p, monitor.lib!), p.name);
      s.defaultProcess = o.module.programs[0]!.name.slice(0, 15);
      break;
    }
  }
  return s;
}

export interface RunOutcome {
  /** done: every task finished; parked: every remaining thread is parked or waits on one; maxSteps: stopped at the step limit. */
  reason: 'done' | 'parked' | 'maxSteps';
  /** Scheduling steps taken. */
  steps: number;
}

/**
 * Run a scenario until it finishes, parks, or reaches `maxSteps` scheduling steps, on the chosen
 * engine. On the parallel engine (kernel/sched/parallel.ts) user-mode access streams run on worker
 * threads and a scheduling step is one CPU's turn; the run is not reproducible by seed.
 */
export function runScenario(s: Scenario, maxSteps: number, engine: KernelEngine = 'deterministic'): RunOutcome {
  const start = s.k.engine.steps;
  try {
    const r = s.k.runOn(engine, { maxSteps });
    return { reason: r.reason === 'done' ? 'done' : 'maxSteps', steps: r.steps };
  } catch (e) {
    // Nothing can run: with parked threads that is the end of a parked run.
    if (e instanceof EngineError && e.message.startsWith('deadlock') && s.monitor.parked > 0) return { reason: 'parked', steps: e.steps ?? s.k.engine.steps - start };
    throw e;
  }
}

// ================================================================================================
// The program monitor
// ================================================================================================

/** What the monitor saw of one process (thread group). */
export interface ProcessRecord {
  pid: number;
  comm: string;
  /** Threads started (the main thread included). */
  threads: number;
  /** Threads whose program returned or threw. */
  ended: number;
  /** Page faults of its ended threads (perf's page-faults event). */
  faults: number;
  /** Cycles its ended threads ran. */
  runCycles: number;
  /** RSS in pages when its last thread's program ended. */
  rss: { anon: number; file: number; shmem: number };
  /** The error a program of it threw (a signal, a failed system call), if any. */
  error?: string;
}

export class Monitor {
  /** By pid, in start order. */
  readonly processes = new Map<number, ProcessRecord>();
  /** Threads pausing now. */
  parked = 0;
  private released = false;
  private readonly wq = new WaitQueue('pause');

  constructor(
    readonly k: Kernel,
    readonly park: boolean,
    /** Passed to every program as its second argument (module programs). */
    readonly lib?: Record<string, unknown>,
  ) {
    k.programHook = (program, started) => {
      if (!started.thread) this.processes.set(started.tgid, { pid: started.tgid, comm: started.comm, threads: 1, ended: 0, faults: 0, runCycles: 0, rss: { anon: 0, file: 0, shmem: 0 } });
      else {
        const rec = this.processes.get(started.tgid);
        if (rec) rec.threads++;
      }
      return this.wrap(program);
    };
  }

  /** Let every parked thread go on to exit (and stop parking from now on). */
  release(): void {
    this.released = true;
    this.wq.wakeAll(this.k);
  }

  private wrap(program: Program): Program {
    const self = this;
    return function* (u: User) {
      let r: number | void;
      try {
        r = yield* (program as (u: User, lib?: unknown) => ReturnType<Program>)(u, self.lib);
      } catch (e) {
        self.ended(u, e);
        throw e;
      }
      self.ended(u);
      if (self.park && !self.released) {
        self.parked++;
        yield* u.call('pause', function* (k): KGen<number> {
          yield* self.wq.waitEvent(k, () => self.released, 'pause');
          return 0;
        });
        self.parked--;
      }
      return r;
    };
  }

  private ended(u: User, error?: unknown): void {
    const t = u.task;
    const rec = this.processes.get(t.tgid);
    if (!rec) return;
    rec.ended++;
    rec.faults += t.stats.faults;
    rec.runCycles += t.stats.runCycles;
    if (t.mm) rec.rss = { anon: t.mm.rss.anon, file: t.mm.rss.file, shmem: t.mm.rss.shmem };
    if (error !== undefined && rec.error === undefined) rec.error = error instanceof Error ? error.message : String(error);
  }
}
