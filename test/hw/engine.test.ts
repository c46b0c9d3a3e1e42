/**
 * hw/engine.ts — the deterministic engine: the same multi-CPU scenario (access streams whose page
 * faults are handled by demand-mapping with PageTableBuilder, plus a CPU that unmaps pages and
 * shoots them down with VEC_INVALIDATE IPIs) run twice with the same seed on fresh machines gives
 * byte-identical SharedArrayBuffers, and other seeds give another interleaving; scheduling in
 * virtual-time order with ties broken by the chooser; deadlock detection; run limits (maxSteps,
 * untilCycles); timed agents (Agent.wakeAt: one event at the wake-up, IPIs on time meanwhile);
 * the errors for bad options, bad agents and unhandled faults.
 */

import { describe, expect, it } from 'vitest';
import { Machine, PageTableBuilder, VEC_INVALIDATE, invalidatePagesPayload, LEVEL_PTE } from '../../hw/index.ts';
import type { Cpu } from '../../hw/cpu.ts';
import { DeterministicEngine, EngineError, ScriptAgent, StreamAgent, accessStream, type Agent, type AgentStatus } from '../../hw/engine.ts';
import { Random } from '../../hw/random.ts';

const BASE = 0x10000000;
const PAGES = 48;

/**
 * CPUs 0–2 run random streams over PAGES pages that start unmapped; a fault maps the page to the
 * next free frame. CPU 3 repeatedly unmaps a page and shoots it down on CPUs 0–2.
 */
function scenario(seed: number): { m: Machine; log: string[]; engine: DeterministicEngine } {
  const m = new Machine({ memoryBytes: 8 << 20, cpus: 4, tlb: { l1d4k: { sets: 4, ways: 2 }, stlb: { sets: 4, ways: 4 }, replacement: 'random' }, seed: 11 });
  const b = new PageTableBuilder(m, 0x100000, 0x180000);
  for (const c of m.cpus) {
    expect(c.writeCr3(BigInt(b.root))).toEqual({ ok: true });
  }
  let nextFrame = 0x400;
  const log: string[] = [];
  const onFault = (cpu: Cpu, f: { va: bigint; vector: number; errorCode: number }) => {
    if (f.vector !== 14) return 'stop' as const;
    const frame = nextFrame++;
    b.map(f.va & ~0xfffn, frame * 4096, { A: false, D: false });
    log.push(`cpu${cpu.index} maps ${f.va.toString(16)} → frame ${frame.toString(16)} at ${cpu.cycles}`);
    return 'retry' as const;
  };
  const engine = new DeterministicEngine(m, { seed, quantum: 400, jitter: 300 });
  for (let i = 0; i < 3; i++) {
    const rng = new Random(100 + i); // the workload is fixed; only the schedule depends on the seed
    const s = accessStream(Array.from({ length: 4000 }, () => [BASE + rng.below(PAGES) * 4096 + rng.below(512) * 8, rng.chance(0.3) ? 'write' : 'read'] as [number, 'read' | 'write']));
    engine.attach(i, new StreamAgent(s, onFault));
  }
  const rng = new Random(7);
  engine.attach(
    3,
    new ScriptAgent(function* (cpu, agent) {
      for (let round = 0; round < 12; round++) {
        cpu.charge(3000);
        yield 'run';
        const va = BigInt(BASE + rng.below(PAGES) * 4096);
        m.phys.write64(b.entryAddress(va, LEVEL_PTE), 0n);
        cpu.invlpg(va);
        const t = m.apic.send(cpu, [0, 1, 2], VEC_INVALIDATE, invalidatePagesPayload(va, 1));
        agent.readyWhen = () => m.apic.acked(t);
        yield 'wait';
        m.apic.settle(t);
        log.push(`cpu3 unmapped ${va.toString(16)}, acked at ${cpu.cycles}`);
      }
    }),
  );
  expect(engine.run()).toMatchObject({ reason: 'done' });
  for (const c of m.cpus) c.counters(); // fold pending L1 hits into the buffer
  return { m, log, engine };
}

function firstDifference(a: SharedArrayBuffer, b: SharedArrayBuffer): number {
  const x = new Uint8Array(a);
  const y = new Uint8Array(b);
  if (x.length !== y.length) return Math.min(x.length, y.length);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return i;
  return -1;
}

