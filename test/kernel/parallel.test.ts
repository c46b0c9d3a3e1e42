// The kernel on the parallel engine (kernel/sched/parallel.ts, hw/remote.ts): user-mode access
// streams run on worker threads and come back to the kernel at faults, at IPIs for the kernel and
// at accesses to freed frames. Outcomes are checked, not interleavings: CPUs that share nothing
// count exactly what they count on the deterministic engine; a shootdown reaches a CPU whose user
// code is on a worker (its next access faults), and the planted missing flush lets that CPU read
// a freed frame, which KASAN reports from the task's context; a run stopped at a step limit goes
// on, on either engine; touchPages runs as a stream on a worker too; a sleeper beside a CPU that
// spins in user code wakes at its time; workers are started once per process and reused; deadlocks
// and bad options are reported.
import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { SignalError } from '../../kernel/signal.ts';
import { WaitQueue } from '../../kernel/sched/wait.ts';
import { accessStream, EngineError, type AccessStream } from '../../hw/engine.ts';
import { remotePoolStats } from '../../hw/remote.ts';
import type { User } from '../../kernel/uapi.ts';
import type { AccessKind } from '../../hw/cpu.ts';
import { cached } from './tlb-helpers.ts';

const PAGE = 4096;
const RW = PROT_READ | PROT_WRITE;
const ANON = MAP_PRIVATE | MAP_ANONYMOUS;
const BASE = 0x40000000;

/** `n` accesses over `pages` pages from `base`, a line at a time, every third one a store. */
function sweep(base: number, pages: number, n: number, kinds: AccessKind[] = ['write', 'read', 'read']): AccessStream {
  const out: [bigint, AccessKind][] = [];
  for (let i = 0; i < n; i++) out.push([BigInt(base + ((i * 64) % (pages * PAGE))), kinds[i % kinds.length]!]);
  return accessStream(out);
}

/** One process per CPU, each sweeping its own region: nothing shared between CPUs. */
function independent(cpus: number): Kernel {
  const k = new Kernel({ cpus, memoryBytes: 32 << 20 });
  for (let c = 0; c < cpus; c++) {
    const stream = sweep(BASE, 64 + 32 * c, 60_000 + 10_000 * c);
    k.spawn(
      function* (u: User) {
        yield* u.mmap(BASE, (64 + 32 * c) * PAGE, RW, ANON | MAP_FIXED);
        yield* u.run(stream);
        yield* u.run(stream);
        yield* u.munmap(BASE, (64 + 32 * c) * PAGE);
      },
      { comm: `p${c}`, cpu: c },
    );
  }
  return k;
}

const COUNTERS = ['accesses', 'l1Hits', 'l1Misses', 'stlbHits', 'walks', 'pageFaults'] as const;

