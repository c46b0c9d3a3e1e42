/**
 * test/bench/hw.bench.ts — benchmarks of the hardware layer (issue 2 §7 and issue 3 §7):
 * page walks with A set and with A/D to set, the bigint memory API, L1-TLB-hit translation, the
 * MMU's part of a page fault (fault, invalidation, re-walk and refill), a mixed access stream
 * through the deterministic engine, the parallel engine's scaling from one worker to two, the
 * IPI round trip between workers, and resident memory of a 4 GiB machine.
 */

import { Machine, PageTableBuilder, toVa } from '../../hw/index.ts';
import type { Cpu } from '../../hw/cpu.ts';
import { K_READ, K_WRITE, walk, walkFast4 } from '../../hw/walk.ts';
import { DeterministicEngine, StreamAgent, type AccessStream } from '../../hw/engine.ts';
import { ParallelEngine } from '../../hw/parallel.ts';
import { Random } from '../../hw/random.ts';
import type { BenchDef } from './harness.ts';

const PAGES = 4096;
// Module-local copies of the access kinds and the fast walker: optimized code reloads an
// imported binding from its module cell (with a hole check) at every use, a cost the tight loops
// below would otherwise measure.
const READ = K_READ;
const WRITE = K_WRITE;
const fastWalk4 = walkFast4;
const BASE = 0x7f0000000000;

/** A machine with PAGES consecutive 4 KiB pages mapped at BASE (A and D set unless told). */
function mappedMachine(opts: { psc?: boolean; ad?: boolean; cpus?: number } = {}) {
  const m = new Machine({ memoryBytes: 256 << 20, cpus: opts.cpus ?? 1, psc: { enabled: opts.psc ?? true } });
  const b = new PageTableBuilder(m, 0x100000, 0x2000000);
  const ad = opts.ad ?? true;
  const ptes: number[] = [];
  for (let i = 0; i < PAGES; i++) ptes.push(b.map(BASE + i * 4096, 0x4000000 + i * 4096, { A: ad, D: ad }));
  for (const c of m.cpus) c.writeCr3(BigInt(b.root));
  const his = new Int32Array(PAGES);
  const los = new Int32Array(PAGES);
  for (let i = 0; i < PAGES; i++) [his[i], los[i]] = toVa(BASE + i * 4096 + 64);
  return { m, b, ptes, his, los };
}

function walkWithA(): BenchDef {
  const { m, his, los } = mappedMachine({ psc: false });
  const cpu = m.cpu(0);
  // Set A on the upper levels once (the first walk of each page does it).
  for (let i = 0; i < PAGES; i++) walk(cpu, his[i]!, los[i]!, K_READ, 0, false, false);
  return {
    kind: 'micro',
    group: 'hw',
    name: 'page walk, 4-level, 4 KiB, A already set (fast walker)',
    batch: PAGES * 25,
    unit: 'walks/s',
    fn: () => walkEveryPage(cpu, his, los, 25),
    target: { atLeast: 40e6, source: 'issue 2 §7' },
  };
}

/**
 * `rounds` fast walks of every page. A function of its own, so the loop reads the CPU and the
 * address arrays from its parameters rather than from the closure's context (where each use is a
 * context load with a hole check).
 */
function walkEveryPage(cpu: Cpu, his: Int32Array, los: Int32Array, rounds: number): void {
  for (let r = 0; r < rounds; r++) for (let i = 0; i < PAGES; i++) fastWalk4(cpu, his[i]!, los[i]!, READ, 0, false);
}

function walkSettingAD(): BenchDef {
  const { m, ptes, his, los } = mappedMachine({ psc: false, ad: false });
  const cpu = m.cpu(0);
  const mem = m.phys.i32;
  return {
    kind: 'micro',
    group: 'hw',
    name: 'page walk that must set A and D (write; the leaf A/D are cleared before each walk)',
    batch: PAGES,
    unit: 'walks/s',
    fn: () => {
      for (let i = 0; i < PAGES; i++) {
        mem[ptes[i]! >>> 2] = mem[ptes[i]! >>> 2]! & ~0x60;
        walk(cpu, his[i]!, los[i]!, WRITE, 1, false, false);
      }
    },
  };
}

