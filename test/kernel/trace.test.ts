/**
 * kernel/trace/trace.ts — the tracepoints against their Linux definitions: ipi:ipi_send_cpu and
 * ipi:ipi_send_cpumask (include/trace/events/ipi.h: fields cpu|cpumask, callsite, callback; text
 * "cpu=%u callsite=%pS callback=%pS" / "cpumask=%s callsite=%pS callback=%pS", the cpumask
 * printed as trace_seq_bitmask's "%*pb"), irq_vectors:call_function_entry/_exit and
 * reschedule_entry/_exit (arch/x86/include/asm/trace/irq_vectors.h: field vector, "vector=%d",
 * CALL_FUNCTION_VECTOR 0xfc, RESCHEDULE_VECTOR 0xfd); each sent message linked to the handler
 * entry on its receiver; the ftrace context flags (hardirq 'h' and irqs-off 'd' in handlers,
 * 'd' at sched_switch, tlb_flush and page_fault_user); sched_switch naming the task that really
 * left (a chain per CPU), with prev_state S, X and "R+" as __trace_sched_switch_state gives them.
 */

import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import type { User } from '../../kernel/uapi.ts';
import { cpumaskHex, type TraceEvent } from '../../kernel/trace/trace.ts';
import { PAGE, shootdownScenario, wakeupScenario } from './trace_scenarios.ts';

const named = (evs: readonly TraceEvent[], name: string) => evs.filter((e) => e.name === name);

/** The CPUs of a cpumask printed as "%*pb". */
function maskCpus(mask: string): number[] {
  const out: number[] = [];
  mask.split(',').reverse().forEach((chunk, i) => {
    const v = parseInt(chunk, 16);
    for (let b = 0; b < 32; b++) if (v & (1 << b)) out.push(i * 32 + b);
  });
  return out;
}

