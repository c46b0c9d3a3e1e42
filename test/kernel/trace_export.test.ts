/**
 * kernel/trace/export.ts — the ftrace `trace` file against formats.md §3.1 and
 * kernel/trace/trace_output.c (header text, "%16s-%-7d [%03d] FLAGS %5lu.%06lu: event: text",
 * ns2usecs rounding, <idle>-0, per-CPU buffers merged by time), and the Chrome Trace Event
 * Format JSON against formats.md §4.3 and what Perfetto's JSON importer requires (every event has
 * ph/ts/pid/tid; metadata names the CPU lanes; X slices nest per track; flows s/f paired by id,
 * name and cat, f binding its enclosing slice with bp "e", each end inside a slice; counters
 * numeric). Determinism: one seed gives byte-identical text and JSON on a fresh boot; seeds
 * change a race's winner.
 */

import { describe, expect, it, vi } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import type { User } from '../../kernel/uapi.ts';
import type { TraceEvent } from '../../kernel/trace/trace.ts';
import { CPU_PID, chromeTraceJson, cpuTid, ftraceHeader, ftraceLine, ftraceOrder, ftraceText, ftraceTimestamp, toChromeTrace, toFtrace, traceInfo, type ChromeEvent } from '../../kernel/trace/export.ts';
import { shootdownScenario, wakeupScenario } from './trace_scenarios.ts';

/** formats.md §3.1, verbatim. */
const SPEC_HEADER = `# tracer: nop
#
# entries-in-buffer/entries-written: 16/16   #P:8
#
#                                _-----=> irqs-off/BH-disabled
#                               / _----=> need-resched
#                              | / _---=> hardirq/softirq
#                              || / _--=> preempt-depth
#                              ||| / _-=> migrate-disable
#                              |||| /     delay
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
`;

/**
 * An event line per trace_print_context: comm right-aligned in 16, '-', pid left-aligned in 7, a
 * space, [CPU] in 3 digits, a space, five flags (irqs-off, need-resched, hardirq/softirq,
 * preempt-depth, migrate-disable), " %5lu.%06lu", ": ", "event: ", the TP_printk text.
 */
const LINE = /^(.{16})-(\d+)( *) \[(\d{3})\] ([dDb.][NnpBLbl.][ZzHhs.][0-9a-f.][0-9a-f.]) ( *\d{5,}|\s*\d+)\.(\d{6}): ([a-z0-9_]+): (.*)$/;

