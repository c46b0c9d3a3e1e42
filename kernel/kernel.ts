/**
 * kernel/kernel.ts — the mini-kernel as one object: it boots a machine (init/main.c's
 * start_kernel, reduced), owns the subsystems (page allocator, schedulers, TLB state, reports,
 * tracing) and offers the services every subsystem uses: the current task and CPU, virtual time,
 * charging cycles, waking tasks, and running the whole system on the deterministic engine.
 *
 * Per-CPU variables of Linux are arrays indexed by CPU here; `current` is the task being run by
 * the engine at this moment (one thread simulates all CPUs, so there is exactly one).
 */

import { Machine } from '../hw/machine.ts';
import { ConfigError, type MachineOptions } from '../hw/config.ts';
import { DeterministicEngine, EngineError, checkRunLimits, type RunLimits, type RunResult } from '../hw/engine.ts';
import type { RemoteCpus } from '../hw/remote.ts';
import { runParallel, type ParallelRunOptions } from './sched/parallel.ts';
import type { Cpu, WatchHit } from '../hw/cpu.ts';
import type { HwCostModel } from '../hw/cost.ts';
import { CR4_PCIDE, CR4_PGE, CR4_SMAP, CR4_SMEP } from '../hw/control-registers.ts';
import { parseKernelCosts, type KernelCostModel } from './cost.ts';
import { KernelBug, ReportLog, type Report } from './report.ts';
import { CpuScheduler, Task, type KGen } from './sched/core.ts';
import { PageAllocator, type PageRefHolder } from './mm/page_alloc.ts';
import { Tracer } from './trace/trace.ts';
import { kasanCpuAccess, reportBadPage } from './mm/kasan.ts';
import { PageTables } from './arch/x86/pgtable.ts';
import { TlbFlusher } from './arch/x86/tlb.ts';
import { Lockdep } from './locking/lockdep.ts';
import { MmapLocking } from './mm/mmap_lock.ts';
import { VmaOps } from './mm/vma.ts';
import { MmStruct, VM_MAYWRITE, VM_MIXEDMAP, VM_PFNMAP, VM_WRITE, type VmArea } from './mm/mm_types.ts';
import { Workqueue } from './workqueue.ts';
import { mm_alloc, mmdrop, mmgrab } from './fork.ts';
import { ThreadGroup, FdTable, do_exit, groupOf } from './exit.ts';
import { ExitRequest, User, type Program } from './uapi.ts';
import { SignalError, reportFatalSignal } from './signal.ts';
import { ENOMEM, SyscallError } from './errno.ts';
import type { File } from './fs/file.ts';
import { WaitQueue } from './sched/wait.ts';
import { check_vm_invariants } from './mm/debug_vm.ts';
import { KernelIds } from './ids.ts';

/** The engines a kernel runs on: run() and runParallel(). */
export const KERNEL_ENGINES = ['deterministic', 'parallel'] as const;
export type KernelEngine = (typeof KERNEL_ENGINES)[number];

/** CONFIG_HZ: scheduler ticks per second; 250 is Kconfig's default (kernel/Kconfig.hz, HZ_250). */
export const HZ = 250;

/** IPI vectors (arch/x86/include/asm/irq_vectors.h). */
export const RESCHEDULE_VECTOR = 0xfd;
export const CALL_FUNCTION_VECTOR = 0xfc;

export interface KernelOptions {
  /** Physical memory (default 256 MiB). */
  memoryBytes?: number;
  cpus?: number;
  /** Seed of the scheduler's interleaving and of workloads that ask the kernel for randomness. */
  seed?: number;
  /** Engine quantum in cycles. */
  quantum?: number;
  /** Use PCIDs (X86_FEATURE_PCID), default true. */
  pcid?: boolean;
  smep?: boolean;
  smap?: boolean;
  /** Further machine options (TLB geometry, MAXPHYADDR, …). */
  machine?: Partial<MachineOptions>;
  costs?: Partial<KernelCostModel>;
  hwCosts?: Partial<HwCostModel>;
  clockGhz?: number;
  /** Record tracepoints (default false). */
  trace?: boolean;
  /** Scheduler ticks per second (CONFIG_HZ, default HZ). */
  hz?: number;
  /**
   * Checking mode: audit the mm invariants (kernel/mm/debug_vm.ts) after every engine step at
   * which no task is inside a kernel operation, so a violation is caught right after the step
   * that caused it, as CONFIG_DEBUG_VM's VM_BUG_ONs catch it where it happens. Each distinct
   * violation is filed once as a BUG report. Slow: a whole audit per step. Default false.
   */
  debugVm?: boolean;
}

