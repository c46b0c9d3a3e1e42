/**
 * kernel/trace/trace.ts — tracepoints (kernel/trace/, include/trace/events/*.h): each event has
 * the name Linux gives it, a virtual timestamp, the CPU and task, its fields, and its TP_printk
 * text, so the exporters (kernel/trace/export.ts) can write the ftrace `trace` file and a
 * Perfetto/Chrome JSON trace. Recording is off unless asked for; counters that experiments need
 * are kept by the subsystems themselves, not derived from the trace.
 *
 * Besides what Linux records, each event carries what the exporters need and the emulator knows:
 * the ftrace context flags (irqs-off 'd' and hardirq 'h', derived from where the event is emitted:
 * inside an IPI handler, or at a tracepoint Linux only reaches with interrupts disabled), the
 * tgid, the ids that link an IPI's send event to the handler entry on each receiver (flow arrows),
 * and emulator counters sampled at the event (free pages). None of these appear in the TP_printk
 * text.
 *
 * sched_switch: the scheduler (kernel/sched/core.ts) tells the kernel when a CPU's task has left it
 * (Kernel.fireTimers → schedOut), when the CPU switched to its idle task (schedIdle), and when the
 * next task is switched in (contextSwitch → schedSwitch, with the real previous task: the one that
 * left, or null for the idle task). A task that left and was followed directly by another is one
 * "prev ==> next" switch at the time of the switch, with the state it left in; one that left a
 * CPU going idle gets its "==> swapper/N" switch at the time it left — recorded when the next
 * event on that CPU or the next switch comes, or added by snapshot() — and the next task comes
 * from swapper/N, as Linux records them.
 *
 * Deviations: `%pS` (the callsite and callback of the ipi events) prints the symbol name without
 * +offset/size — mmulab has no code addresses — and the callsite names the Linux function holding
 * the send, where Linux's _RET_IP_ would point into that function's caller. A single-target
 * CALL_FUNCTION IPI keeps CALL_FUNCTION_VECTOR (Linux would send CALL_FUNCTION_SINGLE_VECTOR and
 * trace call_function_single_entry); the send event is ipi_send_cpu, as in Linux. need-resched,
 * preempt-depth and migrate-disable flags are not modelled and print '.'.
 */

import type { Kernel } from '../kernel.ts';
import type { Task } from '../sched/core.ts';
import type { IpiMessage } from '../../hw/apic.ts';
import { A_TAIL } from '../../hw/layout.ts';
import { gfpNames } from '../mm/page_alloc.ts';

export interface TraceEvent {
  /** Virtual time in cycles on the emitting CPU. */
  ts: number;
  cpu: number;
  pid: number;
  /** Thread-group id of the task (0 for idle). */
  tgid: number;
  comm: string;
  /** "subsystem:event", e.g. "tlb:tlb_flush". */
  name: string;
  fields: Record<string, number | string | boolean>;
  /** The TP_printk rendering. */
  text: string;
  /** The five ftrace context flag characters (irqs-off, need-resched, hardirq, preempt, migrate). */
  flags: string;
  /** On an ipi_send_* event: one id per target message, in target order. */
  flowOut?: number[];
  /** On an irq_vectors:*_entry event: the id given to that message by its send event. */
  flowIn?: number;
  /** Emulator state sampled at the event (not part of the Linux event), e.g. nr_free_pages. */
  counters?: Record<string, number>;
}

/** Where an event happened, when the caller knows better than "the running code". */
export interface TraceAt {
  cpu: number;
  ts: number;
  task?: Task | null;
}

/** enum tlb_flush_reason (include/linux/mm_types_task.h) and its TP_printk names. */
export const TLB_FLUSH_ON_TASK_SWITCH = 0;
export const TLB_REMOTE_SHOOTDOWN = 1;
export const TLB_LOCAL_SHOOTDOWN = 2;
export const TLB_LOCAL_MM_SHOOTDOWN = 3;
export const TLB_REMOTE_SEND_IPI = 4;
export const TLB_REMOTE_WRONG_CPU = 5;
export const TLB_FLUSH_REASON_NAMES = ['flush on task switch', 'remote shootdown', 'local shootdown', 'local mm shootdown', 'remote ipi send', 'remote wrong CPU'];

/**
 * x86 system vectors with irq_vectors:<name>_entry/_exit tracepoints
 * (arch/x86/include/asm/irq_vectors.h, arch/x86/include/asm/trace/irq_vectors.h). Literal numbers:
 * kernel.ts, which defines the vectors the kernel uses, imports this module.
 */
export const IRQ_VECTOR_EVENTS: ReadonlyMap<number, string> = new Map([
  [0xfb, 'call_function_single'],
  [0xfc, 'call_function'],
  [0xfd, 'reschedule'],
]);