describe('ftrace text (formats.md §3.1)', () => {
  it('the header is the nop tracer header, with the buffer counts and #P', () => {
    expect(ftraceHeader(16, 16, 8)).toBe(SPEC_HEADER);
    expect(ftraceHeader(3, 5, 2)).toContain('# entries-in-buffer/entries-written: 3/5   #P:2\n');
  });

  it('timestamps are %5lu.%06lu seconds of microseconds rounded as ns2usecs', () => {
    expect(ftraceTimestamp(0)).toBe('    0.000000');
    expect(ftraceTimestamp(1499)).toBe('    0.000001');
    expect(ftraceTimestamp(1500)).toBe('    0.000002');
    expect(ftraceTimestamp(6_467_444_000)).toBe('    6.467444');
    expect(ftraceTimestamp(999_999_500)).toBe('    1.000000');
    expect(ftraceTimestamp(123_456_789_012_345)).toBe('123456.789012'); // %5lu is a minimum width
  });

  it('a line has the trace_print_context layout', () => {
    const ev: TraceEvent = { ts: 3 * 6_467_444_000, cpu: 4, pid: 113, tgid: 113, comm: 'sh', name: 'tlb:tlb_flush', fields: {}, text: 'pages:-1 reason:flush on task switch (0)', flags: '.....' };
    expect(ftraceLine(ev, 3)).toBe('              sh-113     [004] .....     6.467444: tlb_flush: pages:-1 reason:flush on task switch (0)');
    expect(ftraceLine({ ...ev, pid: 0, comm: 'swapper/4', flags: 'd.h..' }, 3)).toBe('          <idle>-0       [004] d.h..     6.467444: tlb_flush: pages:-1 reason:flush on task switch (0)');
  });

  it('per-CPU buffers merge by time, the lowest CPU first on equal times, each CPU in its own order', () => {
    const e = (cpu: number, ts: number, text: string): TraceEvent => ({ ts, cpu, pid: 1, tgid: 1, comm: 'a', name: 's:e', fields: {}, text, flags: '.....' });
    const order = ftraceOrder([e(1, 10, 'a'), e(0, 10, 'b'), e(0, 5, 'c'), e(1, 10, 'd'), e(2, 1, 'f')], 3).map((x) => x.text);
    expect(order).toEqual(['f', 'c', 'b', 'a', 'd']);
  });

  it('every line of a real run parses, matches its event and is in time order', () => {
    const { k } = shootdownScenario();
    const text = ftraceText(k);
    const events = k.trace.snapshot();
    expect(text.startsWith(ftraceHeader(events.length, events.length, 3))).toBe(true);
    const lines = text.split('\n').filter((l) => l !== '' && !l.startsWith('#'));
    expect(lines).toHaveLength(events.length);
    const byLine = ftraceOrder(events, 3);
    const ghz = k.machine.config.cost.clockGhz;
    let lastUs = -1;
    let lastCpu = -1;
    const seen = new Set<string>();
    lines.forEach((line, i) => {
      const m = LINE.exec(line);
      expect(m, line).not.toBeNull();
      const [, comm, pid, , cpu, flags, secs, usecs, event, rest] = m!;
      const ev = byLine[i]!;
      expect(comm).toBe((ev.pid === 0 ? '<idle>' : ev.comm).padStart(16));
      expect(line.slice(17, 24)).toBe(String(ev.pid).padEnd(7));
      expect(Number(pid)).toBe(ev.pid);
      expect(Number(cpu)).toBe(ev.cpu);
      expect(flags).toBe(ev.flags);
      expect(event).toBe(ev.name.split(':')[1]);
      expect(rest).toBe(ev.text);
      const us = Number(secs) * 1e6 + Number(usecs);
      expect(us).toBe(Math.floor((Math.floor(ev.ts / ghz) + 500) / 1000));
      expect(us).toBeGreaterThanOrEqual(lastUs);
      if (us === lastUs && ev.ts === byLine[i - 1]!.ts) expect(ev.cpu).toBeGreaterThanOrEqual(lastCpu);
      lastUs = us;
      lastCpu = ev.cpu;
      seen.add(event!);
    });
    for (const name of ['sched_switch', 'tlb_flush', 'page_fault_user', 'mm_page_alloc', 'mmap_lock_start_locking', 'ipi_send_cpumask', 'ipi_send_cpu', 'call_function_entry', 'call_function_exit']) expect(seen).toContain(name);
    expect(text).toMatch(/\n {10}<idle>-0 {7}\[00\d\] /);
  });

  it('entries-written can report more than the buffer holds', () => {
    const k = wakeupScenario();
    const n = k.trace.snapshot().length;
    expect(toFtrace(k.trace.snapshot(), traceInfo(k), { written: n + 7 })).toContain(`# entries-in-buffer/entries-written: ${n}/${n + 7}   #P:2\n`);
  });
});

// ---- Chrome JSON --------------------------------------------------------------------------------

const PHASES = new Set(['M', 'X', 'i', 'C', 's', 'f']);