describe('determinism', () => {
  it('the same seed on fresh machines gives byte-identical machine buffers; other seeds interleave differently', () => {
    const a = scenario(1);
    const b = scenario(1);
    expect(a.log.length).toBeGreaterThan(PAGES);
    expect(a.log.filter((l) => l.startsWith('cpu3'))).toHaveLength(12);
    expect(a.m.totals()).toMatchObject({ ipisSent: 36, ipisDelivered: 36, ipisAcked: 36 });
    expect(b.log).toEqual(a.log);
    expect(firstDifference(a.m.sab, b.m.sab)).toBe(-1);
    expect(b.engine.steps).toBe(a.engine.steps);
    const others = [2, 3, 4].map((s) => scenario(s));
    expect(others.some((o) => o.log.join('\n') !== a.log.join('\n'))).toBe(true);
    expect(others.some((o) => firstDifference(o.m.sab, a.m.sab) !== -1)).toBe(true);
    // Whatever the schedule, every page ends up mapped by exactly one frame per fault.
    for (const o of [a, ...others]) expect(new Set(o.log.filter((l) => l.includes('→')).map((l) => l.split('frame ')[1]!.split(' ')[0])).size).toBe(o.log.filter((l) => l.includes('→')).length);
  });
});

/** An agent that charges `cost` cycles per step for `steps` steps and records when each step began. */
function ticker(name: string, cost: number, steps: number, trace: [string, number][]): Agent {
  let n = 0;
  return {
    step(cpu: Cpu): AgentStatus {
      trace.push([name, cpu.cycles]);
      cpu.charge(cost);
      return ++n >= steps ? 'done' : 'run';
    },
  };
}

function bare(cpus: number): Machine {
  const m = new Machine({ memoryBytes: 1 << 20, cpus });
  for (const c of m.cpus) c.cycles = 0;
  return m;
}

describe('scheduling', () => {
  it('always runs the CPU with the smallest clock; ties go to the chooser', () => {
    const m = bare(3);
    const trace: [string, number][] = [];
    const e = new DeterministicEngine(m, { seed: 1 });
    e.attach(0, ticker('a', 100, 6, trace));
    e.attach(1, ticker('b', 250, 3, trace));
    e.attach(2, ticker('c', 40, 10, trace));
    const choices: number[][] = [];
    e.chooser = (c) => {
      choices.push(c.cpus);
      return c.cpus.length - 1;
    };
    expect(e.run()).toEqual({ steps: 19, reason: 'done' });
    const clocks = trace.map(([, t]) => t);
    expect(clocks).toEqual([...clocks].sort((x, y) => x - y));
    expect(trace[0]).toEqual(['c', 0]); // the chooser picked the last of CPUs 0, 1, 2
    expect(choices[0]).toEqual([0, 1, 2]);
    expect(trace.filter(([n]) => n === 'a')).toHaveLength(6);
    expect(e.finished).toBe(true);
    expect([0, 1, 2].map((i) => e.status(i))).toEqual(['done', 'done', 'done']);
  });

  it('the default chooser is the seeded generator: the same seed picks the same order of ties', () => {
    const order = (seed: number) => {
      const m = bare(4);
      const trace: [string, number][] = [];
      const e = new DeterministicEngine(m, { seed });
      for (let i = 0; i < 4; i++) e.attach(i, ticker(`cpu${i}`, 100, 3, trace));
      e.run();
      return trace.map(([n]) => n).join(' ');
    };
    expect(order(5)).toBe(order(5));
    expect(new Set([1, 2, 3, 4, 5, 6].map(order)).size).toBeGreaterThan(1);
  });
});