const KERNEL_OPTION_TYPES: Record<keyof KernelOptions, 'number' | 'boolean' | 'object'> = {
  memoryBytes: 'number',
  cpus: 'number',
  seed: 'number',
  quantum: 'number',
  pcid: 'boolean',
  smep: 'boolean',
  smap: 'boolean',
  machine: 'object',
  costs: 'object',
  hwCosts: 'object',
  clockGhz: 'number',
  trace: 'boolean',
  hz: 'number',
  debugVm: 'boolean',
};

/**
 * Reject options the kernel does not know or of the wrong type, naming the option: a misspelt
 * option must not silently fall back to its default. Ranges are checked where each value is used
 * (the machine's configuration, the engine, the tick).
 */
function checkKernelOptions(opts: KernelOptions): void {
  if (typeof opts !== 'object' || opts === null || Array.isArray(opts)) throw new ConfigError('kernel options must be an object');
  for (const [key, v] of Object.entries(opts)) {
    const want = KERNEL_OPTION_TYPES[key as keyof KernelOptions];
    if (!want) throw new ConfigError(`unknown kernel option "${key}" (known: ${Object.keys(KERNEL_OPTION_TYPES).join(', ')})`);
    if (v === undefined) continue;
    if (want === 'object' ? typeof v !== 'object' || v === null || Array.isArray(v) : typeof v !== want) {
      throw new ConfigError(`kernel option ${key} must be ${want === 'object' ? 'an object' : `a ${want}`}, got ${Array.isArray(v) ? 'an array' : v === null ? 'null' : typeof v}`);
    }
  }
}

export class Kernel {
  readonly machine: Machine;
  readonly engine: DeterministicEngine;
  readonly costs: KernelCostModel;
  readonly reports = new ReportLog();
  readonly pages: PageAllocator;
  readonly sched: CpuScheduler[];
  readonly trace: Tracer;
  readonly tasks = new Map<number, Task>();
  readonly options: Required<Pick<KernelOptions, 'pcid' | 'smep' | 'smap'>>;
  /** Checking mode: the mm invariants audited after every engine step (KernelOptions.debugVm). */
  readonly debugVm: boolean;
  /** While the kernel runs on the parallel engine (runParallel): the workers running user code. */
  remote: RemoteCpus | null = null;
  /** The task the engine is running right now (null in interrupt or idle context). */
  current: Task | null = null;
  /** CPU of the code running now when no task is current (IPI handlers). */
  irqCpu = -1;
  private nextPid = 1;
  /** Subsystems register here so others can reach them without import cycles. */
  readonly subsystems = new Map<string, unknown>();
  /** The numbers this kernel gives its objects (inodes, mm contexts, VMAs, …; drivers' through next()). */
  readonly ids = new KernelIds();
  /**
   * An instrument's hook on every user program the kernel starts (spawn and fork go through
   * startProcess, clone through startThread): told the process, and whether this is a new thread
   * of it, it returns the program to run — the same one or a wrapper around it. mmulab's
   * experiments use it to see each program end (src/experiments/scenario.ts). null: none.
   */
  programHook: ((program: Program, started: { tgid: number; comm: string; thread: boolean }) => Program) | null = null;
  /** Hooks run on every context switch. */
  readonly switchHooks: ((cpu: number, prev: Task | null, next: Task) => void)[] = [];
  /**
   * Hooks run at every pass through __schedule on `cpu` — a switch to another task or to idle —
   * before the switch itself (the loaded mm is still the previous one).
   */
  readonly scheduleHooks: ((cpu: number) => void)[] = [];
  /** Hooks run at the scheduler tick (scheduler_tick) of a CPU that is running a task. */
  readonly tickHooks: ((cpu: number) => void)[] = [];
  /** Cycles between scheduler ticks (1/HZ at the cost model's clock rate). */
  readonly tickCycles: number;
  readonly pt: PageTables;
  readonly lockdep: Lockdep;
  readonly locks: MmapLocking;
  readonly vmaOps: VmaOps;
  readonly tlb: TlbFlusher;
  readonly workqueue: Workqueue;
  /** The kernel's own mm (kernel threads and idle CPUs with nothing loaded). */
  readonly init_mm: MmStruct;
  /** Character devices by path ("/dev/binder" …). */
  readonly devices = new Map<string, { open(t: Task): File | number | KGen<File | number> }>();
  /** Processes (thread groups) by tgid. */
  readonly groups = new Map<number, ThreadGroup>();
  /** VMAs currently inside a driver's ->mmap hook (the Rust API's VmaNew window). */
  readonly vmaNewWindow = new VmaNewWindow();
  private readonly timers: { at: number; task: Task; wq: WaitQueue }[] = [];
  /** Holders of page references outside page tables (see PageRefHolder). */
  readonly pageRefHolders = new Set<PageRefHolder>();
  /** Every mm_struct not yet freed (the last mmdrop removes it). */
  readonly mms = new Set<MmStruct>();