/** Structural checks a Chrome/Perfetto importer relies on; returns the parsed events. */
function validateChrome(json: string, cpus: number): ChromeEvent[] {
  // Perfetto sniffs JSON by its first bytes without whitespace.
  expect(json.replace(/\s/g, '').startsWith('{"')).toBe(true);
  const doc = JSON.parse(json) as { traceEvents: ChromeEvent[]; displayTimeUnit: string };
  expect(Array.isArray(doc.traceEvents)).toBe(true);
  expect(doc.displayTimeUnit).toBe('ns');
  const evs = doc.traceEvents;
  for (const e of evs) {
    expect(typeof e.name).toBe('string');
    expect(PHASES.has(e.ph), e.ph).toBe(true);
    expect(typeof e.ts).toBe('number');
    expect(e.ts).toBeGreaterThanOrEqual(0);
    expect(Number.isInteger(e.pid)).toBe(true);
    expect(Number.isInteger(e.tid)).toBe(true);
    if (e.ph === 'X') expect(e.dur).toBeGreaterThanOrEqual(0);
    if (e.ph === 'C') for (const v of Object.values(e.args!)) expect(typeof v).toBe('number');
    if (e.ph === 'i') expect(e.s).toBe('t');
  }
  // Metadata: the CPU lanes are named, one thread per CPU.
  const meta = evs.filter((e) => e.ph === 'M');
  expect(meta.find((e) => e.name === 'process_name' && e.pid === CPU_PID)?.args).toEqual({ name: 'CPUs' });
  for (let c = 0; c < cpus; c++) {
    expect(meta.find((e) => e.name === 'thread_name' && e.pid === CPU_PID && e.tid === cpuTid(c))?.args).toEqual({ name: `CPU ${c}` });
  }
  // Every track that has events has a thread name.
  const named = new Set(meta.filter((e) => e.name === 'thread_name').map((e) => `${e.pid}/${e.tid}`));
  for (const e of evs) if (e.ph !== 'M') expect(named.has(`${e.pid}/${e.tid}`), `${e.pid}/${e.tid}`).toBe(true);
  // X slices nest on every track (ns resolution).
  const ns = (us: number) => Math.round(us * 1000);
  const tracks = new Map<string, { s: number; e: number }[]>();
  for (const e of evs.filter((x) => x.ph === 'X')) {
    const key = `${e.pid}/${e.tid}`;
    if (!tracks.has(key)) tracks.set(key, []);
    tracks.get(key)!.push({ s: ns(e.ts), e: ns(e.ts + e.dur!) });
  }
  for (const list of tracks.values()) {
    list.sort((a, b) => a.s - b.s || b.e - b.s - (a.e - a.s));
    const stack: { s: number; e: number }[] = [];
    for (const x of list) {
      while (stack.length && stack[stack.length - 1]!.e <= x.s) stack.pop();
      if (stack.length) expect(x.e).toBeLessThanOrEqual(stack[stack.length - 1]!.e);
      stack.push(x);
    }
  }
  // Flows: s and f pair by id with the same name and cat; f binds its enclosing slice; both ends
  // lie inside a slice of their track; the arrow does not go back in time.
  const inSlice = (e: ChromeEvent) => (tracks.get(`${e.pid}/${e.tid}`) ?? []).some((x) => x.s <= ns(e.ts) && ns(e.ts) <= x.e);
  const starts = evs.filter((e) => e.ph === 's');
  const ends = evs.filter((e) => e.ph === 'f');
  expect(new Set(starts.map((e) => e.id)).size).toBe(starts.length);
  expect(ends.length).toBe(starts.length);
  for (const s of starts) {
    const f = ends.filter((e) => e.id === s.id);
    expect(f).toHaveLength(1);
    expect(f[0]!.name).toBe(s.name);
    expect(f[0]!.cat).toBe(s.cat);
    expect(f[0]!.bp).toBe('e');
    expect(f[0]!.ts).toBeGreaterThanOrEqual(s.ts);
    expect(inSlice(s)).toBe(true);
    expect(inSlice(f[0]!)).toBe(true);
  }
  return evs;
}