/**
 * Tracepoints Linux only reaches with interrupts disabled, whatever the caller: sched_switch
 * (__schedule holds the rq lock with irqs off), the x86 page-fault events (exc_page_fault traces
 * before it re-enables interrupts). tlb_flush is decided per reason in tlbFlush().
 */
const IRQS_OFF_EVENTS = new Set(['sched:sched_switch', 'exceptions:page_fault_user', 'exceptions:page_fault_kernel']);

/** A task that has left its CPU, waiting for the next switch to say where the CPU went. */
interface SwitchOut {
  task: Task;
  ts: number;
  state: string;
  /** The CPU went idle when the task left (schedIdle), rather than straight to another task. */
  idle: boolean;
}

export class Tracer {
  readonly events: TraceEvent[] = [];
  /** Only events whose name starts with one of these are kept (empty: all). */
  filter: string[] = [];
  /** Stop recording beyond this many events. */
  limit = 5_000_000;
  dropped = 0;
  /** Per CPU: the task last switched in (null: idle). Kept while recording is off too. */
  private readonly onCpu: (Task | null)[];
  private readonly switchedOut: (SwitchOut | null)[];
  /** Per CPU: hardirq nesting (inside an IPI handler) and the task it interrupted. */
  private readonly hardirq: Int32Array;
  private readonly irqTask: (Task | null)[];
  /** Flow ids of IPIs in flight, by "target:ring sequence" (the APIC's message identity). */
  private readonly inFlight = new Map<string, number>();
  private nextFlowId = 1;

  constructor(
    private readonly k: Kernel,
    public enabled: boolean,
  ) {
    const n = k.machine.cpuCount;
    this.onCpu = new Array<Task | null>(n).fill(null);
    this.switchedOut = new Array<SwitchOut | null>(n).fill(null);
    this.hardirq = new Int32Array(n);
    this.irqTask = new Array<Task | null>(n).fill(null);
  }

  /**
   * Record an event at the running code's CPU and task, or at `at`. `irqsOff`: the tracepoint is
   * reached with interrupts disabled (the caller knows; see also IRQS_OFF_EVENTS).
   */
  emit(name: string, fields: Record<string, number | string | boolean>, text: string, at?: TraceAt, irqsOff = false): TraceEvent | null {
    if (!this.enabled) return null;
    const cpu = at ? at.cpu : this.k.thisCpu();
    this.settleSwitchOut(cpu);
    return this.record(name, fields, text, cpu, at ? at.ts : this.k.machine.cpu(cpu).cycles, at ? (at.task ?? null) : this.k.current, irqsOff);
  }

  /** `outsideIrq`: the event belongs to task context even if a handler is running now. */
  private record(name: string, fields: Record<string, number | string | boolean>, text: string, cpu: number, ts: number, task: Task | null, irqsOff: boolean, outsideIrq = false): TraceEvent | null {
    if (this.filter.length && !this.filter.some((f) => name.startsWith(f))) return null;
    if (this.events.length >= this.limit) {
      this.dropped++;
      return null;
    }
    const inIrq = !outsideIrq && this.hardirq[cpu]! > 0;
    // In a handler the context is the interrupted task, whoever the caller thinks is current.
    const t = inIrq ? this.irqTask[cpu]! : task;
    const flags = (inIrq || irqsOff || IRQS_OFF_EVENTS.has(name) ? 'd' : '.') + '.' + (inIrq ? 'h' : '.') + '..';
    const ev: TraceEvent = { ts, cpu, pid: t?.pid ?? 0, tgid: t?.tgid ?? 0, comm: t?.comm ?? '<idle>', name, fields, text, flags };
    this.events.push(ev);
    return ev;
  }

  pageAlloc(pfn: number, order: number, gfp: number): void {
    if (!this.enabled) return;
    const page = (0xffffea0000000000n + BigInt(pfn) * 64n).toString(16);
    const ev = this.emit('kmem:mm_page_alloc', { pfn, order, gfp_flags: gfp, migratetype: 0 }, `page=000000000${page.slice(-7)} pfn=0x${pfn.toString(16)} order=${order} migratetype=0 gfp_flags=${gfpNames(gfp)}`);
    if (ev) ev.counters = { nr_free_pages: this.k.pages.freeFrames };
  }

  pageFree(pfn: number, order: number): void {
    if (!this.enabled) return;
    const page = (0xffffea0000000000n + BigInt(pfn) * 64n).toString(16);
    const ev = this.emit('kmem:mm_page_free', { pfn, order }, `page=000000000${page.slice(-7)} pfn=0x${pfn.toString(16)} order=${order}`);
    if (ev) ev.counters = { nr_free_pages: this.k.pages.freeFrames };
  }

