/**
 * hw/engine.ts — the deterministic engine: one thread simulates every CPU of a machine.
 *
 * Each CPU has its own virtual clock (cycles, charged by the cost model). An agent — an access
 * stream, a test script, or (above hw/) the kernel's per-CPU scheduler — drives each CPU. The
 * engine repeatedly picks the next event in virtual time: the runnable CPU with the smallest
 * clock, or an IPI becoming visible on a CPU that is idle or waiting. Ties are broken by a seeded
 * generator (or by a caller-supplied chooser, for systematic exploration of interleavings). With
 * the `window` option (default 0: exact ties only) every event within `window` cycles of the
 * earliest one is a candidate too, so an explorer (kernel/sched/explore.ts) can let CPUs overtake
 * each other by up to that much virtual time; see EngineOptions.window for what that relaxes. A
 * runnable CPU then runs for one quantum of virtual time, ending early at the first access
 * boundary after one of its pending IPIs becomes visible, so interrupts are taken where the
 * hardware would take them. The same seed and agents give byte-identical machine state.
 *
 * Granularity: the quantum (in cycles) is a setting. Large quanta are fast (as QEMU runs a
 * translated block at a time); a quantum of 1 cycle makes every access its own turn, for
 * exploring races. A CPU never runs further ahead of any other live CPU than one IPI latency
 * (the conservative lookahead of parallel discrete-event simulation), so every IPI is taken at
 * the first access boundary after it becomes visible. Plain memory (page-table writes seen by
 * another CPU's walker) is ordered only to within a quantum.
 *
 * Cost of a step: the CPUs' event times are kept in two minimum trees (all CPUs; the live ones,
 * for the lookahead), and within one run() only the CPU stepped last is looked at again, plus any
 * CPU that is neither running nor parked: a running CPU's clock moves only in its own step, and a
 * parked agent (a finished one, or Agent.parked: an idle kernel CPU) stays as it is until an IPI
 * is sent to it or EngineContext.recheck names it. So a step costs O(log CPUs), not O(CPUs),
 * with the same choices a full scan would make.
 *
 * Timed agents: an agent that waits for a time of its own (Agent.wakeAt: a kernel CPU idle until
 * a sleeper's timer, or running a task that computes until some time) is one event at that time,
 * not a clock advanced one lookahead at a time; it counts for the lookahead from that time only
 * (it sends nothing before), and IPIs sent to it meanwhile are taken when they become visible.
 * With hundreds of CPUs mostly idle or computing, that is most of the steps saved.
 */

import type { Machine } from './machine.ts';
import type { Cpu } from './cpu.ts';
import { Random } from './random.ts';
import { toVa, vaFromHalves, type LinearAddress } from './address.ts';
import { KIND_CODES, type AccessKind } from './cpu.ts';

export type AgentStatus = 'run' | 'wait' | 'done';

export interface EngineContext {
  readonly machine: Machine;
  readonly rng: Random;
  /** Scheduling steps taken so far. */
  readonly steps: number;
  /** Something of another CPU's making may have readied CPU `index`'s parked agent (Agent.parked). */
  recheck(index: number): void;
}

/** Something that drives one CPU. */
export interface Agent {
  /**
   * Run on `cpu` until its clock reaches `until` (then return 'run'), or until it must wait for
   * something another CPU does ('wait'), or until it has nothing left to do ('done').
   */
  step(cpu: Cpu, until: number, ctx: EngineContext): AgentStatus;
  /** For a waiting agent: may it run again? Without it, a waiting agent is retried each round. */
  ready?(cpu: Cpu, ctx: EngineContext): boolean;
  /**
   * For a waiting agent that is not ready: is it merely idle, with nothing anywhere that could
   * give it work? When every waiting agent is quiescent and nothing can run, the run is over;
   * otherwise it is a deadlock.
   */
  quiescent?(cpu: Cpu, ctx: EngineContext): boolean;
  /** A line describing what the agent waits for (for deadlock reports). */
  describe?(cpu: Cpu): string;
  /**
   * For a waiting agent that is not ready: will it stay so until EngineContext.recheck names its
   * CPU or an IPI is sent to it? Then the engine stops asking ready() at every step. Without it,
   * a waiting agent is asked at every step.
   */
  parked?(cpu: Cpu, ctx: EngineContext): boolean;
  /**
   * For a waiting agent that is not ready: the virtual time at which it will be ready by itself
   * (a timer expiring, a computation ending), or Infinity. Until then it stays as it is unless
   * EngineContext.recheck names its CPU or an IPI is sent to it, and it sends nothing: the engine
   * keeps it out of the lookahead until that time, takes its IPIs when they become visible, and
   * steps it once, at that time, instead of advancing an idle or computing CPU's clock in steps.
   */
  wakeAt?(cpu: Cpu, ctx: EngineContext): number;
}