  constructor(opts: KernelOptions = {}) {
    checkKernelOptions(opts);
    const cpus = opts.cpus ?? 2;
    this.machine = new Machine({
      memoryBytes: opts.memoryBytes ?? 256 << 20,
      cpus,
      ...opts.machine,
      ...(opts.hwCosts ? { cost: opts.hwCosts } : {}),
      ...(opts.clockGhz !== undefined ? { clockGhz: opts.clockGhz } : {}),
    });
    this.options = { pcid: opts.pcid ?? true, smep: opts.smep ?? true, smap: opts.smap ?? true };
    this.debugVm = opts.debugVm ?? false;
    this.costs = parseKernelCosts(opts.costs);
    const hz = opts.hz ?? HZ;
    if (!Number.isFinite(hz) || hz <= 0) throw new RangeError(`hz must be a positive number, got ${String(hz)}`);
    this.tickCycles = Math.max(1, Math.round((this.machine.config.cost.clockGhz * 1e9) / hz));
    this.engine = new DeterministicEngine(this.machine, { seed: opts.seed ?? 1, quantum: opts.quantum ?? 20_000 });
    this.nextTimers = new Float64Array(this.machine.cpus.length);
    this.trace = new Tracer(this, opts.trace ?? false);
    this.pages = new PageAllocator(this.machine.phys, { reservedFrames: 16 });
    this.pages.hooks = {
      currentPid: () => this.current?.pid ?? 0,
      badPage: (pfn, reason) => reportBadPage(this, pfn, reason),
      onAlloc: (pfn, order, gfp) => this.trace.pageAlloc(pfn, order, gfp),
      onFree: (pfn, order) => this.trace.pageFree(pfn, order),
    };
    this.sched = [];
    for (let i = 0; i < cpus; i++) {
      const s = new CpuScheduler(this, i);
      this.sched.push(s);
      this.engine.attach(i, s);
      const cpu = this.machine.cpu(i);
      cpu.onWatch = (hit: WatchHit) => kasanCpuAccess(this, hit);
    }
    this.machine.apic.on(RESCHEDULE_VECTOR, (cpu, msg) => { this.trace.ipiEntry(cpu.index, msg); this.trace.ipiExit(cpu.index, msg); }); // sysvec_reschedule_ipi: scheduler_ipi() has nothing to do here
    this.pt = new PageTables(this);
    this.lockdep = new Lockdep(this);
    this.locks = new MmapLocking(this, this.lockdep);
    this.vmaOps = new VmaOps(this);
    this.workqueue = new Workqueue(this);
    const init = new MmStruct(this);
    this.locks.init(init);
    if (this.pt.pgd_alloc(init) < 0) throw new Error('boot: no memory for init_mm');
    init.mm_users = 1 << 30; // never torn down
    this.init_mm = init;
    this.bootCpus(init.pgd);
    this.tlb = new TlbFlusher(this, init);
  }

  /**
   * Bring the CPUs to the kernel's configuration: CR3 on `rootPa` (the init page tables), then
   * PGE, SMEP/SMAP and (if used) PCIDE.
   */
  bootCpus(rootPa: number): void {
    for (const cpu of this.machine.cpus) {
      check(cpu.writeCr3(BigInt(rootPa)), 'CR3');
      let cr4 = cpu.readCr4() | BigInt(CR4_PGE);
      if (this.options.smep) cr4 |= BigInt(CR4_SMEP);
      if (this.options.smap) cr4 |= BigInt(CR4_SMAP);
      if (this.options.pcid) cr4 |= BigInt(CR4_PCIDE);
      check(cpu.writeCr4(cr4), 'CR4');
    }
  }

  // ---- time and place -------------------------------------------------------------------------