describe('Chrome / Perfetto JSON (formats.md §4.3)', () => {
  it('a shootdown run: lanes, task slices, IPI slices with flows to every receiver, instants, counters', () => {
    const { k, pids } = shootdownScenario();
    const evs = validateChrome(chromeTraceJson(k), 3);
    const raw = k.trace.snapshot();
    // One flow per IPI message whose handler is in the trace.
    const messages = raw.filter((e) => e.flowOut).reduce((n, e) => n + e.flowOut!.length, 0);
    expect(messages).toBe(5);
    expect(evs.filter((e) => e.ph === 's')).toHaveLength(5);
    // Each flow goes from the sender's lane to the receiver's: the first shootdown from CPU 0 to CPUs 1 and 2.
    const first = raw.find((e) => e.name === 'ipi:ipi_send_cpumask')!;
    for (const [i, id] of first.flowOut!.entries()) {
      expect(evs.find((e) => e.ph === 's' && e.id === id)!.tid).toBe(cpuTid(0));
      expect(evs.find((e) => e.ph === 'f' && e.id === id)!.tid).toBe(cpuTid(i + 1));
    }
    // Handler slices on the receivers' lanes, named after the vector.
    expect(evs.filter((e) => e.ph === 'X' && e.name === 'call_function')).toHaveLength(5);
    // A run slice per switch to a task, on that CPU's lane.
    const switchesIn = raw.filter((e) => e.name === 'sched:sched_switch' && e.fields.next_pid !== 0);
    const runs = evs.filter((e) => e.ph === 'X' && e.cat === 'sched');
    expect(runs).toHaveLength(switchesIn.length);
    expect(runs.filter((e) => e.args!.pid === pids.t1).every((e) => e.tid === cpuTid(1))).toBe(true);
    // Timestamps are µs of whole ns: the first run starts at the first switch.
    const ghz = k.machine.config.cost.clockGhz;
    expect(runs[0]!.ts).toBe(Math.floor(switchesIn[0]!.ts / ghz) / 1000);
    // Instants for faults and flushes; counters for flushes per CPU and free pages.
    expect(evs.filter((e) => e.ph === 'i' && e.name === 'page_fault_user').length).toBe(raw.filter((e) => e.name === 'exceptions:page_fault_user').length);
    for (let c = 0; c < 3; c++) {
      const counts = evs.filter((e) => e.ph === 'C' && e.name === `tlb_flush cpu${c}`).map((e) => e.args!.count as number);
      expect(counts[counts.length - 1]).toBe(raw.filter((e) => e.cpu === c && e.name === 'tlb:tlb_flush').length);
    }
    const free = evs.filter((e) => e.ph === 'C' && e.name === 'memory');
    const kmem = raw.filter((e) => e.name.startsWith('kmem:'));
    expect(free.length).toBe(kmem.length);
    // The value after the last allocation or free (in the order they happened) is the count now.
    const last = kmem[kmem.length - 1]!;
    const atLast = free.filter((e) => e.tid === cpuTid(last.cpu) && e.ts === Math.floor(last.ts / ghz) / 1000);
    expect(atLast.map((e) => e.args!.nr_free_pages)).toContain(k.pages.freeFrames);
    // After an allocation it is what the tracepoint sampled.
    const firstAlloc = kmem.find((e) => e.name === 'kmem:mm_page_alloc')!;
    expect(free.filter((e) => e.ts === Math.floor(firstAlloc.ts / ghz) / 1000).map((e) => e.args!.nr_free_pages)).toContain(firstAlloc.counters!.nr_free_pages);
    // mmap_lock waits are slices on the task's own track.
    const waits = evs.filter((e) => e.ph === 'X' && e.cat === 'mmap_lock');
    // One per start_locking; the acquire_returned of mmap_write_downgrade has no start.
    expect(waits.length).toBe(raw.filter((e) => e.name === 'mmap_lock:mmap_lock_start_locking').length);
    expect(raw.filter((e) => e.name === 'mmap_lock:mmap_lock_acquire_returned').length).toBeGreaterThan(waits.length);
    for (const w of waits) expect(w.pid).toBe(pids.main);
  });

  it('a wake-up: the reschedule IPI is a flow into the reschedule handler', () => {
    const k = wakeupScenario();
    const evs = validateChrome(chromeTraceJson(k), 2);
    const s = evs.filter((e) => e.ph === 's');
    expect(s).toHaveLength(1);
    expect(s[0]!.tid).toBe(cpuTid(1));
    const f = evs.find((e) => e.ph === 'f')!;
    expect(f.tid).toBe(cpuTid(0));
    const handler = evs.find((e) => e.ph === 'X' && e.name === 'reschedule')!;
    expect(handler.tid).toBe(cpuTid(0));
    expect(f.ts).toBeGreaterThanOrEqual(handler.ts);
    expect(f.ts).toBeLessThanOrEqual(handler.ts + handler.dur!);
  });

  it('slices that would cross a task run are cut to nest; unmatched flows are left out', () => {
    const ev = (cpu: number, ts: number, name: string, fields: TraceEvent['fields'], extra: Partial<TraceEvent> = {}): TraceEvent => ({ ts, cpu, pid: 5, tgid: 5, comm: 'a', name, fields, text: '', flags: '.....', ...extra });
    const sw = (cpu: number, ts: number, prev: number, next: number) => ev(cpu, ts, 'sched:sched_switch', { prev_comm: prev ? 'a' : `swapper/${cpu}`, prev_pid: prev, prev_state: 'S', next_comm: next ? 'a' : `swapper/${cpu}`, next_pid: next });
    const events = [
      sw(0, 0, 0, 5),
      ev(0, 900, 'irq_vectors:call_function_entry', { vector: 252 }, { flowIn: 99 }), // its sender is not in the trace
      sw(0, 1000, 5, 0),
      ev(0, 1500, 'irq_vectors:call_function_exit', { vector: 252 }),
      ev(0, 1200, 'ipi:ipi_send_cpu', { cpu: 1 }, { flowOut: [7] }), // its receiver is not in the trace
    ];
    const info = { cpus: 2, clockGhz: 1, ipiSendCycles: 100, ipiHandlerEntryCycles: 50 };
    const evs = validateChrome(JSON.stringify(toChromeTrace(events, info)), 2);
    const handler = evs.find((e) => e.name === 'call_function')!;
    expect(handler.ts).toBe(0.85);
    expect(handler.ts + handler.dur!).toBeCloseTo(1.0, 9); // cut at the end of the run
    expect(evs.filter((e) => e.ph === 's' || e.ph === 'f')).toEqual([]);
  });

  it('a task already running when the trace begins runs from the CPU\'s first event', () => {
    const fault: TraceEvent = { ts: 100, cpu: 0, pid: 5, tgid: 5, comm: 'a', name: 'exceptions:page_fault_user', fields: { address: 4096, ip: 0, error_code: 6 }, text: 'address=0x1000 ip=0x0 error_code=0x6', flags: 'd....' };
    const sw: TraceEvent = { ...fault, ts: 500, name: 'sched:sched_switch', fields: { prev_comm: 'a', prev_pid: 5, prev_prio: 120, prev_state: 'S', next_comm: 'swapper/0', next_pid: 0, next_prio: 120 }, text: '' };
    const evs = validateChrome(JSON.stringify(toChromeTrace([fault, sw], { cpus: 1, clockGhz: 1, ipiSendCycles: 1, ipiHandlerEntryCycles: 1 })), 1);
    const run = evs.filter((e) => e.ph === 'X');
    expect(run).toHaveLength(1);
    expect(run[0]).toMatchObject({ name: 'a [5]', ts: 0.1, dur: 0.4, tid: cpuTid(0), args: { pid: 5, end_state: 'S' } });
    expect(evs.find((e) => e.ph === 'i')).toMatchObject({ name: 'page_fault_user', cat: 'exceptions', ts: 0.1, tid: cpuTid(0) });
  });
});