export interface EngineOptions {
  /** Seed of the scheduler's tie-breaking and jitter. */
  seed?: number;
  /** Quantum in cycles (default 20,000 ≈ 6.7 µs at 3 GHz). */
  quantum?: number;
  /** Random extra quantum length, 0..jitter cycles (default 0). */
  jitter?: number;
  /**
   * Choice window in cycles (default 0). 0: only events at exactly the earliest time compete
   * (the default, and the fast path). W > 0: every event at most W cycles after the earliest one
   * is a candidate for the chooser, so a CPU may run while another one's clock is up to W cycles
   * behind it. Infinity: any CPU that can do something may be chosen at every step (pure
   * interleaving exploration). Relaxation: a window below the IPI latency keeps every interrupt
   * on time; a wider one may let a CPU pass the visible time of an IPI still to be sent to it,
   * which it then takes at its next access boundary (late in virtual time, never lost). For
   * exploring races with a quantum of 1; experiments keep 0.
   */
  window?: number;
}

export interface RunLimits {
  /** Stop once every runnable CPU's clock reaches this many cycles. */
  untilCycles?: number;
  /** Stop after this many scheduling steps. */
  maxSteps?: number;
}

/** Reject limits that are unknown or not non-negative numbers (a typo must not mean "no limit"). */
export function checkRunLimits(limits: RunLimits): void {
  if (typeof limits !== 'object' || limits === null) throw new EngineError('run limits must be an object');
  for (const [key, v] of Object.entries(limits)) {
    if (key !== 'untilCycles' && key !== 'maxSteps') throw new EngineError(`unknown run limit "${key}" (known: untilCycles, maxSteps)`);
    if (v !== undefined && (typeof v !== 'number' || !(v >= 0))) throw new EngineError(`run limit ${key} must be a non-negative number, got ${String(v)}`);
  }
}

export interface RunResult {
  steps: number;
  /** Why the run ended. */
  reason: 'done' | 'until' | 'maxSteps';
}

export class EngineError extends Error {
  constructor(
    message: string,
    /** Scheduling steps the run had taken when it stopped with this error, where known. */
    readonly steps?: number,
  ) {
    super(message);
    this.name = 'EngineError';
  }
}

/** A decision point: the events that could happen next, all at the same earliest time. */
export interface Choice {
  /** CPU indices of the candidates, in increasing order. */
  cpus: number[];
  /** The earliest candidate's time. */
  time: number;
  /** Each candidate's event time (only with a window > 0; all equal to `time` otherwise). */
  times?: number[];
  /** The CPU chosen at the previous step (-1 before the first), for preemption-bounded explorers. */
  previous: number;
}

/** Chooses among simultaneous events; returns an index into `choice.cpus`. */
export type Chooser = (choice: Choice, rng: Random) => number;

interface Slot {
  agent: Agent | null;
  status: AgentStatus;
}

// What a CPU's next event is (DeterministicEngine.eventKind).
/** Running, or resuming after a wait. */
const EV_RUN = 0;
/** An idle or waiting CPU takes its pending IPIs, all at once, each at its visible time. */
const EV_IPIS = 1;
/** A timed agent's wake-up (Agent.wakeAt). */
const EV_WAKE = 2;
/** A timed agent takes its oldest IPI, visible before its wake-up. */
const EV_IPI = 3;