  /** The CPU the running code is on. */
  thisCpu(): number {
    if (this.current) return this.current.cpu;
    if (this.irqCpu >= 0) return this.irqCpu;
    return 0;
  }

  /** Hardware CPU of the running code. */
  cpu(): Cpu {
    return this.machine.cpu(this.thisCpu());
  }

  /** Virtual time on the current CPU, in cycles. */
  now(): number {
    return this.cpu().cycles;
  }

  /** Charge `cycles` of kernel work to the current CPU. */
  charge(cycles: number): void {
    this.cpu().charge(cycles);
  }

  micros(cycles: number): number {
    return cycles / (this.machine.config.cost.clockGhz * 1000);
  }

  // ---- tasks ---------------------------------------------------------------------------------

  /** Tasks not yet dead. */
  liveTasks(): number {
    return this.tasks.size;
  }

  /** Release the lazy reference of a dead mm held by CPU `cpu` (mmdrop via the fork module). */
  mmdrop(mm: MmStruct): void {
    mmdrop(this, mm);
  }

  allocPid(): number {
    return this.nextPid++;
  }

  /** Create a task running `body` and make it runnable on `cpu` at time `at`. */
  createTask(opts: { pid?: number; tgid?: number; comm: string; kthread: boolean; cpu?: number; allowed?: number[] | null }, body: (t: Task) => KGen<number | void>): Task {
    this.checkPlacement(opts.comm, opts.cpu, opts.allowed);
    const pid = opts.pid ?? this.allocPid();
    const t = new Task(pid, opts.tgid ?? pid, opts.comm, opts.kthread, this.ids.task++);
    t.allowed = opts.allowed ?? null;
    const cpu = opts.cpu ?? this.pickCpu(t);
    t.cpu = cpu;
    t.inKernel = opts.kthread ? 1 : 0;
    t.body = body(t);
    this.tasks.set(pid, t);
    const at = this.current ? this.now() : this.machine.cpu(cpu).cycles;
    this.sched[cpu]!.enqueue(t, at);
    return t;
  }

  /**
   * Refuse a CPU or an affinity mask that names no CPU of this machine, before anything is
   * allocated for the task (sched_setaffinity's EINVAL for a mask without an online CPU).
   */
  checkPlacement(comm: string, cpu: number | undefined, allowed: readonly number[] | null | undefined): void {
    const n = this.sched.length;
    const valid = (c: unknown): boolean => Number.isInteger(c) && (c as number) >= 0 && (c as number) < n;
    if (cpu !== undefined && !valid(cpu)) throw new RangeError(`task ${comm}: CPU ${String(cpu)} does not exist (this machine has CPUs 0 to ${n - 1})`);
    if (allowed === null || allowed === undefined) return;
    if (!Array.isArray(allowed) || allowed.length === 0 || !allowed.every(valid)) {
      throw new RangeError(`task ${comm}: the allowed CPUs must be a non-empty list of CPUs 0 to ${n - 1}, got ${JSON.stringify(allowed)}`);
    }
    if (cpu !== undefined && !allowed.includes(cpu)) throw new RangeError(`task ${comm}: CPU ${cpu} is not among its allowed CPUs ${JSON.stringify(allowed)}`);
  }

  /** A CPU for a new task: the allowed CPU with the shortest run queue (lowest index on ties). */
  pickCpu(t: Task): number {
    let best = -1;
    let bestLoad = Infinity;
    for (const s of this.sched) {
      if (t.allowed && !t.allowed.includes(s.index)) continue;
      const load = s.rq.length + (s.curr ? 1 : 0);
      if (load < bestLoad) {
        best = s.index;
        bestLoad = load;
      }
    }
    if (best < 0) throw new RangeError(`task ${t.comm} is allowed on no CPU`);
    return best;
  }

  /**
   * Make a sleeping task runnable on its CPU, no earlier than the waker's clock. A remote idle
   * CPU gets a reschedule IPI, and the task runs there once the IPI is delivered.
   */
  wake(t: Task): void {
    if (t.state !== 'sleeping') return;
    const here = this.thisCpu();
    const at = this.now();
    t.stats.sleepCycles += Math.max(0, at - t.since);
    t.waitingFor = '';
    let target = t.cpu;
    if (t.allowed && !t.allowed.includes(target)) target = this.pickCpu(t);
    const s = this.sched[target]!;
    let wakeAt = at + this.costs.sleepWake;
    if (target !== here && s.curr === null && s.rq.length === 0) {
      const from = this.machine.cpu(here);
      this.trace.ipiSend(target, RESCHEDULE_VECTOR, 'resched_curr', null);
      this.machine.apic.send(from, target, RESCHEDULE_VECTOR);
      wakeAt = Math.max(wakeAt, at + from.cost.ipiLatency + from.cost.ipiHandlerEntry);
    }
    this.charge(this.costs.sleepWake);
    s.enqueue(t, at);
    t.wakeAt = wakeAt;
  }