// ---- determinism ----------------------------------------------------------------------------------

type Mods = {
  Kernel: typeof Kernel;
  ftraceText: typeof ftraceText;
  chromeTraceJson: typeof chromeTraceJson;
};

/** Fresh module instances: a new boot of mmulab in this process. */
async function freshModules(): Promise<Mods> {
  vi.resetModules();
  const kmod = await import('../../kernel/kernel.ts');
  const emod = await import('../../kernel/trace/export.ts');
  return { Kernel: kmod.Kernel, ftraceText: emod.ftraceText, chromeTraceJson: emod.chromeTraceJson };
}

/**
 * Parent (CPU 0) and child (CPU 1) share a page they have not touched; both sleep until the same
 * absolute time, so their CPUs tie and the seed decides who touches (and allocates) it first.
 */
function raceForAPage(m: Mods, seed: number): [string, string] {
  const k = new m.Kernel({ cpus: 2, memoryBytes: 16 << 20, trace: true, seed, clockGhz: 3 });
  const T = 2_000_000;
  const sleepUntil = (u: User) => u.call('sleep_until', (kk) => kk.sleepFor(T - kk.now()));
  k.spawn(
    function* parent(u: User) {
      const p = yield* u.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS);
      const c = yield* u.fork(function* child(v: User) {
        yield* sleepUntil(v);
        yield* v.store32(p, 2);
      }, 'child');
      yield* sleepUntil(u);
      yield* u.store32(p, 1);
      yield* u.wait(c);
    },
    { cpu: 0 },
  );
  expect(k.run({ maxSteps: 100_000 }).reason).toBe('done');
  return [m.ftraceText(k), m.chromeTraceJson(k)];
}

