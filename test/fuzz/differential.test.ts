// Every binder page-mapping design against the others (src/fuzz/differential.ts): the same random
// transaction streams give the same buffers (offsets in the receiver's mapping), the same bytes
// read through the mapping, the same returns and errors, and the same reclaim counts.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { arbBinderStream, compareLogs, runDifferential } from '../../src/fuzz/differential.ts';
import { FUZZ_DESIGNS, labelOf } from '../../src/fuzz/ops.ts';
import { FaultMapping } from '../../drivers/android/binder/fault.ts';
import type { BinderAlloc } from '../../drivers/android/binder/binder_alloc.ts';

describe('binder designs, differentially', () => {
  it('agree on random transaction streams (every design, same buffers, same bytes, same errors)', () => {
    let delivered = 0;
    let reclaimed = 0;
    let ops = 0;
    fc.assert(
      fc.property(arbBinderStream(250), (s) => {
        const r = runDifferential(s);
        if (r.failure) throw new Error(`${r.failure.design}: ${r.failure.failure.kind}: ${r.failure.failure.message}`);
        if (r.mismatch) throw new Error(r.mismatch);
        expect([...r.logs.keys()]).toEqual(FUZZ_DESIGNS.map(labelOf));
        const log = r.logs.values().next().value!;
        delivered += log.filter((l) => / BR_(TRANSACTION|REPLY) tx .* bytes [0-9a-f]{8}$/.test(l)).length;
        reclaimed += log.filter((l) => /reclaimed [1-9]/.test(l)).length;
        ops += r.ops;
      }),
      { seed: 0xd1ff, numRuns: 24, unbiased: true },
    );
    // The streams did what they are for: payloads delivered and read back, pages reclaimed between.
    expect(delivered).toBeGreaterThan(150);
    expect(reclaimed).toBeGreaterThan(20);
    expect(ops).toBeGreaterThan(24 * 8 * 50);
  }, 300_000);

  it('reports the first line where two designs differ', () => {
    const logs = new Map([
      ['eager/mapped', ['0 bsend: ok', '1 brecv: ok', '  BR_TRANSACTION tx 1 8/0 at +0x0 of instance 1 bytes 00000001']],
      ['fault', ['0 bsend: ok', '1 brecv: ok', '  BR_TRANSACTION tx 1 8/0 at +0x8 of instance 1 bytes 00000001']],
    ]);
    expect(compareLogs(logs)).toMatch(/^fault differs from eager\/mapped at log line 2:\n {2}eager\/mapped: .* at \+0x0 .*\n {2}fault: .* at \+0x8 /);
    logs.set('fault', logs.get('eager/mapped')!.slice());
    expect(compareLogs(logs)).toBeNull();
  });

  it('catches a design that behaves differently (the fault design reclaiming nothing)', () => {
    const original = FaultMapping.prototype.freePage;
    FaultMapping.prototype.freePage = function* (_alloc: BinderAlloc, _index: number) {
      return 'skip' as const;
    };
    try {
      const streams = fc.sample(arbBinderStream(250), { seed: 0xd1ff, numRuns: 12, unbiased: true });
      const found = streams.map((s) => runDifferential(s)).find((r) => r.mismatch || r.failure);
      expect(found?.mismatch ?? found?.failure?.failure.message ?? null).toMatch(/fault differs from .* reclaimed|reclaimed/);
    } finally {
      FaultMapping.prototype.freePage = original;
    }
  }, 300_000);
});
