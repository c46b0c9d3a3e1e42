/**
 * src/fuzz/differential.ts — every binder page-mapping design against the others on the same
 * random transaction streams.
 *
 * The designs differ in how a page reaches the receiver's page tables (the sender inserts it,
 * the receiver inserts it at delivery, or the receiver's fault maps it) and in how reclaim takes
 * it away, but not in what binder promises: the same transactions reach the same receivers, in
 * buffers at the same offsets of their mappings, with the same bytes read through the mapping,
 * the same return codes and errors for bad input, whatever reclaim did in between. So a stream of
 * binder operations (transactions with and without objects, replies, frees — double, unknown and
 * mid-buffer ones included — bad commands and sizes, shrinker runs) is run once per design, one
 * operation at a time (a round of one: the interleaving cannot differ), with every checker and
 * oracle of the executor on, and the outcome logs must be identical line for line.
 */

import fc from 'fast-check';
import { FUZZ_DESIGNS, labelOf, fmtOp, type Op, type Scenario } from './ops.ts';
import { executeScenario, type FuzzFailure } from './executor.ts';
import type { DesignOptions } from '../../drivers/android/binder/page_mapping.ts';

const actor = fc.nat(255);
const txSize = fc.oneof({ weight: 5, arbitrary: fc.nat(200) }, { weight: 3, arbitrary: fc.integer({ min: 201, max: 9000 }) }, { weight: 1, arbitrary: fc.constantFrom(0, 4096, 8192, 24576, 70000) });

/** Binder operations only (nothing that changes a mapping, so every design must agree). */
export const arbBinderOp: fc.Arbitrary<Op> = fc.oneof(
  { weight: 10, arbitrary: fc.record({ t: fc.constant('bsend' as const), a: actor, to: fc.nat(7), oneway: fc.boolean(), size: txSize, obj: fc.constantFrom('none' as const, 'none' as const, 'self' as const, 'handle' as const), bad: fc.oneof({ weight: 4, arbitrary: fc.constant('none' as const) }, { weight: 1, arbitrary: fc.constantFrom('badbuf' as const, 'badoffs' as const, 'oddoffs' as const, 'hugesize' as const, 'badhandle' as const) }), clear: fc.boolean() }) },
  { weight: 12, arbitrary: fc.record({ t: fc.constant('brecv' as const), a: actor, reply: fc.constantFrom(true, true, true, false), free: fc.constantFrom(true, true, false) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('breply' as const), a: actor, size: txSize }) },
  { weight: 5, arbitrary: fc.record({ t: fc.constant('bfree' as const), a: actor, which: fc.constantFrom('held' as const, 'held' as const, 'held' as const, 'again' as const, 'unknown' as const, 'mid' as const, 'zero' as const), i: fc.nat(7) }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('shrink' as const), a: actor, nr: fc.constantFrom(1, 2, 8, 1000) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('bcmd' as const), a: actor, kind: fc.constantFrom('unknown' as const, 'truncated' as const, 'looper' as const, 'version' as const, 'badioctl' as const, 'maxthreads' as const, 'badbwr' as const) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('bopen' as const), a: actor, len: fc.record({ pages: fc.constantFrom(2, 4, 8, 32), delta: fc.constant(0) }), prot: fc.constant(1), shared: fc.boolean(), cm: fc.constant(false) }) },
);

/** A transaction stream: a few processes (the first the context manager) and binder operations. */
export function arbBinderStream(maxOps: number): fc.Arbitrary<Scenario> {
  return fc.record({
    ops: fc.array(arbBinderOp, { minLength: 1, maxLength: maxOps, size: 'max' }),
    procs: fc.integer({ min: 2, max: 4 }),
    cpus: fc.constant(2),
    memoryMiB: fc.constant(32),
    quantum: fc.constant(20000),
    designs: fc.constant([0, 0, 0, 0, 0, 0]),
  });
}

export interface DifferentialResult {
  /** Outcome log per design label. */
  logs: Map<string, string[]>;
  /** A checker or oracle failure in one design. */
  failure: { design: string; failure: FuzzFailure } | null;
  /** The first line on which a design's log differs from the first design's. */
  mismatch: string | null;
  ops: number;
}

/** Run `s` once per design (default: every design the fuzzer knows) and compare. */
export function runDifferential(s: Scenario, designs: readonly DesignOptions[] = FUZZ_DESIGNS): DifferentialResult {
  const logs = new Map<string, string[]>();
  let ops = 0;
  for (const d of designs) {
    const log: string[] = [];
    const r = executeScenario(s, { design: d, roundOps: 1, checkEvery: 8, log });
    ops += r.executed;
    logs.set(labelOf(d), log);
    if (r.failure) return { logs, failure: { design: labelOf(d), failure: r.failure }, mismatch: null, ops };
  }
  return { logs, failure: null, mismatch: compareLogs(logs, s.ops), ops };
}

/** The first difference between the first log and each other one, described; null if all agree. */
export function compareLogs(logs: Map<string, string[]>, ops: readonly Op[] = []): string | null {
  const [[base, first], ...rest] = [...logs];
  for (const [label, log] of rest) {
    const n = Math.max(first.length, log.length);
    for (let i = 0; i < n; i++) {
      if (first[i] === log[i]) continue;
      const opIndex = Number(/^(\d+) /.exec(first[i] ?? log[i] ?? '')?.[1] ?? -1);
      const op = opIndex >= 0 && ops[opIndex] ? ` (op ${opIndex}: ${fmtOp(ops[opIndex]!)})` : '';
      return `${label} differs from ${base} at log line ${i}${op}:\n  ${base}: ${first[i] ?? '(end of log)'}\n  ${label}: ${log[i] ?? '(end of log)'}`;
    }
  }
  return null;
}