describe('waiting CPUs and the lookahead', () => {
  it('a CPU woken from "wait" resumes when it was woken, so an IPI it sends then is taken on time', () => {
    const m = bare(3);
    for (const c of m.cpus) expect(c.writeCr0(c.readCr0() & ~(1n << 31n))).toEqual({ ok: true }); // paging off: 4 cycles an access
    for (const c of m.cpus) c.cycles = 0;
    const hw = m.config.cost.hw;
    let flag = false;
    let sentAt = -1;
    let takenAt = -1;
    m.apic.on(0x44, (cpu) => {
      takenAt = cpu.cycles - hw.ipiHandlerEntry;
    });
    const e = new DeterministicEngine(m, { seed: 1 });
    e.attach(0, new ScriptAgent(function* (cpu, agent) {
      agent.readyWhen = () => flag;
      yield 'wait';
      const t = m.apic.send(cpu, 2, 0x44);
      sentAt = cpu.cycles;
      agent.readyWhen = () => m.apic.acked(t);
      yield 'wait';
    }));
    e.attach(1, new ScriptAgent(function* (cpu) {
      cpu.charge(50_000);
      yield 'run';
      flag = true; // at 50,000 cycles
    }));
    e.attach(2, new StreamAgent(accessStream(Array.from({ length: 100_000 }, () => [0x1000, 'read'] as [number, 'read']))));
    expect(e.run().reason).toBe('done');
    expect(sentAt).toBeGreaterThanOrEqual(50_000 + hw.ipiSend);
    const visible = sentAt + hw.ipiLatency;
    expect(takenAt).toBeGreaterThanOrEqual(visible);
    expect(takenAt - visible).toBeLessThan(hw.access + 1);
  });
});

describe('parked agents (Agent.parked)', () => {
  it('a parked agent is not asked again until a recheck or an IPI, and then runs as a polled one would', () => {
    const run = (parkable: boolean) => {
      const m = bare(3);
      for (const c of m.cpus) c.cycles = 0;
      let flag = false;
      let asked = 0;
      const log: string[] = [];
      const e = new DeterministicEngine(m, { seed: 1, quantum: 1000 });
      let woke = false;
      // CPU 0 waits for the flag, CPU 1 sets it after 50,000 cycles and says so, CPU 2 is woken by an IPI.
      e.attach(0, {
        step: (cpu) => {
          if (!flag) return 'wait';
          log.push(`0 runs at ${cpu.cycles}`);
          return 'done';
        },
        ready: () => {
          asked++;
          return flag;
        },
        ...(parkable ? { parked: () => !flag } : {}),
      });
      e.attach(1, new ScriptAgent(function* (cpu, _agent, ctx) {
        for (let i = 0; i < 50; i++) {
          cpu.charge(1000);
          yield 'run';
        }
        flag = true;
        ctx.recheck(0);
        m.apic.send(cpu, 2, 0x46);
        log.push(`1 sends at ${cpu.cycles}`);
      }));
      m.apic.on(0x46, (cpu) => {
        woke = true;
        log.push(`2 takes the IPI at ${cpu.cycles}`);
      });
      e.attach(2, { step: () => (woke ? 'done' : 'wait'), ready: () => woke, ...(parkable ? { parked: () => !woke } : {}) });
      expect(e.run().reason).toBe('done');
      return { log, asked, steps: e.steps };
    };
    const polled = run(false);
    const parked = run(true);
    expect(parked.log).toEqual(polled.log);
    expect(parked.steps).toBe(polled.steps);
    expect(parked.log).toHaveLength(3);
    expect(parked.asked).toBeLessThan(polled.asked);
  });
});

describe('several engines on one machine', () => {
  it('the engine that runs owns the APIC send hook: an IPI still readies its parked agent', () => {
    const m = bare(2);
    for (const c of m.cpus) c.cycles = 0;
    const log: string[] = [];
    const e = new DeterministicEngine(m, { seed: 1, quantum: 1000 });
    let woke = false;
    e.attach(0, new ScriptAgent(function* (cpu) {
      for (let i = 0; i < 5; i++) {
        cpu.charge(1000);
        yield 'run';
      }
      m.apic.send(cpu, 1, 0x47);
    }));
    m.apic.on(0x47, (cpu) => {
      woke = true;
      log.push(`1 takes the IPI at ${cpu.cycles}`);
    });
    e.attach(1, { step: () => (woke ? 'done' : 'wait'), ready: () => woke, parked: () => !woke });
    // Another engine built on the same machine afterwards (and never run).
    new DeterministicEngine(m, { seed: 2 });
    expect(e.run().reason).toBe('done');
    expect(log).toHaveLength(1);
  });
});