  // ---- sched:sched_switch ---------------------------------------------------------------------

  /**
   * The task last switched in on `cpu` has left it at `ts` (slept, exited or was preempted):
   * called from the scheduler loop before it picks the next task (a task still running is not
   * leaving). Nothing is recorded yet: the switch comes with schedSwitch, or, if the CPU goes
   * idle (schedIdle), as "prev ==> swapper/N" at `ts`.
   */
  schedOut(cpu: number, ts: number): void {
    const t = this.onCpu[cpu];
    if (!t || this.switchedOut[cpu] || t.state === 'running') return;
    this.switchedOut[cpu] = { task: t, ts, state: switchState(t), idle: false };
  }

  /** The scheduler of `cpu` found nothing to run and switched to the idle task. */
  schedIdle(cpu: number): void {
    const out = this.switchedOut[cpu];
    if (out) out.idle = true;
  }

  /** A left task whose CPU went idle: its switch to swapper/N, at the time it left. */
  private settleSwitchOut(cpu: number): void {
    const out = this.switchedOut[cpu];
    if (!out || !out.idle) return;
    this.switchedOut[cpu] = null;
    this.onCpu[cpu] = null;
    if (this.enabled) this.recordSwitch(cpu, out.ts, out.task, out.state, null);
  }

  /**
   * contextSwitch: `next` runs on `cpu` from now; `prev` is the task that ran before it (it may
   * have left a while ago, as when the CPU's clock waited for a woken task), or null for the idle
   * task.
   */
  schedSwitch(cpu: number, prev: Task | null, next: Task): void {
    const ts = this.k.machine.cpu(cpu).cycles;
    const out = this.switchedOut[cpu];
    let state = 'R';
    if (out && (prev === null || out.task !== prev)) {
      // The task that left went to the idle task first. (A prev other than the task that left
      // does not happen; should it, that task is still shown leaving, to idle.)
      out.idle = true;
      this.settleSwitchOut(cpu);
    } else if (out) {
      this.switchedOut[cpu] = null;
      state = out.state;
    } else if (prev) {
      state = switchState(prev);
    }
    this.onCpu[cpu] = next;
    // prev == next: woken again before it was switched out, so no switch at all.
    if (prev === next || !this.enabled) return;
    this.recordSwitch(cpu, ts, prev, state, next);
  }

  private recordSwitch(cpu: number, ts: number, prev: Task | null, state: string, next: Task | null): void {
    const pc = prev?.comm ?? 'swapper/' + cpu;
    const pp = prev?.pid ?? 0;
    const nc = next?.comm ?? 'swapper/' + cpu;
    const np = next?.pid ?? 0;
    this.record(
      'sched:sched_switch',
      { prev_comm: pc, prev_pid: pp, prev_prio: 120, prev_state: state, next_comm: nc, next_pid: np, next_prio: 120 },
      `prev_comm=${pc} prev_pid=${pp} prev_prio=120 prev_state=${state} ==> next_comm=${nc} next_pid=${np} next_prio=120`,
      cpu,
      ts,
      prev,
      false,
      true,
    );
  }

  /**
   * The events as an exporter should see them: the recorded ones plus, for each CPU whose task
   * has left and that has done nothing since, its switch to idle.
   */
  snapshot(): TraceEvent[] {
    const out = this.events.slice();
    for (let cpu = 0; cpu < this.switchedOut.length; cpu++) {
      const s = this.switchedOut[cpu];
      if (!s || !this.enabled) continue;
      const p = s.task;
      out.push({
        ts: s.ts, cpu, pid: p.pid, tgid: p.tgid, comm: p.comm, name: 'sched:sched_switch', flags: 'd....',
        fields: { prev_comm: p.comm, prev_pid: p.pid, prev_prio: 120, prev_state: s.state, next_comm: 'swapper/' + cpu, next_pid: 0, next_prio: 120 },
        text: `prev_comm=${p.comm} prev_pid=${p.pid} prev_prio=120 prev_state=${s.state} ==> next_comm=swapper/${cpu} next_pid=0 next_prio=120`,
      });
    }
    return out;
  }

  // ---- tlb:tlb_flush --------------------------------------------------------------------------

  tlbFlush(reason: number, pages: number, at?: TraceAt): void {
    if (!this.enabled) return;
    // flush_tlb_func and switch_mm_irqs_off run with interrupts off (lockdep_assert_irqs_disabled);
    // only the "remote ipi send" reason is traced from the sender with interrupts on.
    this.emit('tlb:tlb_flush', { reason, pages }, `pages:${pages} reason:${TLB_FLUSH_REASON_NAMES[reason]} (${reason})`, at, reason !== TLB_REMOTE_SEND_IPI);
  }

