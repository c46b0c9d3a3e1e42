/**
 * kernel/sched/explore.ts and the choice window of hw/engine.ts — the window widens the engine's
 * choice from exact clock ties to every CPU within `window` cycles (0 keeps the old behaviour);
 * exploration by seeds, by depth-first enumeration of choice points within a preemption bound,
 * and by random walks; replay of a recorded schedule, and its divergence checks. The planted race:
 * a munmap that frees a page before shooting down the other CPU's TLB (a flush deferred past a
 * preemption point) lets a thread read the freed frame through its stale TLB entry, which KASAN
 * reports — under some interleavings only.
 */

import { beforeAll, describe, expect, it } from 'vitest';
import { Machine } from '../../hw/machine.ts';
import { DeterministicEngine, EngineError, type Agent, type Choice } from '../../hw/engine.ts';
import { Kernel } from '../../kernel/kernel.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE, do_vmi_munmap } from '../../kernel/mm/mmap.ts';
import type { User } from '../../kernel/uapi.ts';
import { SignalError } from '../../kernel/signal.ts';
import { ANY_CPU, ScheduleDivergence, explore, outcomeKey, replay, type ExploreResult, type Schedule, type ScheduleSetup } from '../../kernel/sched/explore.ts';

const PAGE = 4096;

// ---- hw/engine.ts: the choice window ------------------------------------------------------------

function ticker(name: string, period: number, steps: number, log: [string, number][]): Agent {
  let n = 0;
  return {
    step(cpu) {
      log.push([name, cpu.cycles]);
      cpu.charge(period);
      return ++n >= steps ? 'done' : 'run';
    },
  };
}

function bare(cpus: number): Machine {
  const m = new Machine({ memoryBytes: 1 << 20, cpus });
  for (const c of m.cpus) c.cycles = 0;
  return m;
}

describe('DeterministicEngine choice window', () => {
  it('window 0 (the default): the chooser sees exact ties only and the smallest clock runs', () => {
    const m = bare(2);
    const log: [string, number][] = [];
    const e = new DeterministicEngine(m, { seed: 1 });
    expect(e.window).toBe(0);
    e.attach(0, ticker('a', 100, 9, log));
    e.attach(1, ticker('b', 150, 6, log));
    const seen: Choice[] = [];
    e.chooser = (c) => (seen.push(c), 0);
    e.run();
    for (const c of seen) {
      expect(c.times).toBeUndefined();
      expect(c.cpus).toEqual([0, 1]);
    }
    expect(seen.map((c) => c.time)).toEqual([0, 300, 600]); // where 100·i = 150·j
    // Each step ran a CPU whose clock was the smallest.
    const clocks = log.map(([, t]) => t);
    expect(clocks).toEqual([...clocks].sort((x, y) => x - y));
  });

  it('a window makes every CPU within it a candidate, with its time and the previous pick', () => {
    const m = bare(2);
    const log: [string, number][] = [];
    const e = new DeterministicEngine(m, { seed: 1, window: 120 });
    e.attach(0, ticker('a', 100, 9, log));
    e.attach(1, ticker('b', 150, 6, log));
    const seen: Choice[] = [];
    let last = -1;
    e.chooser = (c) => {
      seen.push(c);
      expect(c.previous).toBe(last);
      const pick = c.cpus.length - 1; // always the later CPU: it overtakes
      last = c.cpus[pick]!;
      return pick;
    };
    const orig = e.step.bind(e);
    e.step = () => {
      const r = orig();
      last = e.lastPick;
      return r;
    };
    e.run();
    expect(seen.length).toBeGreaterThan(3);
    let overtook = false;
    for (const c of seen) {
      expect(c.times).toHaveLength(c.cpus.length);
      expect(Math.min(...c.times!)).toBe(c.time);
      for (const t of c.times!) expect(t - c.time).toBeLessThanOrEqual(120);
      expect([...c.cpus].sort()).toEqual(c.cpus);
      if (c.times![c.times!.length - 1]! > c.time) overtook = true;
    }
    expect(overtook).toBe(true);
    // Clock order is kept to within the window.
    let maxSeen = 0;
    for (const [, t] of log) {
      expect(t).toBeGreaterThanOrEqual(maxSeen - 120);
      maxSeen = Math.max(maxSeen, t);
    }
  });

  it('an unbounded window lets a chooser run one CPU to completion before the other starts', () => {
    const m = bare(2);
    const log: [string, number][] = [];
    const e = new DeterministicEngine(m, { seed: 1, window: ANY_CPU });
    e.attach(0, ticker('a', 100, 5, log));
    e.attach(1, ticker('b', 100, 5, log));
    e.chooser = (c) => c.cpus.length - 1;
    e.run();
    expect(log.map(([n]) => n).join('')).toBe('bbbbbaaaaa');
  });

  it('the default interleaving is the same whether or not window 0 is given', () => {
    const order = (opts: { window?: number }) => {
      const m = bare(3);
      const log: [string, number][] = [];
      const e = new DeterministicEngine(m, { seed: 4, ...opts });
      for (let i = 0; i < 3; i++) e.attach(i, ticker(`c${i}`, 100, 4, log));
      e.run();
      return log.map(([n]) => n).join(' ');
    };
    expect(order({ window: 0 })).toBe(order({}));
  });

  it('rejects a window that is not a non-negative number', () => {
    expect(() => new DeterministicEngine(bare(1), { window: -1 })).toThrow(EngineError);
    expect(() => new DeterministicEngine(bare(1), { window: Number.NaN })).toThrow(/window must be a non-negative number/);
  });
});

