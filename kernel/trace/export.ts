/**
 * kernel/trace/export.ts — writes recorded tracepoints (kernel/trace/trace.ts) as
 *  - the ftrace `trace` file of the nop tracer with the default options (irq-info on,
 *    record-tgid off: kernel/trace/trace.c print_func_help_header_irq,
 *    kernel/trace/trace_output.c trace_print_context), and
 *  - a Chrome Trace Event Format JSON object that Perfetto UI and chrome://tracing load.
 *
 * Time: virtual cycles become nanoseconds at the machine's clock rate (floor, as a ns trace clock
 * reads), then ftrace prints microseconds rounded as ns2usecs() does; JSON timestamps are
 * microseconds with nanosecond resolution.
 *
 * ftrace: the per-CPU buffers are merged as the trace file reader does (__find_next_entry: the
 * smallest timestamp first, the lowest CPU on ties; a CPU's own events in their recorded order,
 * which the exporter sorts stably by time). "entries-written" counts what the buffer holds, as
 * Linux does with the overwrite option off (mmulab's tracer keeps the first events and drops
 * later ones; Linux reports those in per_cpu/cpuN/stats, not in this header).
 *
 * JSON layout: a pseudo-process "CPUs" (pid CPU_PID) with one thread per emulated CPU (tid
 * CPU_PID + 1 + cpu, never 0, which trace processors reserve for the idle thread). On a CPU's
 * track: a slice per task run (from sched_switch), a slice per IPI send (its duration is the send
 * cost) and per IPI handler (interrupt entry to exit), instants for page faults and TLB flushes.
 * Flow arrows (ph s/f, bp "e", one id per message) lead from a send slice to the handler slice
 * on each receiver. mmap_lock waits (start_locking → acquire_returned) are slices on the waiting
 * task's own track (pid = tgid, tid = pid), since a wait may span a sleep. Counters (ph C): free
 * pages, and per CPU the number of TLB flushes and of IPIs sent so far. Slices on one track are
 * made to nest (a slice that would cross its parent's end is cut there), which both viewers
 * require.
 */

import type { Kernel } from '../kernel.ts';
import type { TraceEvent } from './trace.ts';

/** What the exporters need to know about the machine. */
export interface TraceInfo {
  /** Number of CPUs (#P: in the ftrace header). */
  cpus: number;
  /** Cycles per nanosecond. */
  clockGhz: number;
  /** Cost of sending one IPI message (the length of a send slice per target). */
  ipiSendCycles: number;
  /** Cost of interrupt entry (a handler slice starts this long before its entry event). */
  ipiHandlerEntryCycles: number;
  /** Free page frames now, at the end of the trace (anchors the free-pages counter). */
  freePagesNow?: number;
}

export function traceInfo(k: Kernel): TraceInfo {
  const c = k.machine.cpu(0).cost;
  return { cpus: k.machine.cpuCount, clockGhz: k.machine.config.cost.clockGhz, ipiSendCycles: c.ipiSend, ipiHandlerEntryCycles: c.ipiHandlerEntry, freePagesNow: k.pages.freeFrames };
}

/** Virtual cycles to whole nanoseconds (a ns trace clock never reads a fraction). */
export function cyclesToNs(cycles: number, clockGhz: number): number {
  return Math.floor(cycles / clockGhz);
}

// ==============================================================================================
// ftrace text
// ==============================================================================================

/** The `trace` file header of the nop tracer with irq-info on and record-tgid off. */
export function ftraceHeader(entries: number, written: number, cpus: number): string {
  return [
    '# tracer: nop',
    '#',
    `# entries-in-buffer/entries-written: ${entries}/${written}   #P:${cpus}`,
    '#',
    '#                                _-----=> irqs-off/BH-disabled',
    '#                               / _----=> need-resched',
    '#                              | / _---=> hardirq/softirq',
    '#                              || / _--=> preempt-depth',
    '#                              ||| / _-=> migrate-disable',
    '#                              |||| /     delay',
    '#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION',
    '#              | |         |   |||||     |         |',
  ].join('\n') + '\n';
}

/** " %5lu.%06lu" without the leading space: seconds and microseconds, as ns2usecs() rounds. */
export function ftraceTimestamp(ns: number): string {
  const usecs = Math.floor((ns + 500) / 1000);
  const secs = Math.floor(usecs / 1_000_000);
  return `${String(secs).padStart(5)}.${String(usecs % 1_000_000).padStart(6, '0')}`;
}