/** The time both racers wake at: 2,000,000 cycles at 3 GHz. */
const T_SECONDS = 2_000_000 / 3e9;

describe('determinism', () => {
  it('the same seed gives byte-identical ftrace text and JSON on a fresh boot', async () => {
    const a = raceForAPage(await freshModules(), 3);
    const b = raceForAPage(await freshModules(), 3);
    expect(a[0]).toBe(b[0]);
    expect(a[1]).toBe(b[1]);
    const c = wakeupTexts(await freshModules());
    const d = wakeupTexts(await freshModules());
    expect(c).toEqual(d);
  });

  it('different seeds decide a race differently, and the trace shows it', async () => {
    const texts = new Set<string>();
    const allocCpus = new Set<string>();
    for (let seed = 1; seed <= 6; seed++) {
      const [text] = raceForAPage(await freshModules(), seed);
      texts.add(text);
      // The shared page is allocated on the CPU that touched it first, after the wake-up at T.
      const late = text.split('\n').filter((l) => /mm_page_alloc/.test(l) && Number(/ (\d+\.\d{6}):/.exec(l)![1]) >= T_SECONDS);
      allocCpus.add(late.map((l) => /\[(\d{3})\]/.exec(l)![1]).join(','));
    }
    expect(texts.size).toBeGreaterThan(1);
    expect(allocCpus.size).toBeGreaterThan(1);
  });

  // Object numbers (mm ctx_id in mm=%p, inode numbers, binder debug ids) are per kernel
  // (kernel/ids.ts), so a second kernel in the same process prints the same values.
  it('two kernels in one process give byte-identical traces', () => {
    const m: Mods = { Kernel, ftraceText, chromeTraceJson };
    expect(raceForAPage(m, 3)[0]).toBe(raceForAPage(m, 3)[0]);
  });
});

function wakeupTexts(m: Mods): string[] {
  const k = new m.Kernel({ cpus: 2, memoryBytes: 16 << 20, quantum: 2000, trace: true, seed: 9 });
  k.spawn(
    function* parent(u: User) {
      const p = yield* u.mmap(0, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      for (let i = 0; i < 4; i++) yield* u.store32(p + i * 4096, i);
      const c = yield* u.fork(function* child(v: User) {
        yield* v.store32(p, 7);
        yield* v.sleep(60_000);
      });
      yield* u.wait(c);
    },
    { cpu: 0 },
  );
  k.run({ maxSteps: 100_000 });
  return [m.ftraceText(k), m.chromeTraceJson(k)];
}