describe('ipi:ipi_send_cpumask / ipi:ipi_send_cpu (include/trace/events/ipi.h)', () => {
  const { k, pids } = shootdownScenario();
  const evs = k.trace.events;

  it('a shootdown to two CPUs is an ipi_send_cpumask with the Linux fields and text', () => {
    const sends = named(evs, 'ipi:ipi_send_cpumask');
    // The munmap to the two running threads, then exit_mmap's to the two lazy CPUs.
    expect(sends.map((e) => e.fields.cpumask)).toEqual(['00000000,00000006', '00000000,00000005']);
    const e = sends[0]!;
    expect(Object.keys(e.fields)).toEqual(['cpumask', 'callsite', 'callback']);
    const m = /^cpumask=([0-9a-f]{8}(?:,[0-9a-f]{8})*) callsite=(\S+) callback=(\S+)$/.exec(e.text);
    expect(m).not.toBeNull();
    expect(m![1]).toBe('00000000,00000006'); // CPUs 1 and 2, "%*pb" over one 64-bit long
    expect(m![2]).toBe('smp_call_function_many_cond');
    expect(m![3]).toBe('generic_smp_call_function_single_interrupt'); // send_call_function_ipi_mask's callback
    expect(e.fields.cpumask).toBe(m![1]);
    expect(e.cpu).toBe(0);
    expect(e.pid).toBe(pids.main);
    expect(e.flags).toBe('.....'); // smp_call_function_many_cond runs with interrupts on
    expect(e.flowOut).toHaveLength(2);
  });

  it('a shootdown to one CPU is ipi_send_cpu', () => {
    const sends = named(evs, 'ipi:ipi_send_cpu');
    expect(sends).toHaveLength(1);
    const e = sends[0]!;
    expect(Object.keys(e.fields)).toEqual(['cpu', 'callsite', 'callback']);
    expect(e.text).toMatch(/^cpu=\d+ callsite=\S+ callback=\S+$/);
    expect(e.text).toBe('cpu=1 callsite=smp_call_function_many_cond callback=generic_smp_call_function_single_interrupt');
    expect(e.fields.cpu).toBe(1);
    expect(e.flowOut).toHaveLength(1);
  });

  it('each message enters call_function on its target in hardirq context, linked to its send', () => {
    const sends = evs.filter((e) => e.name.startsWith('ipi:ipi_send_'));
    const entries = named(evs, 'irq_vectors:call_function_entry');
    expect(entries).toHaveLength(5);
    for (const s of sends) {
      const targets = s.name === 'ipi:ipi_send_cpu' ? [Number(s.fields.cpu)] : maskCpus(String(s.fields.cpumask));
      s.flowOut!.forEach((id, i) => {
        const en = entries.filter((x) => x.flowIn === id);
        expect(en).toHaveLength(1);
        expect(en[0]!.cpu).toBe(targets[i]);
        expect(en[0]!.ts).toBeGreaterThanOrEqual(s.ts + k.machine.cpu(0).cost.ipiLatency);
      });
    }
    for (const en of entries) {
      expect(en.fields).toEqual({ vector: 0xfc });
      expect(en.text).toBe('vector=252');
      expect(en.flags).toBe('d.h..');
    }
  });

  it('the handler runs between entry and exit on the same CPU, in the interrupted task\'s context', () => {
    for (let cpu = 0; cpu <= 2; cpu++) {
      const mine = evs.filter((e) => e.cpu === cpu);
      let open: TraceEvent | null = null;
      let inside = 0;
      for (const e of mine) {
        if (e.name === 'irq_vectors:call_function_entry') {
          expect(open).toBeNull();
          open = e;
        } else if (e.name === 'irq_vectors:call_function_exit') {
          expect(open).not.toBeNull();
          expect(e.text).toBe('vector=252');
          expect(e.flags).toBe('d.h..');
          expect(e.ts).toBeGreaterThanOrEqual(open!.ts);
          open = null;
        } else if (open) {
          inside++;
          expect(e.flags).toBe('d.h..');
          expect(e.pid).toBe(open.pid);
          // A running CPU flushes; a lazy one drops the mm (switch_mm_irqs_off to init_mm).
          if (e.name === 'tlb:tlb_flush') expect(e.text).toMatch(/^pages:(\d+ reason:remote shootdown \(1\)|0 reason:flush on task switch \(0\))$/);
        }
      }
      expect(open).toBeNull();
      expect(inside).toBeGreaterThan(0);
    }
    // The threads were running when the shootdown of 4 pages came: it interrupted them.
    const first = named(evs, 'irq_vectors:call_function_entry').slice(0, 2);
    expect(first.map((e) => e.pid).sort()).toEqual([pids.t1, pids.t2].sort());
    expect(first.map((e) => e.comm).sort()).toEqual(['worker1', 'worker2']);
  });

  it('context flags: tlb_flush and page_fault_user are irqs-off, mmap_lock events are not', () => {
    const outside = (e: TraceEvent) => !e.flags.includes('h');
    const flushes = named(evs, 'tlb:tlb_flush').filter(outside);
    expect(flushes.length).toBeGreaterThan(0);
    for (const e of flushes) expect(e.flags).toBe('d....');
    const faults = named(evs, 'exceptions:page_fault_user');
    expect(faults.length).toBeGreaterThanOrEqual(16);
    for (const e of faults) expect(e.flags).toBe('d....');
    const locks = evs.filter((e) => e.name.startsWith('mmap_lock:'));
    expect(locks.length).toBeGreaterThan(0);
    for (const e of locks) expect(e.flags).toBe('.....');
    for (const e of evs) expect(e.flags).toMatch(/^[d.]\.[h.]\.\.$/);
  });

  it('every event carries the tgid of its task', () => {
    for (const e of evs) {
      if (e.pid === 0) expect(e.tgid).toBe(0);
      else expect(e.tgid).toBe(pids.main);
    }
  });
});

describe('reschedule IPI (smp_send_reschedule, sysvec_reschedule_ipi)', () => {
  const k = wakeupScenario();
  const evs = k.trace.events;

  it('the waker traces ipi_send_cpu with a NULL callback and the target enters reschedule', () => {
    const sends = named(evs, 'ipi:ipi_send_cpu');
    expect(sends).toHaveLength(1);
    const s = sends[0]!;
    expect(s.text).toBe('cpu=0 callsite=resched_curr callback=0x0');
    expect(s.cpu).toBe(1);
    expect(s.flags).toBe('d....'); // the waker holds p->pi_lock with interrupts off
    const entry = named(evs, 'irq_vectors:reschedule_entry');
    const exit = named(evs, 'irq_vectors:reschedule_exit');
    expect(entry).toHaveLength(1);
    expect(exit).toHaveLength(1);
    expect(entry[0]!.text).toBe('vector=253');
    expect(exit[0]!.text).toBe('vector=253');
    expect(entry[0]!.cpu).toBe(0);
    expect(entry[0]!.flowIn).toBe(s.flowOut![0]);
    expect(entry[0]!.flags).toBe('d.h..');
  });
});