export class DeterministicEngine implements EngineContext {
  readonly rng: Random;
  readonly quantum: number;
  readonly jitter: number;
  steps = 0;
  /** Set to explore interleavings systematically; default: seeded uniform choice. */
  chooser: Chooser = (c, rng) => (c.cpus.length === 1 ? 0 : rng.below(c.cpus.length));
  /** The choice window in cycles (see EngineOptions.window); may be changed between steps. */
  window: number;
  /** The CPU chosen at the latest step (-1 before the first). */
  lastPick = -1;
  private readonly slots: Slot[];
  /** Per CPU, its event time at the last scheduling decision (Infinity: nothing to do). */
  private readonly times: Float64Array;
  /** Per CPU, what its event at the last scheduling decision was (EV_RUN, EV_IPIS, EV_WAKE, EV_IPI). */
  private readonly eventKind: Uint8Array;
  /** Per CPU, whether its agent's status was 'run' when its event time was last computed. */
  private readonly running: Uint8Array;
  /**
   * Per CPU, whether its agent waits settled since its event time was computed: parked
   * (Agent.parked: no event until a recheck or an IPI) or timed (Agent.wakeAt: its wake-up).
   */
  private readonly parked: Uint8Array;
  /**
   * The unsettled CPUs (neither running nor settled, or rechecked since): looked at again at the
   * next step. A list with membership flags, and a spare list the next scan fills.
   */
  private unsettledList: Int32Array;
  private spareList: Int32Array;
  private unsettledCount = 0;
  private readonly listed: Uint8Array;
  /**
   * Minimum trees (see setLeaf) over the CPUs' event times: of every CPU (the next event and its
   * ties), and of the live ones only (the lookahead). Updated as event times are recomputed, so a
   * step costs O(log CPUs) for the CPUs whose times did not change.
   */
  private readonly evTree: Float64Array;
  private readonly liveTree: Float64Array;
  /** Virtual time of the latest scheduling decision (the chosen event's time; never decreases). */
  private now = 0;

  constructor(
    readonly machine: Machine,
    options: EngineOptions = {},
  ) {
    const quantum = options.quantum ?? 20_000;
    if (!Number.isFinite(quantum) || quantum < 1) throw new EngineError(`quantum must be at least 1 cycle, got ${String(options.quantum)}`);
    const jitter = options.jitter ?? 0;
    if (!Number.isFinite(jitter) || jitter < 0) throw new EngineError(`jitter must be a non-negative number of cycles, got ${String(options.jitter)}`);
    const window = options.window ?? 0;
    if (typeof window !== 'number' || !(window >= 0)) throw new EngineError(`window must be a non-negative number of cycles, got ${String(options.window)}`);
    this.quantum = quantum;
    this.jitter = jitter;
    this.window = window;
    this.rng = new Random(options.seed ?? 1);
    this.slots = machine.cpus.map(() => ({ agent: null, status: 'done' as AgentStatus }));
    this.eventKind = new Uint8Array(machine.cpus.length);
    this.running = new Uint8Array(machine.cpus.length);
    this.parked = new Uint8Array(machine.cpus.length);
    this.unsettledList = new Int32Array(machine.cpus.length);
    this.spareList = new Int32Array(machine.cpus.length);
    this.listed = new Uint8Array(machine.cpus.length);
    machine.apic.onSend = this.onSend;
    this.evTree = minTree(machine.cpus.length);
    this.liveTree = minTree(machine.cpus.length);
    this.times = new Float64Array(machine.cpus.length);
    machine.apic.timed = true;
  }

  /**
   * The APIC's send hook: an IPI readies its target's parked agent. Claimed again by every full
   * scan (the first step of each run, every step() called alone), so of several engines built on
   * one machine, the one running owns it; sends while none runs are covered by that scan.
   */
  private readonly onSend = (target: number): void => this.recheck(target);

  recheck(index: number): void {
    if (this.parked[index] === 1) {
      this.parked[index] = 0;
      this.list(index);
    }
  }

  /** Give CPU `index` an agent to run. */
  attach(index: number, agent: Agent): void {
    this.machine.cpu(index);
    if (typeof agent?.step !== 'function') throw new EngineError('an agent needs a step(cpu, until, ctx) method');
    this.slots[index] = { agent, status: 'run' };
    this.reuseScan = false;
  }

  status(index: number): AgentStatus {
    return this.slots[index]!.status;
  }

  /** Every agent is done and no IPI is pending. */
  get finished(): boolean {
    return this.slots.every((s) => s.status === 'done') && this.machine.cpus.every((c) => this.machine.apic.pending(c) === 0);
  }