function bigintApi(): BenchDef {
  const m = new Machine({ memoryBytes: 16 << 20 });
  let v = 0x8000000012345067n;
  return {
    kind: 'micro',
    group: 'hw',
    name: 'bigint API: phys.write64 + phys.read64 (one pair)',
    batch: 10000,
    unit: 'pairs/s',
    fn: () => {
      for (let i = 0; i < 10000; i++) {
        const pa = (i & 1023) * 8;
        m.phys.write64(pa, v);
        v = m.phys.read64(pa) ^ 1n;
      }
    },
  };
}

function l1Hits(): BenchDef {
  const { m, his, los } = mappedMachine();
  const cpu = m.cpu(0);
  const N = 32; // a hot set that fits the 64-entry L1 DTLB
  for (let i = 0; i < N; i++) cpu.translate(his[i]!, los[i]!, K_READ, false, false);
  return {
    kind: 'micro',
    group: 'hw',
    name: 'translation on an L1 TLB hit, permission check included',
    batch: 1_000_000,
    unit: 'translations/s',
    fn: () => {
      let s = 0;
      for (let k = 0; k < 1_000_000; k++) s += cpu.translate(his[k & (N - 1)]!, los[k & (N - 1)]!, READ, false, false);
      if (s !== 0) throw new Error('a hot-set translation failed');
    },
    target: { atLeast: 100e6, source: 'issue 3 §7' },
  };
}

/**
 * The MMU's part of every anonymous page fault, without the kernel (the PTE is written directly):
 * a write walks to an empty PTE and faults, which invalidates the page's TLB entries and every
 * paging-structure-cache entry the address would use (SDM §4.10.4.1); the re-executed write walks
 * all four levels again and refills the STLB, the L1 DTLB and the three caches. The kernel
 * benchmark's fault rate includes this.
 */
function faultAndRetry(): BenchDef {
  const { m, ptes, his, los } = mappedMachine();
  const cpu = m.cpu(0);
  const mem = m.phys.i32;
  const present = Int32Array.from(ptes, (p) => mem[p >>> 2]!);
  const words = Int32Array.from(ptes, (p) => p >>> 2);
  return {
    kind: 'micro',
    group: 'hw',
    name: '#PF on a not-present PTE and the re-executed write (re-walk from the root and refill)',
    batch: PAGES,
    unit: 'faults/s',
    fn: () => faultEveryPage(cpu, mem, words, present, his, los),
  };
}

/** Empty every PTE, flush, then fault and retry each page in turn (see faultAndRetry). */
function faultEveryPage(cpu: Cpu, mem: Int32Array, words: Int32Array, present: Int32Array, his: Int32Array, los: Int32Array): void {
  for (let i = 0; i < PAGES; i++) mem[words[i]!] = 0;
  cpu.flushEverything();
  for (let i = 0; i < PAGES; i++) {
    if (cpu.translate(his[i]!, los[i]!, WRITE, false, false) !== -1) throw new Error('a write to an empty PTE did not fault');
    mem[words[i]!] = present[i]!;
    if (cpu.translate(his[i]!, los[i]!, WRITE, false, false) !== 0) throw new Error('the re-executed write faulted');
  }
}

/** 90% of accesses to a 32-page hot set, 10% spread over 4096 pages; 10% writes. */
function mixedStream(n: number, seed: number): AccessStream {
  const rng = new Random(seed);
  const s: AccessStream = { his: new Int32Array(n), los: new Int32Array(n), kinds: new Uint8Array(n), length: n };
  for (let i = 0; i < n; i++) {
    const page = rng.chance(0.9) ? rng.below(32) : rng.below(PAGES);
    [s.his[i], s.los[i]] = toVa(BASE + page * 4096 + rng.below(512) * 8);
    s.kinds[i] = rng.chance(0.1) ? K_WRITE : K_READ;
  }
  return s;
}

function deterministicMixed(): BenchDef {
  const N = 2_000_000;
  const stream = mixedStream(N, 42);
  return {
    kind: 'measured',
    group: 'hw',
    name: 'deterministic engine, 2 CPUs, mixed stream (90% hot-set hits)',
    unit: 'accesses/s',
    run: async () => {
      let best = 0;
      let detail = '';
      for (let r = 0; r < 5; r++) {
        const { m } = mappedMachine({ cpus: 2 });
        const eng = new DeterministicEngine(m, { seed: 1 });
        eng.attach(0, new StreamAgent(stream));
        eng.attach(1, new StreamAgent(stream));
        const t0 = performance.now();
        eng.run();
        const ms = performance.now() - t0;
        const rate = (2 * N) / (ms / 1000);
        if (rate > best) {
          best = rate;
          const t = m.totals();
          detail = `L1 hit rate ${((100 * t.l1Hits!) / t.accesses!).toFixed(1)}%, ${t.walks} walks, best of 5`;
        }
      }
      return { value: best, detail };
    },
    target: { atLeast: 20e6, source: 'issue 3 §7' },
  };
}