describe('timed agents (Agent.wakeAt)', () => {
  /**
   * CPU 0 waits until `wake` (Agent.wakeAt), logging every step; CPU 1 runs 1,000 cycles a turn
   * for `turns` turns, logging the `until` of each; `more` sets up anything else.
   */
  function timed(wake: number, turns: number, more?: (m: Machine, e: DeterministicEngine, log: string[], cpu0: { readyAlso: () => boolean }) => void) {
    const m = bare(3);
    for (const c of m.cpus) c.cycles = 0;
    const log: string[] = [];
    const untils: number[] = [];
    const e = new DeterministicEngine(m, { seed: 1, quantum: 50_000 });
    const cpu0 = { readyAlso: () => false };
    e.attach(0, {
      step: (cpu) => {
        log.push(`0 steps at ${cpu.cycles}`);
        if (cpu.cycles < wake && !cpu0.readyAlso()) return 'wait';
        return 'done';
      },
      ready: (cpu) => cpu.cycles >= wake || cpu0.readyAlso(),
      wakeAt: () => wake,
    });
    let n = 0;
    e.attach(1, {
      step: (cpu, until) => {
        untils.push(until);
        cpu.charge(1000);
        return ++n < turns ? 'run' : 'done';
      },
    });
    more?.(m, e, log, cpu0);
    return { m, e, log, untils };
  }

  it('a timed agent is one event at its wake-up, and counts for the lookahead from then', () => {
    const wake = 100_000;
    const { m, e, log, untils } = timed(wake, 300);
    expect(e.run().reason).toBe('done');
    // Stepped at the start (it waits) and once at its wake-up, not in steps of the lookahead.
    expect(log).toEqual(['0 steps at 0', `0 steps at ${wake}`]);
    // Meanwhile CPU 1 ran ahead of CPU 0's clock, but never past the wake-up plus the latency.
    const lat = m.config.cost.hw.ipiLatency;
    const before = untils.slice(0, 95);
    expect(Math.max(...before)).toBeGreaterThan(lat);
    expect(Math.max(...before)).toBeLessThanOrEqual(wake + lat);
  });

  it('an IPI sent to a timed agent is taken when it becomes visible; the agent still wakes at its time', () => {
    const wake = 200_000;
    const hw = bare(1).config.cost.hw;
    let sentAt = -1;
    let takenAt = -1;
    const { e, log } = timed(wake, 1, (m, e2) => {
      m.apic.on(0x47, (cpu) => {
        takenAt = cpu.cycles - hw.ipiHandlerEntry;
      });
      e2.attach(2, new ScriptAgent(function* (cpu) {
        cpu.charge(50_000);
        yield 'run';
        m.apic.send(cpu, 0, 0x47);
        sentAt = cpu.cycles;
      }));
    });
    expect(e.run().reason).toBe('done');
    expect(sentAt).toBeGreaterThanOrEqual(50_000);
    expect(takenAt).toBe(sentAt + hw.ipiLatency);
    expect(log).toEqual(['0 steps at 0', `0 steps at ${wake}`]);
  });

  it('IPIs are taken in the order they were sent: one visible sooner waits behind the oldest', () => {
    const hw = bare(1).config.cost.hw;
    const taken: string[] = [];
    let sent1 = -1;
    let sent2 = -1;
    const { e, log } = timed(400_000, 1, (m, e2) => {
      m.apic.on(0x48, (cpu, msg) => {
        taken.push(`from ${msg.sender} at ${cpu.cycles - hw.ipiHandlerEntry}`);
      });
      // CPU 2 sends first, from a clock far ahead; CPU 1 later, from an earlier clock.
      e2.attach(2, new ScriptAgent(function* (cpu) {
        cpu.charge(100_000);
        m.apic.send(cpu, 0, 0x48);
        sent2 = cpu.cycles;
      }));
      e2.attach(1, new ScriptAgent(function* (cpu) {
        cpu.charge(50_000);
        yield 'run';
        m.apic.send(cpu, 0, 0x48);
        sent1 = cpu.cycles;
      }));
    });
    expect(e.run({ maxSteps: 10_000 }).reason).toBe('done');
    expect(sent1 + hw.ipiLatency).toBeLessThan(sent2 + hw.ipiLatency);
    const first = sent2 + hw.ipiLatency;
    expect(taken).toEqual([`from 2 at ${first}`, `from 1 at ${first + hw.ipiHandlerEntry}`]);
    expect(log).toEqual(['0 steps at 0', '0 steps at 400000']);
  });

  it('a recheck before the wake-up resumes the agent at the time of the step that made it', () => {
    let flag = false;
    const { e, log } = timed(1_000_000, 1, (m, e2, _log, cpu0) => {
      cpu0.readyAlso = () => flag;
      e2.attach(2, new ScriptAgent(function* (cpu, _agent, ctx) {
        cpu.charge(60_000);
        yield 'run';
        flag = true;
        ctx.recheck(0);
      }));
    });
    expect(e.run().reason).toBe('done');
    expect(log).toEqual(['0 steps at 0', '0 steps at 60000']);
  });

  it('untilCycles does not stop before a timed agent due earlier has run', () => {
    // CPU 1 passes 40,000 in the turn that starts at 39,000, before CPU 0's wake-up is taken.
    const { e, log } = timed(39_500, 100);
    expect(e.run({ untilCycles: 40_000 }).reason).toBe('until');
    expect(log).toEqual(['0 steps at 0', '0 steps at 39500']);
  });
});