/** One event line: "%16s-%-7d [%03d] FLAGS %5lu.%06lu: event: text". */
export function ftraceLine(ev: TraceEvent, clockGhz: number): string {
  const comm = ev.pid === 0 ? '<idle>' : ev.comm;
  const event = ev.name.slice(ev.name.indexOf(':') + 1);
  return `${comm.padStart(16)}-${String(ev.pid).padEnd(7)} [${String(ev.cpu).padStart(3, '0')}] ${ev.flags} ${ftraceTimestamp(cyclesToNs(ev.ts, clockGhz))}: ${event}: ${ev.text}`;
}

/** Each CPU's events in time order (stable: equal times keep the recorded order). */
function perCpu(events: readonly TraceEvent[], cpus: number): TraceEvent[][] {
  // A loop, not Math.max(...events): a spread of a few hundred thousand events overflows the stack.
  let n = cpus;
  for (const e of events) if (e.cpu + 1 > n) n = e.cpu + 1;
  const lists: TraceEvent[][] = Array.from({ length: n }, () => []);
  for (const e of events) lists[e.cpu]!.push(e);
  for (const l of lists) stableSortBy(l, (e) => e.ts);
  return lists;
}

/** The order of the trace file: per-CPU buffers merged by time, lowest CPU first on ties. */
export function ftraceOrder(events: readonly TraceEvent[], cpus: number): TraceEvent[] {
  const lists = perCpu(events, cpus);
  const pos = new Array<number>(lists.length).fill(0);
  const out: TraceEvent[] = [];
  for (;;) {
    let best = -1;
    for (let c = 0; c < lists.length; c++) {
      const e = lists[c]![pos[c]!];
      if (e && (best < 0 || e.ts < lists[best]![pos[best]!]!.ts)) best = c;
    }
    if (best < 0) return out;
    out.push(lists[best]![pos[best]!++]!);
  }
}

export interface FtraceOptions {
  /** entries-written (default: the number of events). */
  written?: number;
}

/** The ftrace `trace` file for `events`. */
export function toFtrace(events: readonly TraceEvent[], info: TraceInfo, opts: FtraceOptions = {}): string {
  const ordered = ftraceOrder(events, info.cpus);
  let s = ftraceHeader(ordered.length, opts.written ?? ordered.length, info.cpus);
  for (const e of ordered) s += ftraceLine(e, info.clockGhz) + '\n';
  return s;
}

/** The ftrace `trace` file of a kernel's tracer. */
export function ftraceText(k: Kernel, opts: FtraceOptions = {}): string {
  return toFtrace(k.trace.snapshot(), traceInfo(k), opts);
}

// ==============================================================================================
// Chrome / Perfetto JSON
// ==============================================================================================

/** The pseudo-process holding one thread per emulated CPU. */
export const CPU_PID = 1_000_000;
export function cpuTid(cpu: number): number {
  return CPU_PID + 1 + cpu;
}

export interface ChromeEvent {
  name: string;
  cat?: string;
  ph: string;
  /** Microseconds. */
  ts: number;
  pid: number;
  tid: number;
  dur?: number;
  id?: number;
  bp?: string;
  s?: string;
  args?: Record<string, unknown>;
}

export interface ChromeTrace {
  traceEvents: ChromeEvent[];
  displayTimeUnit: 'ns';
  metadata: Record<string, unknown>;
}

interface Slice {
  pid: number;
  tid: number;
  name: string;
  cat: string;
  start: number;
  end: number;
  args: Record<string, unknown>;
  /** Task-run slices are the base layer of a CPU track. */
  base: boolean;
  flowOut?: number[];
  flowIn?: number;
}

interface Point {
  ph: 'i' | 'C';
  pid: number;
  tid: number;
  name: string;
  cat: string;
  at: number;
  args: Record<string, unknown>;
}

