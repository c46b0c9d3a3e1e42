/**
 * src/workloads/fork_cow.ts — the `fork` workload of `mmulab run`: copy-on-write across fork.
 *
 *   1. The parent ("fork") maps an anonymous region of --pages pages and stores to every page
 *      (anonymous faults: each page gets its own frame).
 *   2. It forks a child ("fork-child"). dup_mm copies the page tables with every private
 *      writable entry write-protected in both processes and each frame mapped twice.
 *   3. The child makes --accesses touches at random cache lines of the region, stores with
 *      probability --writes: the first store to a shared page is a copy-on-write fault (a new
 *      frame for the child), loads share the parent's frames.
 *   4. The parent waits for the child, then stores to every page again: the pages are its own
 *      alone now (mapcount 1), so each write fault reuses the frame (wp_page_reuse) instead of
 *      copying it.
 *
 * Inspected at the end (mmulab smaps --workload fork), the child has parked before exiting and
 * the parent is still waiting for it: the parent's smaps shows the frames both still share as
 * Shared_* with half their size in Pss, and the child's shows its copies as Private_Dirty.
 */

import type { Program, User } from '../../kernel/uapi.ts';
import type { AccessStream } from '../../hw/engine.ts';
import { K_READ, K_WRITE } from '../../hw/walk.ts';
import { Random } from '../../hw/random.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';

export interface ForkOptions {
  pages: number;
  /** The child's touches. */
  accesses: number;
  /** Fraction of the child's touches that are stores. */
  writes: number;
  seed: number;
}

export const FORK_PARENT = 'fork';
export const FORK_CHILD = 'fork-child';

const PAGE = 4096;

function stream(n: number): AccessStream {
  return { his: new Int32Array(n), los: new Int32Array(n), kinds: new Uint8Array(n), length: n };
}

function put(s: AccessStream, i: number, va: number, kind: number): void {
  s.his[i] = Math.floor(va / 4294967296) | 0;
  s.los[i] = va | 0;
  s.kinds[i] = kind;
}

/** One store to every page of the region. */
function everyPage(base: number, pages: number): AccessStream {
  const s = stream(pages);
  for (let p = 0; p < pages; p++) put(s, p, base + p * PAGE, K_WRITE);
  return s;
}

export function forkProgram(o: ForkOptions): Program {
  const rng = new Random(o.seed);
  return function* (u: User) {
    const base = yield* u.mmap(0, o.pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    yield* u.run(everyPage(base, o.pages));
    const child = yield* u.fork(function* (c: User) {
      const s = stream(o.accesses);
      for (let i = 0; i < o.accesses; i++) put(s, i, base + rng.below((o.pages * PAGE) / 64) * 64, o.writes > 0 && rng.float() < o.writes ? K_WRITE : K_READ);
      yield* c.run(s);
    }, FORK_CHILD);
    yield* u.wait(child);
    yield* u.run(everyPage(base, o.pages));
  };
}