describe('sched:sched_switch', () => {
  const check = (evs: readonly TraceEvent[], cpus: number) => {
    const states = new Set<string>();
    for (let cpu = 0; cpu < cpus; cpu++) {
      let last = 0; // swapper
      for (const e of evs.filter((x) => x.cpu === cpu && x.name === 'sched:sched_switch')) {
        const f = e.fields;
        expect(f.prev_pid).toBe(last);
        expect(e.pid).toBe(f.prev_pid);
        expect(e.flags).toBe('d....');
        if (f.prev_pid === 0) expect(f.prev_comm).toBe(`swapper/${cpu}`);
        if (f.next_pid === 0) expect(f.next_comm).toBe(`swapper/${cpu}`);
        expect(f.prev_pid).not.toBe(f.next_pid);
        expect(e.text).toBe(`prev_comm=${f.prev_comm} prev_pid=${f.prev_pid} prev_prio=120 prev_state=${f.prev_state} ==> next_comm=${f.next_comm} next_pid=${f.next_pid} next_prio=120`);
        states.add(String(f.prev_state));
        last = Number(f.next_pid);
      }
    }
    return states;
  };

  it('prev_* is the task that left: a chain on each CPU, with swapper/N while idle', () => {
    const { k } = shootdownScenario();
    const states = check(k.trace.snapshot(), 3);
    expect(states.has('S')).toBe(true); // main's sleep
    expect(states.has('X')).toBe(true); // the threads' exits
    const k2 = wakeupScenario();
    expect(check(k2.trace.snapshot(), 2).has('S')).toBe(true);
  });

  it('a task preempted at the end of its time slice leaves as R+ (TASK_REPORT_MAX)', () => {
    const k = new Kernel({ cpus: 1, memoryBytes: 16 << 20, trace: true, costs: { timeSlice: 20_000 } });
    const spin = function* (u: User) {
      const p = yield* u.mmap(0, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      for (let i = 0; i < 20_000; i++) yield* u.load32(p);
    };
    k.spawn(spin, { comm: 'a' });
    k.spawn(spin, { comm: 'b' });
    k.run({ maxSteps: 1_000_000 });
    const states = check(k.trace.snapshot(), 1);
    expect(states.has('R+')).toBe(true);
  });

  it('the switch to idle of a task that left, with nothing after it on its CPU, is in the snapshot only', () => {
    const k = new Kernel({ cpus: 1, memoryBytes: 16 << 20, trace: true });
    k.spawn(function* sleeper(u: User) {
      yield* u.sleep(10_000_000);
    });
    k.run({ untilCycles: 1_000_000 });
    const buffered = named(k.trace.events, 'sched:sched_switch');
    const snap = named(k.trace.snapshot(), 'sched:sched_switch');
    expect(snap.length).toBe(buffered.length + 1);
    const last = snap[snap.length - 1]!;
    expect(last.fields.next_pid).toBe(0);
    expect(last.fields.prev_state).toBe('S');
    expect(last.comm).toBe('sleeper');
    expect(last.flags).toBe('d....');
  });
});

describe('recording off', () => {
  it('records nothing, IPIs included', () => {
    const k = new Kernel({ cpus: 2, memoryBytes: 16 << 20, quantum: 2000 });
    k.spawn(function* (u: User) {
      const c = yield* u.fork(function* (v: User) {
        yield* v.sleep(60_000);
      });
      yield* u.wait(c);
    }, { cpu: 0 });
    k.run({ maxSteps: 100_000 });
    expect(k.trace.events).toEqual([]);
    expect(k.trace.snapshot()).toEqual([]);
  });
});

describe('cpumaskHex (trace_seq_bitmask "%*pb" of a __cpumask field)', () => {
  it('prints 32-bit hex chunks, most significant first, over whole 64-bit longs', () => {
    expect(cpumaskHex([1, 2], 4)).toBe('00000000,00000006');
    expect(cpumaskHex([0, 33], 40)).toBe('00000002,00000001');
    expect(cpumaskHex([31], 8)).toBe('00000000,80000000');
    expect(cpumaskHex([64], 65)).toBe('00000000,00000001,00000000,00000000');
  });
});