/** Build the Chrome trace object for `events`. */
export function toChromeTrace(events: readonly TraceEvent[], info: TraceInfo): ChromeTrace {
  const ns = (cycles: number) => cyclesToNs(cycles, info.clockGhz);
  const lists = perCpu(events, info.cpus);
  const slices: Slice[] = [];
  const points: Point[] = [];
  let traceEnd = 0;
  for (const e of events) traceEnd = Math.max(traceEnd, ns(e.ts));
  const comms = new Map<number, { comm: string; tgid: number }>();
  const note = (pid: number, comm: string, tgid: number) => {
    if (pid !== 0 && !comms.has(pid)) comms.set(pid, { comm, tgid });
  };
  for (const e of events) note(e.pid, e.comm, e.tgid);
  const sendCost = ns(info.ipiSendCycles);
  const entryCost = ns(info.ipiHandlerEntryCycles);
  const lockWaits = new Map<number, TraceEvent[]>();
  const freeAfter = freePagesAfter(events, info.freePagesNow);

  for (let cpu = 0; cpu < lists.length; cpu++) {
    const tid = cpuTid(cpu);
    const list = lists[cpu]!;
    let running: { pid: number; comm: string; start: number } | null = null;
    let switched = false;
    const handlers: { ev: TraceEvent; vector: number }[] = [];
    let flushes = 0;
    let ipis = 0;
    const endRun = (at: number, state: string) => {
      if (!running) return;
      const t = comms.get(running.pid);
      slices.push({ pid: CPU_PID, tid, name: `${running.comm} [${running.pid}]`, cat: 'sched', start: running.start, end: at, args: { pid: running.pid, tgid: t?.tgid ?? running.pid, comm: running.comm, end_state: state }, base: true });
      running = null;
    };
    for (const e of list) {
      const at = ns(e.ts);
      const f = e.fields;
      switch (e.name) {
        case 'sched:sched_switch': {
          const prevPid = Number(f.prev_pid);
          // A task already running when the trace began: its run starts with the CPU's first event.
          if (!switched && prevPid !== 0) running = { pid: prevPid, comm: String(f.prev_comm), start: ns(list[0]!.ts) };
          switched = true;
          endRun(at, String(f.prev_state));
          const nextPid = Number(f.next_pid);
          if (nextPid !== 0) running = { pid: nextPid, comm: String(f.next_comm), start: at };
          break;
        }
        case 'ipi:ipi_send_cpu':
        case 'ipi:ipi_send_cpumask': {
          const n = e.flowOut?.length ?? 1;
          ipis += n;
          slices.push({ pid: CPU_PID, tid, name: e.name.slice(4), cat: 'ipi', start: at, end: at + sendCost * n, args: eventArgs(e), base: false, flowOut: e.flowOut });
          points.push({ ph: 'C', pid: CPU_PID, tid, name: `ipi sent cpu${cpu}`, cat: 'ipi', at, args: { count: ipis } });
          break;
        }
        case 'tlb:tlb_flush':
          flushes++;
          points.push({ ph: 'i', pid: CPU_PID, tid, name: 'tlb_flush', cat: 'tlb', at, args: eventArgs(e) });
          points.push({ ph: 'C', pid: CPU_PID, tid, name: `tlb_flush cpu${cpu}`, cat: 'tlb', at, args: { count: flushes } });
          break;
        case 'kmem:mm_page_alloc':
        case 'kmem:mm_page_free':
          if (freeAfter.has(e)) points.push({ ph: 'C', pid: CPU_PID, tid, name: 'memory', cat: 'kmem', at, args: { nr_free_pages: freeAfter.get(e)! } });
          break;
        case 'mmap_lock:mmap_lock_start_locking':
        case 'mmap_lock:mmap_lock_acquire_returned': {
          const l = lockWaits.get(e.pid) ?? [];
          l.push(e);
          lockWaits.set(e.pid, l);
          break;
        }
        case 'mmap_lock:mmap_lock_released':
          break;
        default:
          if (e.name.startsWith('irq_vectors:') && e.name.endsWith('_entry')) {
            handlers.push({ ev: e, vector: Number(f.vector) });
          } else if (e.name.startsWith('irq_vectors:') && e.name.endsWith('_exit')) {
            const i = findLastIndex(handlers, (h) => h.vector === Number(f.vector));
            if (i >= 0) {
              const h = handlers.splice(i, 1)[0]!;
              slices.push(handlerSlice(h.ev, tid, Math.max(0, ns(h.ev.ts) - entryCost), at));
            }
          } else {
            points.push({ ph: 'i', pid: CPU_PID, tid, name: e.name.slice(e.name.indexOf(':') + 1), cat: e.name.slice(0, e.name.indexOf(':')), at, args: eventArgs(e) });
          }
      }
    }
    // Still inside a handler, or still running, when the trace ends.
    for (const h of handlers) slices.push(handlerSlice(h.ev, tid, Math.max(0, ns(h.ev.ts) - entryCost), ns(h.ev.ts)));
    endRun(traceEnd, 'R');
  }

  // mmap_lock waits, on the waiting task's own track (the events of one task are in time order).
  for (const [pid, l] of [...lockWaits].sort((a, b) => a[0] - b[0])) {
    stableSortBy(l, (e) => e.ts);
    const open: TraceEvent[] = [];
    for (const e of l) {
      if (e.name === 'mmap_lock:mmap_lock_start_locking') open.push(e);
      else {
        const i = findLastIndex(open, (s) => s.fields.mm === e.fields.mm && s.fields.write === e.fields.write);
        if (i < 0) continue;
        const s = open.splice(i, 1)[0]!;
        slices.push({ pid: e.tgid || pid, tid: pid, name: `mmap_lock ${e.fields.write ? 'write' : 'read'} wait`, cat: 'mmap_lock', start: ns(s.ts), end: ns(e.ts), args: { ...e.fields, cpu: e.cpu, text: e.text }, base: false });
      }
    }
  }

  nestSlices(slices);

  const out: ChromeEvent[] = [];
  const us = (n: number) => n / 1000;
  // Metadata: the CPU lanes, then every process and thread seen.
  out.push({ name: 'process_name', ph: 'M', ts: 0, pid: CPU_PID, tid: cpuTid(0), args: { name: 'CPUs' } });
  out.push({ name: 'process_sort_index', ph: 'M', ts: 0, pid: CPU_PID, tid: cpuTid(0), args: { sort_index: -1 } });
  for (let cpu = 0; cpu < lists.length; cpu++) {
    out.push({ name: 'thread_name', ph: 'M', ts: 0, pid: CPU_PID, tid: cpuTid(cpu), args: { name: `CPU ${cpu}` } });
    out.push({ name: 'thread_sort_index', ph: 'M', ts: 0, pid: CPU_PID, tid: cpuTid(cpu), args: { sort_index: cpu } });
  }
  const tgids = new Map<number, string>();
  for (const [pid, { comm, tgid }] of [...comms].sort((a, b) => a[0] - b[0])) {
    const g = tgid || pid;
    if (!tgids.has(g)) tgids.set(g, comms.get(g)?.comm ?? comm);
    out.push({ name: 'thread_name', ph: 'M', ts: 0, pid: g, tid: pid, args: { name: `${comm} ${pid}` } });
  }
  for (const [g, comm] of tgids) out.push({ name: 'process_name', ph: 'M', ts: 0, pid: g, tid: g, args: { name: `${comm} ${g}` } });

  // Everything else in time order; at equal times parents (longer slices) first, then counters and
  // instants, then flow ends, which bind to the slice open at their time.
  const body: { ev: ChromeEvent; at: number; rank: number; len: number }[] = [];
  const flowStarts = new Map<number, { pid: number; tid: number; at: number }>();
  const flowEnds = new Map<number, { pid: number; tid: number; at: number }>();
  for (const s of slices) {
    body.push({ ev: { name: s.name, cat: s.cat, ph: 'X', ts: us(s.start), dur: us(s.end - s.start), pid: s.pid, tid: s.tid, args: s.args }, at: s.start, rank: 0, len: s.end - s.start });
    const mid = s.start + Math.floor((s.end - s.start) / 2);
    for (const id of s.flowOut ?? []) flowStarts.set(id, { pid: s.pid, tid: s.tid, at: mid });
    if (s.flowIn !== undefined) flowEnds.set(s.flowIn, { pid: s.pid, tid: s.tid, at: mid });
  }
  for (const p of points) {
    const ev: ChromeEvent = { name: p.name, cat: p.cat, ph: p.ph, ts: us(p.at), pid: p.pid, tid: p.tid, args: p.args };
    if (p.ph === 'i') ev.s = 't';
    body.push({ ev, at: p.at, rank: p.ph === 'C' ? 1 : 2, len: 0 });
  }
  for (const [id, s] of [...flowStarts].sort((a, b) => a[0] - b[0])) {
    const f = flowEnds.get(id);
    if (!f) continue; // the receiver's handler is not in the trace
    body.push({ ev: { name: 'ipi', cat: 'ipi', ph: 's', id, ts: us(s.at), pid: s.pid, tid: s.tid }, at: s.at, rank: 3, len: 0 });
    body.push({ ev: { name: 'ipi', cat: 'ipi', ph: 'f', bp: 'e', id, ts: us(f.at), pid: f.pid, tid: f.tid }, at: f.at, rank: 3, len: 0 });
  }
  const order = body.map((b, i) => ({ b, i }));
  order.sort((x, y) => x.b.at - y.b.at || x.b.rank - y.b.rank || y.b.len - x.b.len || x.i - y.i);
  for (const { b } of order) out.push(b.ev);
  return {
    traceEvents: out,
    displayTimeUnit: 'ns',
    metadata: { source: 'mmulab', cpus: info.cpus, clockGhz: info.clockGhz, events: events.length },
  };
}