  /**
   * May the next step reuse the previous scan's event times? Only between the steps of one run():
   * there nothing but the steps themselves touches the CPUs, and a CPU that was running at the
   * previous scan and was not the one chosen still has the clock found then (only a CPU's own
   * step moves its clock). Reading every CPU's clock again is most of a step's cost with
   * hundreds of CPUs.
   */
  private reuseScan = false;

  /** Take one scheduling step. Returns false when nothing can happen any more. */
  step(): boolean {
    const cached = this.reuseScan;
    this.reuseScan = false;
    return this.stepWith(cached);
  }

  /** Compute CPU i's event time (and what the event is) afresh. */
  private rescan(i: number): void {
    const cpu = this.machine.cpus[i]!;
    const apic = this.machine.apic;
    const slot = this.slots[i]!;
    const running = this.running;
    const parked = this.parked;
    let t = Infinity;
    let kind = EV_RUN;
    const agent = slot.agent!;
    const runnable = slot.status === 'run' || (slot.status === 'wait' && (agent.ready ? agent.ready(cpu, this) : true));
    running[i] = slot.status === 'run' ? 1 : 0;
    // A waiting agent that is ready again was readied by an action of an earlier turn, taken
    // at that turn's time or later: it resumes then, not at the clock it stopped with (which
    // the lookahead below ignored while it waited).
    const clock = cpu.cycles;
    // A timed agent's wake-up: it sends nothing before, so it is live from then on.
    const due = !runnable && slot.status === 'wait' && agent.wakeAt !== undefined ? agent.wakeAt(cpu, this) : Infinity;
    if (runnable) {
      t = clock;
      if (slot.status === 'wait' && clock < this.now) cpu.cycles = t = this.now;
    } else if (apic.pending(cpu) > 0) {
      if (due === Infinity) {
        // Taken all at once (deliver with force), each at its visible time.
        t = Math.max(clock, apic.nextVisible(cpu));
        kind = EV_IPIS;
      } else {
        // A timed agent takes them one by one, in order, as they become visible.
        const v = Math.max(clock, apic.headVisible(cpu));
        kind = v < due ? EV_IPI : EV_WAKE;
        t = kind === EV_IPI ? v : Math.max(clock, due);
      }
    } else if (due < Infinity) {
      t = Math.max(clock, due);
      kind = EV_WAKE;
    }
    this.eventKind[i] = kind;
    // Settled: no event until an IPI or a recheck (a finished agent, or a waiting one that says
    // so), or none but its own wake-up.
    parked[i] = !runnable && (kind === EV_RUN || kind === EV_WAKE) && (slot.status === 'done' || (slot.status === 'wait' && (kind === EV_WAKE || (agent.parked !== undefined && agent.parked(cpu, this))))) ? 1 : 0;
    if (running[i] === 0 && parked[i] === 0) this.list(i);
    this.times[i] = t;
    setLeaf(this.evTree, i, t);
    setLeaf(this.liveTree, i, runnable ? t : due);
  }

  /** Put CPU i on the unsettled list (looked at again at the next step). */
  private list(i: number): void {
    if (this.listed[i] === 1) return;
    this.listed[i] = 1;
    this.unsettledList[this.unsettledCount++] = i;
  }