describe('deadlock and quiescence', () => {
  it('two agents that wait forever: EngineError "deadlock"', () => {
    const m = bare(2);
    const e = new DeterministicEngine(m);
    const waiter = () =>
      new ScriptAgent(function* (_cpu, agent) {
        agent.readyWhen = () => false;
        yield 'wait';
      });
    e.attach(0, waiter());
    e.attach(1, waiter());
    expect(() => e.run()).toThrow(EngineError);
    expect(() => e.run()).toThrow(/deadlock/);
    expect([e.status(0), e.status(1)]).toEqual(['wait', 'wait']);
  });

  it('a waiting agent whose condition another CPU fulfils is not a deadlock', () => {
    const m = bare(2);
    const e = new DeterministicEngine(m);
    let flag = false;
    const log: string[] = [];
    e.attach(0, new ScriptAgent(function* (_cpu, agent) {
      agent.readyWhen = () => flag;
      yield 'wait';
      log.push('cpu0 woke');
    }));
    e.attach(1, new ScriptAgent(function* (cpu) {
      cpu.charge(5000);
      yield 'run';
      log.push('cpu1 sets the flag');
      flag = true;
    }));
    expect(e.run().reason).toBe('done');
    expect(log).toEqual(['cpu1 sets the flag', 'cpu0 woke']);
  });

  it('a waiting agent that says it is quiescent ends the run instead of deadlocking', () => {
    const m = bare(1);
    const e = new DeterministicEngine(m);
    e.attach(0, { step: () => 'wait', ready: () => false, quiescent: () => true });
    expect(e.run().reason).toBe('done');
    expect(e.status(0)).toBe('wait');
    const f = new DeterministicEngine(bare(1));
    f.attach(0, { step: () => 'wait', ready: () => false, quiescent: () => false, describe: () => 'a lock that nobody releases' });
    expect(() => f.run()).toThrow(/deadlock.*CPU 0: a lock that nobody releases/);
  });
});

describe('limits', () => {
  it('maxSteps stops after that many steps; running again continues', () => {
    const m = bare(2);
    const e = new DeterministicEngine(m);
    const trace: [string, number][] = [];
    e.attach(0, ticker('a', 10, 20, trace));
    e.attach(1, ticker('b', 10, 20, trace));
    expect(e.run({ maxSteps: 7 })).toEqual({ steps: 7, reason: 'maxSteps' });
    expect(trace).toHaveLength(7);
    expect(e.steps).toBe(7);
    expect(e.run()).toEqual({ steps: 33, reason: 'done' });
    expect(trace).toHaveLength(40);
  });

  it('untilCycles stops once every running CPU has reached the time', () => {
    const m = bare(2);
    const e = new DeterministicEngine(m, { quantum: 1000 });
    const s = accessStream(Array.from({ length: 100_000 }, () => [0x1000, 'read'] as [number, 'read']));
    // Paging off: every access costs exactly `access` cycles.
    for (const c of m.cpus) expect(c.writeCr0(c.readCr0() & ~(1n << 31n))).toEqual({ ok: true });
    for (const c of m.cpus) c.cycles = 0;
    e.attach(0, new StreamAgent(s));
    e.attach(1, new StreamAgent(accessStream(Array.from({ length: 100_000 }, () => [0x2000, 'write'] as [number, 'write']))));
    const r = e.run({ untilCycles: 50_000 });
    expect(r.reason).toBe('until');
    for (const c of m.cpus) {
      expect(c.cycles).toBeGreaterThanOrEqual(50_000);
      expect(c.cycles).toBeLessThan(50_000 + 1000 + 4);
    }
    expect(e.status(0)).toBe('run');
  });

  it('untilCycles does not stop while a waiting CPU still has an IPI to take before the time', () => {
    const m = bare(2);
    for (const c of m.cpus) expect(c.writeCr0(c.readCr0() & ~(1n << 31n))).toEqual({ ok: true });
    for (const c of m.cpus) c.cycles = 0;
    const latency = m.config.cost.hw.ipiLatency;
    let takenAt = -1;
    m.apic.on(0x45, (cpu) => {
      takenAt = cpu.cycles;
    });
    const e = new DeterministicEngine(m, { quantum: 1000 });
    // CPU 1 waits for something that never comes; CPU 0 sends it an IPI and ends.
    e.attach(1, { step: () => 'wait', ready: () => false, quiescent: () => true });
    e.attach(0, new ScriptAgent(function* (cpu) {
      m.apic.send(cpu, 1, 0x45);
    }));
    const until = 10 * latency;
    e.run({ untilCycles: until });
    expect(m.apic.pending(m.cpu(1))).toBe(0);
    expect(takenAt).toBeGreaterThanOrEqual(latency);
    expect(takenAt).toBeLessThan(until);
  });
});

