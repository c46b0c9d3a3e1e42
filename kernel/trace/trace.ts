/**
 * kernel/trace/trace.ts — tracepoints (kernel/trace/, include/trace/events/*.h): each event has
 * the name Linux gives it, a virtual timestamp, the CPU and task, its fields, and its TP_printk
 * text, so the exporters (kernel/trace/export.ts) can write the ftrace `trace` file and a
 * Perfetto/Chrome JSON trace. Recording is off unless asked for; counters that experiments need
 * are kept by the subsystems themselves, not derived from the trace.
 */

import type { Kernel } from '../kernel.ts';
import type { Task } from '../sched/core.ts';
import { gfpNames } from '../mm/page_alloc.ts';

export interface TraceEvent {
  /** Virtual time in cycles on the emitting CPU. */
  ts: number;
  cpu: number;
  pid: number;
  comm: string;
  /** "subsystem:event", e.g. "tlb:tlb_flush". */
  name: string;
  fields: Record<string, number | string | boolean>;
  /** The TP_printk rendering. */
  text: string;
}

/** enum tlb_flush_reason (include/linux/mm_types_task.h) and its TP_printk names. */
export const TLB_FLUSH_ON_TASK_SWITCH = 0;
export const TLB_REMOTE_SHOOTDOWN = 1;
export const TLB_LOCAL_SHOOTDOWN = 2;
export const TLB_LOCAL_MM_SHOOTDOWN = 3;
export const TLB_REMOTE_SEND_IPI = 4;
export const TLB_REMOTE_WRONG_CPU = 5;
export const TLB_FLUSH_REASON_NAMES = ['flush on task switch', 'remote shootdown', 'local shootdown', 'local mm shootdown', 'remote ipi send', 'remote wrong CPU'];

export class Tracer {
  readonly events: TraceEvent[] = [];
  /** Only events whose name starts with one of these are kept (empty: all). */
  filter: string[] = [];
  /** Stop recording beyond this many events. */
  limit = 5_000_000;
  dropped = 0;

  constructor(
    private readonly k: Kernel,
    public enabled: boolean,
  ) {}

  emit(name: string, fields: Record<string, number | string | boolean>, text: string, at?: { cpu: number; ts: number; task?: Task | null }): void {
    if (!this.enabled) return;
    if (this.filter.length && !this.filter.some((f) => name.startsWith(f))) return;
    if (this.events.length >= this.limit) {
      this.dropped++;
      return;
    }
    const cpu = at ? at.cpu : this.k.thisCpu();
    const t = at ? (at.task ?? null) : this.k.current;
    this.events.push({ ts: at ? at.ts : this.k.machine.cpu(cpu).cycles, cpu, pid: t?.pid ?? 0, comm: t?.comm ?? '<idle>', name, fields, text });
  }

  pageAlloc(pfn: number, order: number, gfp: number): void {
    if (!this.enabled) return;
    const page = (0xffffea0000000000n + BigInt(pfn) * 64n).toString(16);
    this.emit('kmem:mm_page_alloc', { pfn, order, gfp_flags: gfp, migratetype: 0 }, `page=000000000${page.slice(-7)} pfn=0x${pfn.toString(16)} order=${order} migratetype=0 gfp_flags=${gfpNames(gfp)}`);
  }

  pageFree(pfn: number, order: number): void {
    if (!this.enabled) return;
    const page = (0xffffea0000000000n + BigInt(pfn) * 64n).toString(16);
    this.emit('kmem:mm_page_free', { pfn, order }, `page=000000000${page.slice(-7)} pfn=0x${pfn.toString(16)} order=${order}`);
  }

  schedSwitch(cpu: number, prev: Task | null, next: Task): void {
    if (!this.enabled) return;
    const pc = prev?.comm ?? 'swapper/' + cpu;
    const pp = prev?.pid ?? 0;
    const ps = prev === null ? 'R' : prev.state === 'sleeping' ? 'S' : prev.state === 'dead' ? 'X' : 'R';
    this.emit(
      'sched:sched_switch',
      { prev_comm: pc, prev_pid: pp, prev_prio: 120, prev_state: ps, next_comm: next.comm, next_pid: next.pid, next_prio: 120 },
      `prev_comm=${pc} prev_pid=${pp} prev_prio=120 prev_state=${ps} ==> next_comm=${next.comm} next_pid=${next.pid} next_prio=120`,
      { cpu, ts: this.k.machine.cpu(cpu).cycles, task: prev },
    );
  }

  tlbFlush(reason: number, pages: number, at?: { cpu: number; ts: number; task?: Task | null }): void {
    if (!this.enabled) return;
    this.emit('tlb:tlb_flush', { reason, pages }, `pages:${pages} reason:${TLB_FLUSH_REASON_NAMES[reason]} (${reason})`, at);
  }

  clear(): void {
    this.events.length = 0;
    this.dropped = 0;
  }
}