  /** Called by a CPU's scheduler when it switches tasks. */
  contextSwitch(s: CpuScheduler, prev: Task | null, next: Task): void {
    const cpu = s.hw;
    cpu.charge(this.costs.contextSwitch);
    this.runCpuHooks(this.scheduleHooks, s.index);
    this.trace.schedSwitch(s.index, prev, next);
    const st = this.tlb.cpuState[s.index]!;
    // switch_mm_irqs_off and enter_lazy_tlb run before switch_to: `prev` is still current there
    // (its tlb_flush events are prev's, or the idle task's).
    if (next.mm) {
      this.switchLoadedMm(s.index, next.mm, prev);
      next.active_mm = next.mm;
    } else {
      // A kernel thread borrows whatever is loaded (lazy TLB), unless that mm is dead.
      if (st.loaded_mm !== this.init_mm && st.loaded_mm.mm_users === 0) this.switchLoadedMm(s.index, this.init_mm, prev);
      else this.tlb.enter_lazy_tlb(s.index, prev);
      next.active_mm = st.loaded_mm;
    }
    for (const h of this.switchHooks) h(s.index, prev, next);
    const want = next.inKernel > 0 ? 0 : 3;
    if (cpu.readCpl() !== want) cpu.setCpl(want);
  }

  /**
   * switch_mm with the lazy-TLB reference: a CPU holds an mm_count reference on the mm it has
   * loaded, so the page tables outlive their last user while a CPU may still walk them.
   */
  switchLoadedMm(cpu: number, next: MmStruct, task: Task | null): void {
    const st = this.tlb.cpuState[cpu]!;
    const prev = st.loaded_mm;
    if (prev !== next && next !== this.init_mm) mmgrab(next);
    this.tlb.switch_mm_irqs_off(cpu, next, task);
    if (prev !== next && prev !== this.init_mm) mmdrop(this, prev);
  }

  /** Run per-CPU hooks in interrupt-like context on `cpu` (no current task). */
  runCpuHooks(hooks: readonly ((cpu: number) => void)[], cpu: number): void {
    if (hooks.length === 0) return;
    const saved = this.irqCpu;
    const savedCurrent = this.current;
    this.irqCpu = cpu;
    this.current = null;
    try {
      for (const h of hooks) h(cpu);
    } finally {
      this.irqCpu = saved;
      this.current = savedCurrent;
    }
  }

  /** A CPU has nothing to run: a dead loaded mm is dropped now (see the scheduler). */
  cpuIdle(cpu: number): void {
    this.runCpuHooks(this.scheduleHooks, cpu);
    const st = this.tlb.cpuState[cpu]!;
    if (st.loaded_mm !== this.init_mm && st.loaded_mm.mm_users === 0) this.switchLoadedMm(cpu, this.init_mm, null);
    else this.tlb.enter_lazy_tlb(cpu, null);
  }

  /**
   * What each idle CPU's next context switch would do with a dead mm it still has loaded: drop it
   * and its lazy-TLB mm_count reference (finish_task_switch's mmdrop_lazy_tlb). Linux keeps such
   * an mm until the CPU runs something else; a run that ends with every task gone calls this
   * before counting leaked mm_structs and frames, so that reference is not taken for a leak.
   * Returns the number of CPUs that dropped one.
   */
  dropDeadLazyMms(): number {
    let dropped = 0;
    for (let cpu = 0; cpu < this.machine.cpuCount; cpu++) {
      const st = this.tlb.cpuState[cpu]!;
      if (this.sched[cpu]!.curr !== null || st.loaded_mm === this.init_mm || st.loaded_mm.mm_users !== 0) continue;
      this.switchLoadedMm(cpu, this.init_mm, null);
      dropped++;
    }
    return dropped;
  }

  /** A task returned from its body. */
  taskExited(t: Task, code: number): void {
    t.exitCode = code;
    t.state = 'dead';
    for (const f of t.onExit) f(t);
    this.tasks.delete(t.pid);
  }