/** The Chrome/Perfetto JSON text of a kernel's tracer. */
export function chromeTraceJson(k: Kernel): string {
  return JSON.stringify(toChromeTrace(k.trace.snapshot(), traceInfo(k)));
}

/**
 * Free pages after each kmem event. The tracepoints sample nr_free_pages where Linux traces them
 * (mm_page_free before the block reaches the free lists, mm_page_alloc after it left them); the
 * counter wants the value after the event. With the count at the end of the trace, and every
 * allocation and free since the first one traced (checked against the samples of the allocations),
 * the values are rebuilt backwards in the order the events happened; otherwise the samples are used.
 */
function freePagesAfter(events: readonly TraceEvent[], now: number | undefined): Map<TraceEvent, number> {
  const kmem = events.filter((e) => (e.name === 'kmem:mm_page_alloc' || e.name === 'kmem:mm_page_free') && e.counters?.nr_free_pages !== undefined);
  const out = new Map<TraceEvent, number>();
  if (now !== undefined) {
    let v = now;
    let ok = true;
    for (let i = kmem.length - 1; i >= 0; i--) {
      const e = kmem[i]!;
      const n = 2 ** Number(e.fields.order);
      if (e.name === 'kmem:mm_page_alloc' && e.counters!.nr_free_pages !== v) ok = false;
      out.set(e, v);
      v += e.name === 'kmem:mm_page_alloc' ? n : -n;
    }
    if (ok) return out;
    out.clear();
  }
  for (const e of kmem) out.set(e, e.counters!.nr_free_pages!);
  return out;
}