  private stepWith(cached: boolean): boolean {
    const apic = this.machine.apic;
    const cpus = this.machine.cpus;
    const times = this.times;
    const eventKind = this.eventKind;
    const ev = this.evTree;
    const n = cpus.length;
    const last = this.lastPick;
    if (!cached) {
      apic.onSend = this.onSend;
      this.listed.fill(0);
      this.unsettledCount = 0;
      for (let i = 0; i < n; i++) this.rescan(i);
    } else {
      // Event times unchanged but for the CPU stepped last and the unsettled ones: a running CPU
      // not stepped, or a settled one not rechecked, is as the last scan found it.
      const list = this.unsettledList;
      const m = this.unsettledCount;
      this.unsettledList = this.spareList;
      this.spareList = list;
      this.unsettledCount = 0;
      const lastListed = last >= 0 && this.listed[last] === 1;
      for (let j = 0; j < m; j++) this.listed[list[j]!] = 0;
      if (last >= 0 && !lastListed) this.rescan(last);
      for (let j = 0; j < m; j++) this.rescan(list[j]!);
    }
    const best = ev[1]!;
    // The exact ties, in CPU order: usually one CPU (found in O(log CPUs)); with ties, the
    // subtrees holding the minimum.
    let cands: number[] = [];
    if (best !== Infinity) {
      const first = firstLeafOf(ev, best);
      if (minExcept(ev, first) !== best) cands = [first];
      else leavesOf(ev, best, cands);
    }
    if (cands.length === 0) {
      const stuck = this.slots.map((s, i) => (s.status === 'wait' && !(s.agent!.quiescent && s.agent!.quiescent(cpus[i]!, this)) ? i : -1)).filter((i) => i >= 0);
      if (stuck.length > 0) {
        const why = stuck.map((i) => `CPU ${i}${this.slots[i]!.agent!.describe ? ': ' + this.slots[i]!.agent!.describe!(cpus[i]!) : ''}`);
        throw new EngineError(`deadlock: nothing can run and ${why.join('; ')} waits`);
      }
      return false;
    }
    let candTimes: number[] | undefined;
    if (this.window > 0) {
      // Widen the choice to every event within the window (in CPU order, like the exact ties).
      const limit = best + this.window;
      cands = [];
      candTimes = [];
      for (let i = 0; i < n; i++) {
        const t = times[i]!;
        if (t === Infinity || t > limit) continue;
        cands.push(i);
        candTimes.push(t);
      }
    }
    const pick = cands.length === 1 ? 0 : this.chooser(candTimes ? { cpus: cands, time: best, times: candTimes, previous: this.lastPick } : { cpus: cands, time: best, previous: this.lastPick }, this.rng);
    if (!Number.isInteger(pick) || pick < 0 || pick >= cands.length) throw new EngineError(`chooser returned ${pick} for ${cands.length} candidates`);
    const i = cands[pick]!;
    const cpu = cpus[i]!;
    this.steps++;
    this.lastPick = i;
    const chosenTime = candTimes ? candTimes[pick]! : best;
    if (chosenTime > this.now) this.now = chosenTime;
    const kind = eventKind[i]!;
    if (kind === EV_IPIS) {
      // An idle or waiting CPU takes the interrupt when it becomes visible.
      apic.deliver(cpu, true);
      return true;
    }
    // A timed agent's CPU idled or computed until now: it takes the IPIs visible by then, and
    // at its wake-up it runs.
    if (kind !== EV_RUN && cpu.cycles < chosenTime) cpu.cycles = chosenTime;
    if (kind === EV_IPI) {
      apic.deliver(cpu, false);
      return true;
    }
    const slot = this.slots[i]!;
    apic.deliver(cpu, false);
    let until = cpu.cycles + this.quantum + (this.jitter > 0 ? this.rng.below(Math.floor(this.jitter) + 1) : 0);
    // Messages are taken in order: the next one can be taken once the oldest is visible.
    if (apic.pending(cpu) > 0) until = Math.min(until, apic.headVisible(cpu));
    // Lookahead: another CPU can reach this one only by an IPI, which is not visible before its
    // send time plus the IPI latency. Running no further than that keeps every interrupt on time.
    // CPUs that are done, or waiting and not ready, cannot send until another CPU's action
    // readies them — and their clock then moves to that action's time — so they do not count;
    // a timed one counts from its wake-up. The event time of a running CPU is its clock: only
    // the chosen CPU's own actions (above, and its step) move a clock between the scan and here.
    // The earliest live CPU other than this one:
    const horizon = minExcept(this.liveTree, i) + cpu.cost.ipiLatency;
    if (horizon < until) until = horizon;
    if (until <= cpu.cycles) until = cpu.cycles + 1;
    slot.status = slot.agent!.step(cpu, until, this);
    if (slot.status !== 'run' && slot.status !== 'wait' && slot.status !== 'done') throw new EngineError(`agent on CPU ${i} returned status ${String(slot.status)}`);
    return true;
  }

  /**
   * Has every CPU that could do something reached `cycles`? A waiting agent that is ready again
   * counts too, at the time it would resume (the engine's current time, see step()); so does a
   * CPU with nothing to run but an IPI to take, at the time the IPI becomes visible, and a timed
   * agent (Agent.wakeAt), at its wake-up.
   */
  private reached(cycles: number): boolean {
    const cpus = this.machine.cpus;
    const apic = this.machine.apic;
    return this.slots.every((s, i) => {
      const cpu = cpus[i]!;
      if (s.status === 'run') return cpu.cycles >= cycles;
      if (s.status === 'wait' && (s.agent!.ready ? s.agent!.ready(cpu, this) : true)) return Math.max(cpu.cycles, this.now) >= cycles;
      const due = s.status === 'wait' && s.agent!.wakeAt !== undefined ? s.agent!.wakeAt(cpu, this) : Infinity;
      if (due < cycles) return false;
      if (apic.pending(cpu) > 0) return Math.max(cpu.cycles, apic.nextVisible(cpu)) >= cycles;
      return true;
    });
  }

