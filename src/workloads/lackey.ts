/**
 * src/workloads/lackey.ts — replay of a memory trace recorded from a real program with
 * `valgrind --tool=lackey --trace-mem=yes` (the `--lackey FILE` input of mmulab run).
 *
 * Lackey writes one line per memory access of the guest (lackey/lk_main.c, printf formats
 * "I  %08lx,%lu", " L %08lx,%lu", " S %08lx,%lu", " M %08lx,%lu"):
 *
 *   I  0401ab70,3        an instruction fetch of 3 bytes at 0x401ab70
 *    L 1fff000778,8      a data load
 *    S 1fff000770,8      a data store
 *    M 04033e06,1        a data modify (a read-modify-write instruction: load and store)
 *
 * Lines of valgrind's own commentary ("==PID== …", and "--PID--"/"**PID**" debug lines) and
 * empty lines are skipped; any other line is an error naming its number and content.
 *
 * Replay: every page the trace touches is mapped first as private anonymous memory at its
 * address (MAP_FIXED), read-write, and read-write-execute where the trace fetched instructions
 * from it; runs of contiguous pages of the same kind become one mapping. The accesses then run
 * in trace order through the emulated MMU as an access stream, and the kernel demand-pages each
 * page at its first touch. A fetch is an instruction fetch (iTLB), a load a read, a store a
 * write; a modify is one write access, as an x86 read-modify-write instruction translates its
 * operand once with write intent (its load is served by the same translation). An access that
 * crosses a page boundary is translated on both pages.
 *
 * Valgrind runs the guest at its usual addresses (its own code lives elsewhere), so the
 * replayed address space has the program's layout: text near 0x400000 or 0x5555…, valgrind's
 * loader near 0x4000000, the stack near 0x1fff000000. Addresses below mmap_min_addr or beyond
 * the user address space are rejected (with their line).
 */

import type { Program, User } from '../../kernel/uapi.ts';
import type { AccessStream } from '../../hw/engine.ts';
import { K_FETCH, K_READ, K_WRITE } from '../../hw/walk.ts';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_EXEC, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { MMAP_MIN_ADDR, TASK_SIZE } from '../../kernel/mm/mm_types.ts';

export class LackeyError extends Error {
  constructor(
    readonly line: number,
    readonly content: string,
    readonly problem: string,
  ) {
    super(`line ${line}: ${problem}: "${content}"`);
    this.name = 'LackeyError';
  }
}

export interface LackeyCounts {
  fetches: number;
  loads: number;
  stores: number;
  modifies: number;
}

/** A mapping the replay makes before it starts. */
export interface LackeyRange {
  start: number;
  end: number;
  exec: boolean;
}

export interface LackeyTrace {
  counts: LackeyCounts;
  /** Bytes accessed, by kind. */
  bytes: LackeyCounts;
  /** Lines read (all of them, skipped ones included). */
  lines: number;
  /** Translations to replay (a page-crossing access gives two). */
  stream: AccessStream;
  ranges: LackeyRange[];
  /** Distinct pages touched. */
  pages: number;
}

const PAGE = 4096;
/** The largest access lackey reports is an XSAVE area; anything beyond a page is not a real access. */
const MAX_SIZE = PAGE;

const C_SPACE = 0x20;
const C_TAB = 0x09;
const C_CR = 0x0d;
const C_LF = 0x0a;
const C_COMMA = 0x2c;

function hexDigit(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10;
  if (c >= 0x41 && c <= 0x46) return c - 0x41 + 10;
  return -1;
}

/** "==123==", "--123--" or "**123**" at the start of a line: valgrind's own output. */
function isCommentary(b: Uint8Array, s: number, e: number): boolean {
  const m = b[s]!;
  if ((m !== 0x3d && m !== 0x2d && m !== 0x2a) || b[s + 1] !== m) return false;
  let p = s + 2;
  const d0 = p;
  while (p < e && b[p]! >= 0x30 && b[p]! <= 0x39) p++;
  return p > d0 && b[p] === m && b[p + 1] === m;
}

/** Growable parallel arrays of translations. */
class StreamBuilder {
  his = new Int32Array(1024);
  los = new Int32Array(1024);
  kinds = new Uint8Array(1024);
  length = 0;

  push(va: number, kind: number): void {
    if (this.length === this.his.length) {
      const n = this.length * 2;
      const his = new Int32Array(n);
      const los = new Int32Array(n);
      const kinds = new Uint8Array(n);
      his.set(this.his);
      los.set(this.los);
      kinds.set(this.kinds);
      this.his = his;
      this.los = los;
      this.kinds = kinds;
    }
    this.his[this.length] = Math.floor(va / 4294967296) | 0;
    this.los[this.length] = va | 0;
    this.kinds[this.length] = kind;
    this.length++;
  }