  /** A task's body threw: an oops (KernelBug) or an internal error. */
  taskCrashed(t: Task, e: unknown): void {
    if (e instanceof KernelBug) {
      t.killedBy = e.report;
      const g = groupOf(t);
      if (g) {
        g.threads.delete(t);
        if (g.threads.size === 0) {
          g.exitCode = 128 + 9;
          const parent = this.groups.get(g.parentPid);
          if (parent) {
            parent.zombies.set(g.tgid, g.exitCode);
            parent.exited.wakeAll(this);
          }
          g.exited.wakeAll(this);
          this.groups.delete(g.tgid);
        }
      }
      this.taskExited(t, 128 + 9);
      return;
    }
    // Anything else is a bug in mmulab itself: stop the run loudly.
    throw e;
  }

  // ---- processes -------------------------------------------------------------------------------

  /**
   * Start a new process running `program` (as init would exec it): a fresh address space and an
   * empty file table. Returns its main thread.
   */
  spawn(program: Program, opts: { comm?: string; cpu?: number; allowed?: number[] | null } = {}): Task {
    if (typeof program !== 'function') throw new TypeError('spawn: a program is a generator function (u) => …');
    this.checkPlacement(opts.comm ?? (program.name || 'prog'), opts.cpu, opts.allowed);
    const mm = mm_alloc(this);
    if (!mm) {
      // As fork or exec would fail: ENOMEM, which a caller (the fuzzer's init) may expect.
      const e = new SyscallError('spawn', ENOMEM);
      e.message = 'spawn: ENOMEM (out of memory for a new address space)';
      throw e;
    }
    return this.startProcess(program, { comm: opts.comm ?? (program.name || 'prog'), mm, files: new FdTable(), parent: 0, cpu: opts.cpu, allowed: opts.allowed ?? null });
  }

  /** The process part of fork/spawn: a new thread group and its main thread. */
  startProcess(program: Program, o: { comm: string; mm: MmStruct; files: FdTable; parent: number; cpu: number | undefined; allowed: number[] | null }): Task {
    const pid = this.allocPid();
    const g = new ThreadGroup(pid, o.files);
    g.parentPid = o.parent;
    this.groups.set(pid, g);
    this.groups.get(o.parent)?.children.add(pid);
    o.mm.owner = null;
    const comm = o.comm.slice(0, 15);
    const run = this.programHook !== null ? this.programHook(program, { tgid: pid, comm, thread: false }) : program;
    const t = this.createTask({ pid, tgid: pid, comm, kthread: false, cpu: o.cpu, allowed: o.allowed }, (task) => this.userBody(task, run));
    t.mm = o.mm;
    o.mm.owner = t;
    t.ext.set('group', g);
    g.threads.add(t);
    return t;
  }

  /** A new thread in process `g` (clone with CLONE_VM): the caller took the mm reference. */
  startThread(g: ThreadGroup, program: Program, o: { comm: string; mm: MmStruct; cpu?: number }): Task {
    const comm = o.comm.slice(0, 15);
    const run = this.programHook !== null ? this.programHook(program, { tgid: g.tgid, comm, thread: true }) : program;
    const t = this.createTask({ tgid: g.tgid, comm, kthread: false, cpu: o.cpu }, (task) => this.userBody(task, run));
    t.mm = o.mm;
    t.ext.set('group', g);
    g.threads.add(t);
    return t;
  }

  /** Run a program in user mode, then exit; signals and program errors end the process. */
  private *userBody(task: Task, program: Program): KGen<number> {
    const u = new User(this, task);
    let code = 0;
    try {
      const r = yield* program(u);
      code = typeof r === 'number' ? r : 0;
    } catch (e) {
      if (e instanceof ExitRequest) code = e.code;
      else if (e instanceof SignalError) {
        reportFatalSignal(this, task, e);
        code = 128 + e.signo;
      } else if (e instanceof KernelBug) throw e;
      else {
        const msg = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
        this.report({ kind: 'signal', title: `${task.comm}[${task.pid}]: program error: ${msg}`, text: `${task.comm}[${task.pid}]: the program threw ${msg}\nkilled (SIGABRT)`, pid: task.pid, comm: task.comm, data: { error: msg } });
        code = 128 + 6;
      }
    }
    return yield* do_exit(this, task, code);
  }