  /** Run until every agent is done (or a limit is reached). */
  run(limits: RunLimits = {}): RunResult {
    checkRunLimits(limits);
    const start = this.steps;
    // The first step reads every CPU afresh, and so does any step after the run returns: the
    // caller may have changed any of them in between.
    this.reuseScan = false;
    try {
      for (;;) {
        if (limits.maxSteps !== undefined && this.steps - start >= limits.maxSteps) return { steps: this.steps - start, reason: 'maxSteps' };
        if (limits.untilCycles !== undefined && this.reached(limits.untilCycles)) return { steps: this.steps - start, reason: 'until' };
        if (!this.step()) return { steps: this.steps - start, reason: 'done' };
        this.reuseScan = true;
      }
    } finally {
      this.reuseScan = false;
    }
  }
}

// ==============================================================================================
// Minimum trees: a complete binary tree in a Float64Array, node k with children 2k and 2k + 1,
// the leaves (one per CPU, padded with Infinity to a power of two) from index `leaves` = half
// the length; node 1 holds the minimum of all.
// ==============================================================================================

function minTree(n: number): Float64Array {
  let leaves = 1;
  while (leaves < n) leaves *= 2;
  return new Float64Array(2 * leaves).fill(Infinity);
}

function setLeaf(tree: Float64Array, i: number, v: number): void {
  let k = (tree.length >> 1) + i;
  if (tree[k] === v) return;
  tree[k] = v;
  for (k >>= 1; k >= 1; k >>= 1) {
    const m = Math.min(tree[2 * k]!, tree[2 * k + 1]!);
    if (tree[k] === m) break;
    tree[k] = m;
  }
}

/** The first leaf holding `v`, the minimum of the whole tree. */
function firstLeafOf(tree: Float64Array, v: number): number {
  const leaves = tree.length >> 1;
  let k = 1;
  while (k < leaves) k = tree[2 * k] === v ? 2 * k : 2 * k + 1;
  return k - leaves;
}

/** Every leaf holding `v`, the minimum of the whole tree, in index order, appended to `out`. */
function leavesOf(tree: Float64Array, v: number, out: number[]): void {
  const leaves = tree.length >> 1;
  const stack = LEAF_STACK;
  let sp = 0;
  stack[sp++] = 1;
  while (sp > 0) {
    const k = stack[--sp]!;
    if (tree[k] !== v) continue;
    if (k >= leaves) {
      out.push(k - leaves);
      continue;
    }
    stack[sp++] = 2 * k + 1;
    stack[sp++] = 2 * k;
  }
}

/** leavesOf's stack: depth-first, at most one pending right sibling per level plus one. */
const LEAF_STACK = new Int32Array(64);

/** The minimum over every leaf but leaf i. */
function minExcept(tree: Float64Array, i: number): number {
  let m = Infinity;
  for (let k = (tree.length >> 1) + i; k > 1; k >>= 1) {
    const sibling = tree[k ^ 1]!;
    if (sibling < m) m = sibling;
  }
  return m;
}

// ==============================================================================================
// Agents
// ==============================================================================================

/** A sequence of accesses, held as parallel arrays (the fast form). */
export interface AccessStream {
  his: Int32Array;
  los: Int32Array;
  /** 0 read, 1 write, 2 fetch. */
  kinds: Uint8Array;
  length: number;
}

/** Build an access stream from (address, kind) pairs. */
export function accessStream(accesses: Iterable<[LinearAddress, AccessKind]>): AccessStream {
  const list = [...accesses];
  const s: AccessStream = { his: new Int32Array(list.length), los: new Int32Array(list.length), kinds: new Uint8Array(list.length), length: list.length };
  list.forEach(([va, kind], i) => {
    const [hi, lo] = toVa(va);
    const k = KIND_CODES[kind];
    if (k === undefined) throw new EngineError(`access ${i}: kind must be read, write or fetch, got ${String(kind)}`);
    s.his[i] = hi;
    s.los[i] = lo;
    s.kinds[i] = k;
  });
  return s;
}