function handlerSlice(entry: TraceEvent, tid: number, start: number, end: number): Slice {
  const name = entry.name.slice(entry.name.indexOf(':') + 1).replace(/_entry$/, '');
  return { pid: CPU_PID, tid, name, cat: 'irq_vectors', start, end: Math.max(start, end), args: { vector: entry.fields.vector, pid: entry.pid, comm: entry.comm }, base: false, flowIn: entry.flowIn };
}

function eventArgs(e: TraceEvent): Record<string, unknown> {
  return { ...e.fields, pid: e.pid, comm: e.comm, text: e.text };
}

/**
 * Make the slices of every track nest. A CPU's task runs never overlap; any other slice that
 * crosses the start or end of a run is cut to the part in the run (or the idle gap) it starts
 * in, then slices of a track that still cross their parent's end are cut there.
 */
function nestSlices(slices: Slice[]): void {
  const tracks = new Map<string, Slice[]>();
  for (const s of slices) {
    const key = `${s.pid}/${s.tid}`;
    let l = tracks.get(key);
    if (!l) tracks.set(key, (l = []));
    l.push(s);
  }
  for (const l of tracks.values()) {
    const runs = l.filter((s) => s.base).sort((a, b) => a.start - b.start);
    for (const s of l) {
      if (s.base) continue;
      for (const r of runs) {
        if (s.start >= r.start && s.start < r.end && s.end > r.end) s.end = r.end; // starts in the run
        else if (s.start < r.start && s.end > r.start) s.end = r.start; // starts before it
      }
    }
    const sorted = l.slice().sort((a, b) => a.start - b.start || (b.end - b.start) - (a.end - a.start) || (a.base === b.base ? 0 : a.base ? -1 : 1));
    const stack: Slice[] = [];
    for (const s of sorted) {
      while (stack.length && stack[stack.length - 1]!.end <= s.start) stack.pop();
      const top = stack[stack.length - 1];
      if (top && s.end > top.end) s.end = top.end;
      if (s.end < s.start) s.end = s.start;
      stack.push(s);
    }
  }
}

function stableSortBy<T>(list: T[], key: (x: T) => number): void {
  const tagged = list.map((x, i) => ({ x, i, k: key(x) }));
  tagged.sort((a, b) => a.k - b.k || a.i - b.i);
  for (let i = 0; i < list.length; i++) list[i] = tagged[i]!.x;
}

function findLastIndex<T>(list: readonly T[], pred: (x: T) => boolean): number {
  for (let i = list.length - 1; i >= 0; i--) if (pred(list[i]!)) return i;
  return -1;
}