  // ---- ipi:* and irq_vectors:* ---------------------------------------------------------------

  /**
   * ipi:ipi_send_cpu (one target) or ipi:ipi_send_cpumask: call right before the APIC send from
   * the running code's CPU. `callsite` and `callback` are Linux symbol names (null callback prints
   * 0x0, as %pS of NULL). Each target's message gets a flow id, found again by ipiEntry.
   */
  ipiSend(targets: number | readonly number[], vector: number, callsite: string, callback: string | null): void {
    if (!this.enabled) return;
    const list = typeof targets === 'number' ? [targets] : [...targets];
    if (list.length === 0) return;
    const ids: number[] = [];
    for (const t of list) {
      // The APIC gives the message the target ring's current tail as its sequence number.
      const seq = Atomics.load(this.k.machine.cpu(t).r, A_TAIL);
      const id = this.nextFlowId++;
      this.inFlight.set(`${t}:${seq}`, id);
      ids.push(id);
    }
    const cb = callback ?? '0x0';
    // smp_send_reschedule runs under the waker's irq-disabling pi_lock; smp_call_function_many_cond
    // runs with preemption off but interrupts on.
    const irqsOff = vector === 0xfd;
    const ev =
      list.length === 1
        ? this.emit('ipi:ipi_send_cpu', { cpu: list[0]!, callsite, callback: cb }, `cpu=${list[0]} callsite=${callsite} callback=${cb}`, undefined, irqsOff)
        : this.emit('ipi:ipi_send_cpumask', { cpumask: cpumaskHex(list, this.k.machine.cpuCount), callsite, callback: cb }, `cpumask=${cpumaskHex(list, this.k.machine.cpuCount)} callsite=${callsite} callback=${cb}`, undefined, irqsOff);
    if (ev) ev.flowOut = ids;
  }

  /** irq_vectors:<vector>_entry, first thing in an IPI handler on `cpu`. */
  ipiEntry(cpu: number, msg: IpiMessage): void {
    const key = `${cpu}:${msg.seq}`;
    const id = this.inFlight.get(key);
    if (id !== undefined) this.inFlight.delete(key);
    // The interrupted context: the idle task on a CPU gone idle; until the switch, the task that
    // is leaving (still current in Linux while __schedule runs).
    if (this.hardirq[cpu]!++ === 0) this.irqTask[cpu] = this.switchedOut[cpu]?.idle ? null : this.onCpu[cpu]!;
    const name = IRQ_VECTOR_EVENTS.get(msg.vector);
    if (!this.enabled || !name) return;
    const ev = this.emit(`irq_vectors:${name}_entry`, { vector: msg.vector }, `vector=${msg.vector}`, { cpu, ts: this.k.machine.cpu(cpu).cycles });
    if (ev && id !== undefined) ev.flowIn = id;
  }

  /** irq_vectors:<vector>_exit, last thing in an IPI handler on `cpu`. */
  ipiExit(cpu: number, msg: IpiMessage): void {
    const name = IRQ_VECTOR_EVENTS.get(msg.vector);
    if (this.enabled && name) this.emit(`irq_vectors:${name}_exit`, { vector: msg.vector }, `vector=${msg.vector}`, { cpu, ts: this.k.machine.cpu(cpu).cycles });
    if (this.hardirq[cpu]! > 0 && --this.hardirq[cpu]! === 0) this.irqTask[cpu] = null;
  }

  clear(): void {
    this.events.length = 0;
    this.dropped = 0;
  }
}

/**
 * sched_switch prev_state (__trace_sched_switch_state): S sleeping, X dead, R+ preempted while
 * runnable (TASK_REPORT_MAX prints "R+"), R otherwise.
 */
function switchState(t: Task): string {
  switch (t.state) {
    case 'sleeping':
      return 'S';
    case 'dead':
      return 'X';
    case 'runnable':
      return 'R+';
    default:
      return 'R';
  }
}

/**
 * A cpumask as ftrace prints a __cpumask field by default (trace_seq_bitmask, "%*pb"): hex, in
 * 32-bit chunks from the most significant, comma-separated, over the field's size — a whole
 * number of longs (64 bits each) covering `nrCpus`.
 */
export function cpumaskHex(cpus: readonly number[], nrCpus: number): string {
  const bits = Math.max(1, Math.ceil(nrCpus / 64)) * 64;
  const words = new Uint32Array(bits / 32);
  for (const c of cpus) words[c >>> 5]! |= 1 << (c & 31);
  const out: string[] = [];
  for (let i = words.length - 1; i >= 0; i--) out.push(words[i]!.toString(16).padStart(8, '0'));
  return out.join(',');
}