// ---- the planted race -----------------------------------------------------------------------------

/**
 * main (CPU 0) writes a page, so CPU 0's TLB maps it, and starts a thread on CPU 1 that unmaps the
 * page with a planted bug: the page is freed before the TLB shootdown, which comes only after a
 * preemption point. main then reads the page once. Outcomes: "read 42" (main read before the
 * unmap), a read of the freed frame's poison with a KASAN use-after-free report (main read through
 * its stale TLB entry between the free and the flush), or SIGSEGV (main read after the flush).
 */
function stalePageRace(setup: ScheduleSetup): string {
  const k = setup.kernel({ cpus: 2, memoryBytes: 16 << 20 });
  let seen = 'nothing';
  k.spawn(
    function* main(u: User) {
      const p = yield* u.mmap(0, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* u.store32(p, 42);
      yield* u.clone(
        function* unmapper(v: User) {
          yield* v.call('munmap_without_flush', function* (kk, t) {
            const mm = t.mm!;
            kk.tlb.skipFlush = (info) => info.mm === mm; // the bug: zap and free, no shootdown
            try {
              yield* kk.locks.mmap_write_lock(mm, 'munmap_without_flush');
              const r = yield* do_vmi_munmap(kk, mm, p, PAGE, true);
              if (mm.mmap_lock.heldBy(kk.current, 'write')) kk.locks.mmap_write_unlock(mm);
              else kk.locks.mmap_read_unlock(mm);
              return r;
            } finally {
              kk.tlb.skipFlush = null;
            }
          });
          yield* v.yield();
          yield* v.call('late_flush', (kk, t) => kk.tlb.flush_tlb_mm(t.mm!));
        },
        { cpu: 1 },
      );
      yield* u.yield();
      try {
        seen = `read ${yield* u.load32(p)}`;
      } catch (e) {
        if (!(e instanceof SignalError)) throw e;
        seen = 'SIGSEGV';
      }
    },
    { cpu: 0 },
  );
  expect(k.run({ maxSteps: 100_000 }).reason).toBe('done');
  const uaf = k.reports.reports.some((r) => r.title.startsWith('BUG: KASAN: use-after-free'));
  return uaf ? `${seen}, use-after-free` : seen;
}

const isBad = (o: string) => o.endsWith('use-after-free');

describe('explore: the stale-TLB race', () => {
  let dfs: ExploreResult<string>;
  beforeAll(() => {
    dfs = explore(stalePageRace, { strategy: 'dfs', preemptionBound: 2, schedules: 500 });
  });

  it('depth-first search within 2 preemptions finds the good and the bad outcome, and ends', () => {
    expect(dfs.exhausted).toBe(true);
    const keys = dfs.outcomes.map((o) => o.outcome);
    expect(keys).toContain('read 42');
    const bad = dfs.outcomes.filter((o) => isBad(o.outcome));
    expect(bad).toHaveLength(1);
    expect(bad[0]!.outcome).toMatch(/^read \d+, use-after-free$/);
    expect(bad[0]!.outcome).not.toBe('read 42, use-after-free'); // it read the poisoned frame
    expect(dfs.outcomes.reduce((n, o) => n + o.runs, 0)).toBe(dfs.runs);
    for (const o of dfs.outcomes) expect(o.schedule.choices!.length).toBeGreaterThan(0);
  });

  it('replaying the bad schedule reproduces it, also after a JSON round trip, every time', () => {
    const bad = dfs.outcomes.find((o) => isBad(o.outcome))!;
    expect(replay(stalePageRace, bad.schedule)).toBe(bad.outcome);
    expect(replay(stalePageRace, bad.schedule)).toBe(bad.outcome);
    const json = JSON.parse(JSON.stringify(bad.schedule)) as Schedule;
    expect(json).toEqual(bad.schedule);
    expect(replay(stalePageRace, json)).toBe(bad.outcome);
    const good = dfs.outcomes.find((o) => o.outcome === 'read 42')!;
    expect(replay(stalePageRace, good.schedule)).toBe('read 42');
  });

  it('the preemption bound limits the search: without preemptions the bad order is never run', () => {
    const none = explore(stalePageRace, { strategy: 'dfs', preemptionBound: 0, schedules: 500 });
    expect(none.exhausted).toBe(true);
    expect(none.runs).toBeLessThan(dfs.runs);
    expect(none.outcomes.some((o) => isBad(o.outcome))).toBe(false);
  });

  it('random walks find both outcomes too, and their schedules replay', () => {
    const r = explore(stalePageRace, { strategy: 'random', schedules: 30, seed: 5 });
    expect(r.runs).toBe(30);
    expect(r.outcomes.some((o) => isBad(o.outcome))).toBe(true);
    expect(r.outcomes.some((o) => !isBad(o.outcome))).toBe(true);
    for (const o of r.outcomes) expect(replay(stalePageRace, o.schedule)).toBe(o.outcome);
  });

  it('seeds: the schedule is the seed and replays', () => {
    const r = explore(stalePageRace, { strategy: 'seeds', schedules: 4 });
    expect(r.runs).toBe(4);
    for (const o of r.outcomes) {
      expect(o.schedule.choices).toBeUndefined();
      expect(o.schedule.window).toBe(0);
      expect(replay(stalePageRace, o.schedule)).toBe(o.outcome);
    }
  });

  it('replay fails loudly when the run leaves the recorded schedule', () => {
    const bad = dfs.outcomes.find((o) => isBad(o.outcome))!.schedule;
    const choices = bad.choices!;
    expect(() => replay(stalePageRace, { ...bad, choices: [7, ...choices.slice(1)] })).toThrow(ScheduleDivergence);
    expect(() => replay(stalePageRace, { ...bad, choices: [...choices, 0] })).toThrow(/the schedule records/);
    expect(() => replay(stalePageRace, { ...bad, choices: choices.slice(0, -1) })).toThrow(/more choice points than/);
  });
});

describe('explore: contracts', () => {
  it('a scenario must build its kernel through the setup', () => {
    expect(() => explore(() => new Kernel({ cpus: 1 }).run(), { strategy: 'seeds', schedules: 1 })).toThrow(/did not attach its schedule/);
    expect(() => explore((s) => s.attach(new Kernel({ cpus: 1, quantum: 5 })), { strategy: 'seeds', schedules: 1 })).toThrow(/quantum/);
  });

  it('outcomes are compared by canonical JSON', () => {
    expect(outcomeKey({ a: 1, b: { d: 2, c: 3 } })).toBe(outcomeKey({ b: { c: 3, d: 2 }, a: 1 }));
    expect(outcomeKey({ a: 1 })).not.toBe(outcomeKey({ a: 2 }));
    let n = 0;
    const r = explore(
      (s) => {
        s.kernel({ cpus: 1, memoryBytes: 4 << 20 });
        return n++ % 2 ? { fixed: true, n: 1 } : { n: 0, fixed: true };
      },
      { strategy: 'seeds', schedules: 4 },
    );
    expect(r.outcomes.map((o) => [o.key, o.runs, o.schedule.seed])).toEqual([
      ['{"fixed":true,"n":0}', 2, 1],
      ['{"fixed":true,"n":1}', 2, 2],
    ]);
  });
});