describe('errors', () => {
  it.each([
    [{ quantum: 0 }, /quantum must be at least 1 cycle, got 0/],
    [{ quantum: -5 }, /quantum must be at least 1 cycle, got -5/],
    [{ quantum: NaN }, /quantum .* got NaN/],
    [{ quantum: Infinity }, /quantum .* got Infinity/],
    [{ jitter: -1 }, /jitter must be a non-negative number of cycles, got -1/],
    [{ jitter: NaN }, /jitter .* got NaN/],
  ])('bad options %o', (opts, msg) => {
    expect(() => new DeterministicEngine(bare(1), opts)).toThrow(EngineError);
    expect(() => new DeterministicEngine(bare(1), opts)).toThrow(msg);
  });

  it('bad agents, a bad chooser and a bad status', () => {
    const e = new DeterministicEngine(bare(2));
    expect(() => e.attach(2, { step: () => 'done' })).toThrow(RangeError);
    expect(() => e.attach(0, {} as Agent)).toThrow(new EngineError('an agent needs a step(cpu, until, ctx) method'));
    e.attach(0, { step: () => 'run' });
    e.attach(1, { step: () => 'run' });
    e.chooser = () => 7;
    expect(() => e.step()).toThrow(/chooser returned 7 for 2 candidates/);
    const f = new DeterministicEngine(bare(1));
    f.attach(0, { step: () => 'sleep' as AgentStatus });
    expect(() => f.run()).toThrow(/agent on CPU 0 returned status sleep/);
  });

  it('a stream fault without a handler, or with a handler returning nonsense, is an EngineError', () => {
    const m = bare(1);
    const s = accessStream([[0x7000n, 'write']]);
    const e = new DeterministicEngine(m);
    e.attach(0, new StreamAgent(s));
    expect(() => e.run()).toThrow(/CPU 0: access 0 \(write 0x7000\) raised vector 14 error code 0x2 and the stream has no fault handler/);
    const f = new DeterministicEngine(bare(1));
    f.attach(0, new StreamAgent(s, () => 'ignore' as 'skip'));
    expect(() => f.run()).toThrow(/fault handler returned ignore; expected retry, skip or stop/);
    expect(() => accessStream([[0x1000, 'exec' as 'read']])).toThrow(/access 0: kind must be read, write or fetch, got exec/);
  });

  it('skip and stop fault actions', () => {
    const m = bare(1);
    const faults: number[] = [];
    const agent = new StreamAgent(accessStream([[0x7000, 'read'], [0x8000, 'read'], [0x9000, 'read']]), (_c, f) => {
      faults.push(f.index);
      return f.index === 1 ? 'stop' : 'skip';
    });
    const e = new DeterministicEngine(m);
    e.attach(0, agent);
    expect(e.run().reason).toBe('done');
    expect(faults).toEqual([0, 1]);
    expect(agent.faults).toBe(2);
  });
});
