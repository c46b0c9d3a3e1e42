/**
 * src/workloads/touch.ts — the touch workloads of `mmulab run`: one process maps an anonymous
 * region and touches it in a pattern, from one thread or several sharing the region:
 *
 *   sequential  cache line after cache line (64-byte steps), wrapping at the end of the region
 *   strided     steps of --stride bytes (default one page: every access on a new page)
 *   random      a uniformly random cache line of the region
 *   zipf        a page drawn from a Zipf distribution of exponent --zipf (rank r has weight
 *               1/r^s; ranks are given to pages in a random order), a random line in that page
 *
 * Each access is a store with probability --writes, else a load. The accesses are generated
 * before the program starts (from the seeded generator, never Math.random) and run through the
 * emulated MMU as an access stream (kernel/uapi.ts User.run): TLB hits stay on the fast path,
 * misses walk, the first touch of a page faults and the kernel demand-pages it. Thread i starts
 * its sequential or strided walk at offset i × region / threads, so threads do not march in step.
 */

import type { Program, User } from '../../kernel/uapi.ts';
import type { AccessStream } from '../../hw/engine.ts';
import { K_READ, K_WRITE } from '../../hw/walk.ts';
import { Random } from '../../hw/random.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';

export const TOUCH_PATTERNS = ['sequential', 'strided', 'random', 'zipf'] as const;
export type TouchPattern = (typeof TOUCH_PATTERNS)[number];

export interface TouchOptions {
  pattern: TouchPattern;
  /** Region size in 4 KiB pages. */
  pages: number;
  /** Accesses per thread. */
  accesses: number;
  /** Step of the strided pattern in bytes. */
  stride: number;
  /** Exponent of the Zipf pattern. */
  zipf: number;
  /** Fraction of accesses that are stores, in [0, 1]. */
  writes: number;
  /** Threads touching the region (the main thread is one of them). */
  threads: number;
  seed: number;
}

const LINE = 64;
const PAGE = 4096;

/** The accesses of thread `index` over the region at `base`. */
export function touchStream(o: TouchOptions, base: number, index: number, rng: Random): AccessStream {
  const n = o.accesses;
  const size = o.pages * PAGE;
  const s: AccessStream = { his: new Int32Array(n), los: new Int32Array(n), kinds: new Uint8Array(n), length: n };
  let offset = Math.floor((index * o.pages) / o.threads) * PAGE;
  const zipf = o.pattern === 'zipf' ? new ZipfPages(o.pages, o.zipf, rng) : null;
  for (let i = 0; i < n; i++) {
    let off: number;
    switch (o.pattern) {
      case 'sequential':
      case 'strided':
        off = offset;
        offset = (offset + (o.pattern === 'sequential' ? LINE : o.stride)) % size;
        break;
      case 'random':
        off = rng.below(size / LINE) * LINE;
        break;
      case 'zipf':
        off = zipf!.next() * PAGE + rng.below(PAGE / LINE) * LINE;
        break;
    }
    const va = base + off;
    s.his[i] = Math.floor(va / 4294967296) | 0;
    s.los[i] = va | 0;
    s.kinds[i] = o.writes > 0 && rng.float() < o.writes ? K_WRITE : K_READ;
  }
  return s;
}

/** Pages drawn with Zipf weights: inverse-CDF sampling over ranks, ranks shuffled onto pages. */
export class ZipfPages {
  private readonly cdf: Float64Array;
  private readonly pageOfRank: Int32Array;

  constructor(
    pages: number,
    s: number,
    private readonly rng: Random,
  ) {
    this.cdf = new Float64Array(pages);
    let sum = 0;
    for (let r = 0; r < pages; r++) {
      sum += 1 / Math.pow(r + 1, s);
      this.cdf[r] = sum;
    }
    for (let r = 0; r < pages; r++) this.cdf[r]! /= sum;
    const order = rng.shuffle(Array.from({ length: pages }, (_, i) => i));
    this.pageOfRank = Int32Array.from(order);
  }

  next(): number {
    const x = this.rng.float();
    let lo = 0;
    let hi = this.cdf.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.cdf[mid]! > x) hi = mid;
      else lo = mid + 1;
    }
    return this.pageOfRank[lo]!;
  }
}

/** The program of the touch process (named after the pattern). */
export function touchProgram(o: TouchOptions): Program {
  const root = new Random(o.seed);
  // Every thread's generator is derived up front, so the streams do not depend on scheduling.
  const rngs = Array.from({ length: o.threads }, () => root.fork());
  return function* (u: User) {
    const base = yield* u.mmap(0, o.pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    for (let t = 1; t < o.threads; t++) {
      yield* u.clone(function* (tu: User) {
        yield* tu.run(touchStream(o, base, t, rngs[t]!));
      }, { comm: `${o.pattern}:${t}` });
    }
    yield* u.run(touchStream(o, base, 0, rngs[0]!));
  };
}