describe('the kernel on the parallel engine', () => {
  it('CPUs that share nothing count exactly what they count on the deterministic engine', () => {
    const det = independent(3);
    expect(det.run().reason).toBe('done');
    const par = independent(3);
    const r = par.runParallel();
    expect(r.reason).toBe('done');
    expect(par.liveTasks()).toBe(0);
    for (let c = 0; c < 3; c++) {
      const a = det.machine.cpu(c).counters();
      const b = par.machine.cpu(c).counters();
      for (const name of COUNTERS) expect(b[name], `CPU ${c} ${name}`).toBe(a[name]);
      expect(b.accesses).toBeGreaterThan(100_000);
    }
    expect(par.pages.usedFrames).toBe(det.pages.usedFrames);
    expect(par.reports.reports).toEqual([]);
  });

  /**
   * A thread on CPU 1 keeps sweeping 8 pages from a worker while the main thread, on CPU 0,
   * unmaps them; then the sweeper sweeps once more and reports what it got: a signal (during a
   * sweep or the last one) or a completed sweep.
   */
  function unmapUnderSweeper(skipFlush: boolean) {
    const k = new Kernel({ cpus: 2, memoryBytes: 32 << 20 });
    const st = { sweeps: 0, unmapped: false, outcome: '' as string, cachedBefore: 0 };
    const stream = sweep(BASE, 8, 20_000, ['read']);
    k.spawn(
      function* (u: User) {
        yield* u.mmap(BASE, 8 * PAGE, RW, ANON | MAP_FIXED);
        for (let i = 0; i < 8; i++) yield* u.store32(BASE + i * PAGE, i + 1);
        const mm = u.task.mm!;
        yield* u.clone(
          function* (w: User) {
            try {
              // A sweep under way when the unmap lands faults too: the worker runs it meanwhile.
              while (!st.unmapped) {
                yield* w.run(stream);
                st.sweeps++;
              }
              yield* w.run(stream);
              st.outcome = 'completed';
            } catch (e) {
              if (!(e instanceof SignalError)) throw e;
              st.outcome = `signal ${e.signo}`;
            }
          },
          { cpu: 1 },
        );
        while (st.sweeps < 2) yield* u.sleep(20_000);
        st.cachedBefore = cached(k, 1, mm, BASE, BASE + 8 * PAGE).length;
        if (skipFlush) k.tlb.skipFlush = () => true;
        yield* u.munmap(BASE, 8 * PAGE);
        k.tlb.skipFlush = null;
        st.unmapped = true;
      },
      { cpu: 0 },
    );
    const r = k.runParallel({ maxSteps: 1_000_000 });
    return { k, r, st };
  }

  it('a shootdown reaches a CPU whose user code runs on a worker: its next access faults', () => {
    const { k, r, st } = unmapUnderSweeper(false);
    expect(r.reason).toBe('done');
    expect(st.cachedBefore).toBeGreaterThan(0);
    expect(st.outcome).toBe('signal 11');
    expect(k.machine.cpu(1).counters().ipisDelivered).toBeGreaterThan(0);
    expect(k.reports.count('KASAN')).toBe(0);
  });

  it('with the flush skipped (planted), the worker reads freed frames and KASAN reports it', () => {
    const { k, st } = unmapUnderSweeper(true);
    expect(st.outcome).toBe('completed');
    const kasan = k.reports.reports.filter((x) => x.kind === 'KASAN');
    expect(kasan.length).toBeGreaterThan(0);
    expect(kasan[0]!.text).toMatch(/BUG: KASAN: use-after-free/);
    expect(kasan[0]!.comm).toBeDefined();
    expect(kasan[0]!.data).toMatchObject({ source: 'user' });
  });

  it('a run stopped at a step limit goes on, on either engine, to the same end', () => {
    const whole = independent(2);
    whole.run();
    for (const next of ['deterministic', 'parallel'] as const) {
      const k = independent(2);
      const r = k.runParallel({ maxSteps: 3 });
      expect(r.reason).toBe('maxSteps');
      expect(k.liveTasks()).toBe(2);
      const rest = next === 'deterministic' ? k.run() : k.runParallel();
      expect(rest.reason).toBe('done');
      expect(k.liveTasks()).toBe(0);
      for (let c = 0; c < 2; c++) expect(k.machine.cpu(c).counters().accesses, `${next}, CPU ${c}`).toBe(whole.machine.cpu(c).counters().accesses);
    }
  });

  it('touchPages runs on a worker, counting what it counts on the deterministic engine', () => {
    const build = () => {
      const k = new Kernel({ cpus: 2, memoryBytes: 32 << 20 });
      for (let c = 0; c < 2; c++) {
        k.spawn(
          function* (u: User) {
            yield* u.mmap(BASE, (40 + c) * PAGE, RW, ANON | MAP_FIXED);
            // Faults on the first pass (writes, then reads of the zero page on the second range).
            yield* u.touchPages(BASE, BASE + 20 * PAGE, 'write');
            for (let i = 0; i < 50; i++) yield* u.touchPages(BASE + 100, BASE + (40 + c) * PAGE, 'read');
          },
          { comm: `t${c}`, cpu: c },
        );
      }
      return k;
    };
    const det = build();
    expect(det.run().reason).toBe('done');
    const par = build();
    const before = remotePoolStats().stretches;
    expect(par.runParallel().reason).toBe('done');
    // Each pass is a stretch on a worker (the 101 touchPages calls per CPU, more with faults).
    expect(remotePoolStats().stretches - before).toBeGreaterThanOrEqual(2 * 51);
    for (let c = 0; c < 2; c++) {
      const a = det.machine.cpu(c).counters();
      const b = par.machine.cpu(c).counters();
      for (const f of COUNTERS) expect(b[f], `CPU ${c} ${f}`).toBe(a[f]);
      // One access per page touched, and each faulting one made again after its fault.
      expect(b.pageFaults).toBe(40 + c);
      expect(b.accesses).toBe(20 + 50 * (40 + c) + b.pageFaults);
    }
  });

  it('a sleeper beside a CPU that spins in user code wakes at its time', () => {
    const k = new Kernel({ cpus: 2, memoryBytes: 16 << 20 });
    const st = { set: false, spins: 0, wokeAt: 0 };
    k.spawn(
      function* (u: User) {
        yield* u.mmap(BASE, PAGE, RW, ANON | MAP_FIXED);
        yield* u.store32(BASE, 1);
        // Busy in user mode (no sleep, no syscall) until the other CPU's thread says so.
        while (!st.set) {
          yield* u.load32(BASE);
          st.spins++;
        }
      },
      { comm: 'spinner', cpu: 0 },
    );
    k.spawn(
      function* (u: User) {
        yield* u.sleep(500_000);
        st.wokeAt = k.machine.cpu(1).cycles;
        st.set = true;
      },
      { comm: 'sleeper', cpu: 1 },
    );
    expect(k.runParallel({ maxSteps: 100_000 }).reason).toBe('done');
    expect(st.set).toBe(true);
    expect(st.wokeAt).toBeGreaterThanOrEqual(500_000);
    // Woken once the spinner got there, not a tick or more later.
    expect(k.machine.cpu(0).cycles).toBeLessThan(st.wokeAt + 2 * 100_000 + k.tickCycles / 4);
    expect(st.spins).toBeGreaterThan(0);
  });

  it('starts its workers once per process and attaches them to each later machine', () => {
    independent(2).runParallel();
    const s0 = remotePoolStats();
    for (let i = 0; i < 3; i++) expect(independent(2).runParallel().reason).toBe('done');
    const s1 = remotePoolStats();
    expect(s1.started).toBe(s0.started);
    expect(s1.attaches - s0.attaches).toBe(3 * 2);
    expect(s1.idle).toBeGreaterThanOrEqual(2);
  });

  it('reports a deadlock as the deterministic engine does', () => {
    const k = new Kernel({ cpus: 2, memoryBytes: 16 << 20 });
    const wq = new WaitQueue('never');
    k.spawn(function* (u: User) {
      yield* u.mmap(BASE, PAGE, RW, ANON | MAP_FIXED);
      yield* u.run(sweep(BASE, 1, 1_000, ['read']));
      yield* wq.sleep(k); // nobody wakes it
    });
    expect(() => k.runParallel()).toThrow(/^deadlock: nothing can run and CPU 0: idle; sleeping here: .*never/);
  });

  it('refuses bad options and checking mode with a clear error, leaving the kernel usable', () => {
    const k = independent(1);
    expect(() => k.runParallel({}, { workers: 0 })).toThrow(/workers must be an integer from 1 to 6, got 0/);
    expect(() => k.runParallel({ maxSteps: -1 })).toThrow(/run limit maxSteps must be a non-negative number/);
    expect(() => k.runParallel({}, { quantum: 0 })).toThrow(EngineError);
    expect(() => k.runOn('fast' as never)).toThrow(/unknown engine "fast" \(known: deterministic, parallel\)/);
    const checking = new Kernel({ cpus: 1, memoryBytes: 16 << 20, debugVm: true });
    expect(() => checking.runParallel()).toThrow(/checking mode \(debugVm\)/);
    expect(k.remote).toBe(null);
    expect(k.runParallel().reason).toBe('done');
  });
});