  build(): AccessStream {
    return { his: this.his.subarray(0, this.length), los: this.los.subarray(0, this.length), kinds: this.kinds.subarray(0, this.length), length: this.length };
  }
}

/** Parse a lackey trace (the bytes of the file). Throws LackeyError at the first bad line. */
export function parseLackey(b: Uint8Array): LackeyTrace {
  const counts: LackeyCounts = { fetches: 0, loads: 0, stores: 0, modifies: 0 };
  const bytes: LackeyCounts = { fetches: 0, loads: 0, stores: 0, modifies: 0 };
  const out = new StreamBuilder();
  // Page number → 1 touched, 3 touched and fetched from.
  const pages = new Map<number, number>();
  let line = 0;
  let s = 0;
  const n = b.length;
  while (s < n) {
    let e = b.indexOf(C_LF, s);
    if (e < 0) e = n;
    const next = e + 1;
    line++;
    if (e > s && b[e - 1] === C_CR) e--;
    const bad = (problem: string): never => {
      let text = new TextDecoder().decode(b.subarray(s, Math.min(e, s + 80)));
      if (e > s + 80) text += '…';
      throw new LackeyError(line, text, problem);
    };
    let p = s;
    while (p < e && (b[p] === C_SPACE || b[p] === C_TAB)) p++;
    if (p === e || isCommentary(b, s, e)) {
      s = next;
      continue;
    }
    const op = b[p]!;
    let kind: number;
    let key: keyof LackeyCounts;
    if (op === 0x49 /* I */) {
      kind = K_FETCH;
      key = 'fetches';
    } else if (op === 0x4c /* L */) {
      kind = K_READ;
      key = 'loads';
    } else if (op === 0x53 /* S */) {
      kind = K_WRITE;
      key = 'stores';
    } else if (op === 0x4d /* M */) {
      kind = K_WRITE;
      key = 'modifies';
    } else return bad('not a lackey line (expected "I  addr,size", " L addr,size", " S addr,size" or " M addr,size")');
    p++;
    const sp = p;
    while (p < e && (b[p] === C_SPACE || b[p] === C_TAB)) p++;
    if (p === sp) bad('expected a space after the access kind');
    let addr = 0;
    const a0 = p;
    for (; p < e; p++) {
      const d = hexDigit(b[p]!);
      if (d < 0) break;
      addr = addr * 16 + d;
    }
    if (p === a0 || p - a0 > 16) bad('expected a hexadecimal address');
    if (b[p] !== C_COMMA) bad('expected "," after the address');
    p++;
    let size = 0;
    const z0 = p;
    for (; p < e && b[p]! >= 0x30 && b[p]! <= 0x39; p++) size = size * 10 + (b[p]! - 0x30);
    if (p === z0) bad('expected a decimal size after ","');
    while (p < e && (b[p] === C_SPACE || b[p] === C_TAB)) p++;
    if (p !== e) bad('unexpected text after the size');
    if (size < 1 || size > MAX_SIZE) bad(`access size ${size} is out of range (1 to ${MAX_SIZE})`);
    if (addr < MMAP_MIN_ADDR) bad(`address 0x${addr.toString(16)} is below mmap_min_addr (0x${MMAP_MIN_ADDR.toString(16)}); the emulated process cannot map it`);
    if (addr + size > TASK_SIZE) bad(`address 0x${addr.toString(16)} is beyond the user address space (0x${TASK_SIZE.toString(16)})`);
    counts[key]++;
    bytes[key] += size;
    const first = Math.floor(addr / PAGE);
    const last = Math.floor((addr + size - 1) / PAGE);
    const mark = kind === K_FETCH ? 3 : 1;
    for (let pg = first; pg <= last; pg++) {
      pages.set(pg, (pages.get(pg) ?? 0) | mark);
      out.push(pg === first ? addr : pg * PAGE, kind);
    }
    s = next;
  }
  return { counts, bytes, lines: line, stream: out.build(), ranges: rangesOf(pages), pages: pages.size };
}

/** Runs of contiguous pages with the same exec-ness, in address order. */
function rangesOf(pages: Map<number, number>): LackeyRange[] {
  const sorted = [...pages.keys()].sort((a, b) => a - b);
  const out: LackeyRange[] = [];
  for (const pg of sorted) {
    const exec = pages.get(pg) === 3;
    const last = out[out.length - 1];
    if (last && last.end === pg * PAGE && last.exec === exec) last.end += PAGE;
    else out.push({ start: pg * PAGE, end: (pg + 1) * PAGE, exec });
  }
  return out;
}

/** The replaying program: map the ranges, then run the accesses in trace order. */
export function lackeyProgram(t: LackeyTrace): Program {
  return function* (u: User) {
    for (const r of t.ranges) {
      yield* u.mmap(r.start, r.end - r.start, PROT_READ | PROT_WRITE | (r.exec ? PROT_EXEC : 0), MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED);
    }
    yield* u.run(t.stream);
  };
}