const agentsUrl = new URL('../hw/agents.ts', import.meta.url).href;

/** Accesses per CPU in the parallel-scaling figure. */
const PARALLEL_ACCESSES = 16_000_000;

function parallelScaling(): BenchDef {
  return {
    kind: 'measured',
    group: 'hw',
    name: 'parallel engine, hit-heavy stream: throughput of 2 workers ÷ 1 worker',
    unit: '×',
    run: async () => {
      // Five rounds, each measuring 1 worker then 2 (alternating, so a disturbed stretch of the
      // host hits both alike); the best round of each, as for the micro benchmarks.
      const rates = [0, 0];
      for (let r = 0; r < 5; r++) {
        for (const workers of [1, 2]) {
          const { m, b } = mappedMachine({ cpus: 2 });
          const pe = new ParallelEngine(m, { workers });
          // 16 M accesses per CPU: a run of a few hundred ms, long enough for the JIT's warm-up
          // (on the workers' own cores) not to weigh on the figure. They repeat a stream of
          // 4,096 random accesses (36 KiB of addresses and kinds), which stays in the host core's
          // cache as a program's addresses would; with 64 Ki (576 KiB per CPU) two workers
          // measured 1.7-1.8x, with the stream's reads from the shared cache a part of the figure.
          for (let c = 0; c < 2; c++) pe.assign(c, { module: agentsUrl, export: 'hotLoop', args: { base: '0x' + BASE.toString(16), pages: 32, count: PARALLEL_ACCESSES, distinct: 4096, seed: c + 1, cr3: String(b.root) } });
          const res = await pe.run();
          // Agent time excludes worker start-up (module loading; the workers start together);
          // the slowest worker bounds the run.
          const rate = (2 * PARALLEL_ACCESSES) / (Math.max(...res.workerMs) / 1000);
          rates[workers - 1] = Math.max(rates[workers - 1]!, rate);
        }
      }
      return { value: rates[1]! / rates[0]!, detail: `1 worker ${(rates[0]! / 1e6).toFixed(1)} M/s, 2 workers ${(rates[1]! / 1e6).toFixed(1)} M/s (agent time, best of 5 alternating rounds)` };
    },
    target: { atLeast: 1.6, source: 'issue 3 §7' },
  };
}

function ipiRoundTrip(): BenchDef {
  return {
    kind: 'measured',
    group: 'hw',
    name: 'IPI round trip between workers (send, remote handler, acknowledgement; wall clock)',
    unit: 'µs',
    run: async () => {
      const rounds = 20_000;
      const { m, b } = mappedMachine({ cpus: 2 });
      const pe = new ParallelEngine(m, { workers: 2 });
      pe.assign(0, { module: agentsUrl, export: 'pinger', args: { target: 1, rounds, cr3: String(b.root) } });
      pe.assign(1, { module: agentsUrl, export: 'idle' });
      const res = await pe.run();
      return { value: (res.workerMs[0]! * 1000) / rounds, detail: `${rounds} round trips, virtual cost per round ${(m.cpu(0).counters().ipiWaitCycles! / rounds).toFixed(0)} cycles` };
    },
  };
}

function residentMemory(): BenchDef {
  return {
    kind: 'measured',
    group: 'hw',
    name: 'resident memory of a 4 GiB machine after touching 64 frames',
    unit: 'MiB',
    run: async () => {
      const before = process.memoryUsage().rss;
      const m = new Machine({ memoryBytes: 4 * 1024 ** 3, cpus: 4 });
      for (let i = 0; i < 64; i++) m.phys.write64(i * 64 * 1024 * 1024, BigInt(i));
      const grew = (process.memoryUsage().rss - before) / (1 << 20);
      return { value: grew, detail: `SharedArrayBuffer of ${(m.sab.byteLength / 2 ** 30).toFixed(2)} GiB` };
    },
  };
}

export function hwBenchmarks(): BenchDef[] {
  return [walkWithA(), walkSettingAD(), bigintApi(), l1Hits(), faultAndRetry(), deterministicMixed(), parallelScaling(), ipiRoundTrip(), residentMemory()];
}