/** What to do after a faulting access of a stream. */
export type FaultAction = 'retry' | 'skip' | 'stop';

export interface StreamFault {
  index: number;
  va: bigint;
  kind: AccessKind;
  vector: number;
  errorCode: number;
}

/**
 * Runs an access stream. On a fault, `onFault` decides: retry the access (after mapping it),
 * skip it, or stop the agent. Without a handler a fault is an error.
 */
export class StreamAgent implements Agent {
  pos = 0;
  faults = 0;
  constructor(
    readonly stream: AccessStream,
    private readonly onFault?: (cpu: Cpu, fault: StreamFault) => FaultAction,
  ) {}

  step(cpu: Cpu, until: number): AgentStatus {
    const stream = this.stream;
    const his = stream.his;
    const los = stream.los;
    const kinds = stream.kinds;
    const length = stream.length;
    const costHit = cpu.costHit > 0 ? cpu.costHit : 1;
    let i = this.pos;
    while (i < length) {
      const now = cpu.cycles;
      if (now >= until) break;
      // Accesses cost at least costHit, so this many cannot overshoot `until` by more than the
      // extra cost of the slower ones among them.
      const end = Math.min(length, i + Math.max(1, Math.min(1024, Math.floor((until - now) / costHit)))) | 0;
      while (i < end) {
        i = runAccesses(cpu, his, los, kinds, i, end);
        if (i >= end) break;
        // Access i faulted: retry it (after the handler mapped it), skip it, or stop.
        const action = this.fault(cpu, i);
        if (action === 'stop') {
          this.pos = length;
          return 'done';
        }
        if (action === 'skip') i++;
      }
    }
    this.pos = i;
    return i >= length ? 'done' : 'run';
  }

  private fault(cpu: Cpu, i: number): FaultAction {
    this.faults++;
    const { his, los, kinds } = this.stream;
    const f: StreamFault = { index: i, va: vaFromHalves(his[i]!, los[i]!), kind: (['read', 'write', 'fetch'] as const)[kinds[i]!]!, vector: cpu.faultVector, errorCode: cpu.faultError };
    if (!this.onFault) throw new EngineError(`CPU ${cpu.index}: access ${i} (${f.kind} 0x${f.va.toString(16)}) raised vector ${f.vector} error code 0x${f.errorCode.toString(16)} and the stream has no fault handler`);
    const a = this.onFault(cpu, f);
    if (a !== 'retry' && a !== 'skip' && a !== 'stop') throw new EngineError(`fault handler returned ${String(a)}; expected retry, skip or stop`);
    return a;
  }
}

/**
 * Run accesses from..end-1 of a stream on `cpu` until one faults. Returns the index of the
 * faulting access, or `end`. A separate function so the loop has no fault handling in it: the
 * optimized loop is then only the inlined translation shortcut.
 */
function runAccesses(cpu: Cpu, his: Int32Array, los: Int32Array, kinds: Uint8Array, from: number, end: number): number {
  let i = from | 0;
  while (i < end && cpu.translate(his[i]!, los[i]!, kinds[i]!, false, false) === 0) i = (i + 1) | 0;
  return i;
}

/**
 * An agent written as a generator: each `yield` ends the step with the yielded status ('run' to
 * continue in a later turn, 'wait' to wait until `readyWhen` holds). Returning ends it.
 * Convenient for tests and small scenarios; the hot loops use StreamAgent.
 */
export class ScriptAgent implements Agent {
  private gen: Generator<AgentStatus, void, void> | null = null;
  /** Condition a waiting script waits for; set by the script before yielding 'wait'. */
  readyWhen: (() => boolean) | null = null;

  constructor(private readonly body: (cpu: Cpu, agent: ScriptAgent, ctx: EngineContext) => Generator<AgentStatus, void, void>) {}

  step(cpu: Cpu, _until: number, ctx: EngineContext): AgentStatus {
    if (!this.gen) this.gen = this.body(cpu, this, ctx);
    const r = this.gen.next();
    if (r.done) return 'done';
    return r.value;
  }

  ready(): boolean {
    return this.readyWhen ? this.readyWhen() : true;
  }
}