  /** Start a kernel thread. */
  kthread(comm: string, body: () => KGen<number | void>, cpu?: number): Task {
    return this.createTask({ comm, kthread: true, cpu }, body);
  }

  /** Sleep the current task for `cycles` of virtual time. */
  *sleepFor(cycles: number): KGen {
    const t = this.current!;
    const wq = new WaitQueue('hrtimer_nanosleep');
    const timer = { at: this.now() + cycles, task: t, wq };
    // Kept in (expiry, task serial) order: insert after every timer that sorts before it.
    const timers = this.timers;
    let lo = 0;
    let hi = timers.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const x = timers[mid]!;
      if (x.at < timer.at || (x.at === timer.at && x.task.serial <= t.serial)) lo = mid + 1;
      else hi = mid;
    }
    timers.splice(lo, 0, timer);
    this.timersChanged();
    yield* wq.sleep(this, 'hrtimer_nanosleep');
  }

  /**
   * Per CPU, its earliest timer (nextTimer), computed for all CPUs at once when first asked after
   * a change: the schedulers ask for every idle CPU at every step.
   */
  private readonly nextTimers: Float64Array;
  private nextTimersValid = false;

  /** The timers, or the CPU of a task that may own one, changed (nextTimer must look again). */
  timersChanged(): void {
    this.nextTimersValid = false;
  }

  /** The earliest timer of a task on `cpu`, or Infinity. */
  nextTimer(cpu: number): number {
    const next = this.nextTimers;
    if (!this.nextTimersValid) {
      next.fill(Infinity);
      // In expiry order, so the first timer seen for a CPU is its earliest.
      for (const x of this.timers) if (next[x.task.cpu] === Infinity) next[x.task.cpu] = x.at;
      this.nextTimersValid = true;
    }
    return next[cpu]!;
  }

  /** Fire the timers of tasks on `cpu` that expired by `now`. */
  fireTimers(cpu: number, now: number): void {
    this.trace.schedOut(cpu, now); // the scheduler calls this once the CPU's task has left it
    if (this.nextTimer(cpu) > now) return;
    for (let i = 0; i < this.timers.length; ) {
      const x = this.timers[i]!;
      if (x.task.cpu === cpu && x.at <= now) {
        this.timers.splice(i, 1);
        this.timersChanged();
        const saved = this.irqCpu;
        this.irqCpu = cpu;
        try {
          x.wq.wakeAll(this);
        } finally {
          this.irqCpu = saved;
        }
      } else i++;
    }
  }

  hasTimers(): boolean {
    return this.timers.length > 0;
  }

  // ---- contracts ---------------------------------------------------------------------------------

  /** Invariants of VMA flags Linux relies on (checked where flags change). */
  checkVmaFlags(vma: VmArea, caller: string): void {
    const f = vma.vm_flags;
    if ((f & (VM_MIXEDMAP | VM_PFNMAP)) === (VM_MIXEDMAP | VM_PFNMAP)) {
      this.bug('kernel BUG: VM_MIXEDMAP and VM_PFNMAP both set', `VM_BUG_ON_VMA((vma->vm_flags & (VM_PFNMAP|VM_MIXEDMAP)) == (VM_PFNMAP|VM_MIXEDMAP)) for ${vma} (${caller})`, { vma: vma.id, caller, contract: 'mixedmap-pfnmap' });
    }
    if (f & VM_WRITE && !(f & VM_MAYWRITE)) {
      this.warn('WARNING: VM_WRITE without VM_MAYWRITE', `VM_WARN_ON_ONCE(vma->vm_flags & VM_WRITE && !(vma->vm_flags & VM_MAYWRITE)) for ${vma} (${caller})`, { vma: vma.id, caller, contract: 'write-maywrite' });
    }
  }

  // ---- reports -------------------------------------------------------------------------------

  /** File a report (with the current task and CPU filled in). */
  report(r: Omit<Report, 'cpu' | 'cycles' | 'pid' | 'comm'> & Partial<Pick<Report, 'pid' | 'comm'>>): Report {
    const t = this.current;
    return this.reports.add({ cpu: this.thisCpu(), cycles: this.now(), pid: r.pid ?? t?.pid, comm: r.comm ?? t?.comm, ...r });
  }

  /** BUG(): report and abort the current kernel operation (the task dies). */
  bug(title: string, text: string, data: Record<string, unknown> = {}): never {
    const rep = this.report({ kind: 'BUG', title, text, data });
    throw new KernelBug(rep);
  }

  /** WARN(): report and continue. */
  warn(title: string, text: string, data: Record<string, unknown> = {}): Report {
    return this.report({ kind: 'WARN', title, text, data });
  }

  // ---- running -------------------------------------------------------------------------------

  /** Run the system until every task has finished (or a limit is reached). */
  run(limits: RunLimits = {}): RunResult {
    // A scheduler whose CPU went quiet earlier may have new work now.
    for (const s of this.sched) if (this.engine.status(s.index) === 'done') this.engine.attach(s.index, s);
    if (!this.debugVm) return this.engine.run(limits);
    return this.runChecked(limits);
  }

  /**
   * Run the system on the parallel engine (kernel/sched/parallel.ts): the kernel on this thread,
   * user-mode access streams on worker threads. Not reproducible by seed.
   */
  runParallel(limits: RunLimits = {}, options: ParallelRunOptions = {}): RunResult {
    return runParallel(this, limits, options);
  }

  /** run() or runParallel() by the engine's name (what a command's --engine chooses). */
  runOn(engine: KernelEngine, limits: RunLimits = {}): RunResult {
    if (engine === 'parallel') return this.runParallel(limits);
    if (engine === 'deterministic') return this.run(limits);
    throw new EngineError(`unknown engine "${String(engine)}" (known: deterministic, parallel)`);
  }

  /** Checking mode (KernelOptions.debugVm): the violations already filed, so each is filed once. */
  private readonly vmViolations = new Set<string>();

  /** run() in checking mode: one engine step at a time, the mm audit after each. */
  private runChecked(limits: RunLimits): RunResult {
    checkRunLimits(limits);
    let steps = 0;
    for (;;) {
      if (limits.maxSteps !== undefined && steps >= limits.maxSteps) return { steps, reason: 'maxSteps' };
      const r = this.engine.run(limits.untilCycles !== undefined ? { untilCycles: limits.untilCycles, maxSteps: 1 } : { maxSteps: 1 });
      steps += r.steps;
      if (r.steps > 0) this.checkVmStep();
      if (r.reason !== 'maxSteps') return { steps, reason: r.reason };
    }
  }

  /**
   * Audit the mm state after a step; file each new violation as a BUG report. Only at steps where
   * no task is in the middle of a kernel operation (every task is in user mode, or asleep holding
   * no lock: in a wait, a sleep, on a wait queue): in the middle of one the books may be half
   * updated — a page table accounted but not yet linked, say — where Linux's locks would keep
   * any observer out. A violation is thus reported at the first such step after the one that
   * made it.
   */
  private checkVmStep(): void {
    for (const t of this.tasks.values()) {
      if (t.state === 'dead' || (t.mm !== null && t.inKernel === 0)) continue;
      if (t.state !== 'sleeping' || (t.lockdepHeld !== null && t.lockdepHeld.length > 0)) return;
    }
    const r = check_vm_invariants(this, { limit: 20 });
    if (r.ok) return;
    const fresh = r.problems.filter((p) => !this.vmViolations.has(p));
    if (!fresh.length) return;
    for (const p of fresh) this.vmViolations.add(p);
    const where = `after engine step ${this.engine.steps} (CPU ${this.engine.lastPick})`;
    this.reports.add({ kind: 'BUG', title: `BUG: mm invariant violated ${where}: ${fresh[0]}`, text: fresh.map((p) => `  ${p}`).join('\n'), cpu: Math.max(0, this.engine.lastPick), cycles: this.machine.cpu(Math.max(0, this.engine.lastPick)).cycles, data: { check: 'debug_vm', step: this.engine.steps, problems: fresh } });
  }

  subsystem<T>(name: string): T {
    const s = this.subsystems.get(name);
    if (s === undefined) throw new Error(`kernel subsystem "${name}" is not initialised`);
    return s as T;
  }
}

function check(r: { ok: boolean; reason?: string }, what: string): void {
  if (!r.ok) throw new Error(`boot: writing ${what} failed: ${r.reason}`);
}

/** Tracks the VMAs inside a driver's ->mmap hook (where VmaNew and flag initialisation are legal). */
export class VmaNewWindow {
  private readonly open_ = new Set<VmArea>();
  open(v: VmArea): void {
    this.open_.add(v);
  }
  close(v: VmArea): void {
    this.open_.delete(v);
  }
  isOpen(v: VmArea): boolean {
    return this.open_.has(v);
  }
}
