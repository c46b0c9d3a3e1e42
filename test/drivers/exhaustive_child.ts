/**
 * test/drivers/exhaustive_child.ts — registers the full exhaustive binder_alloc test of one
 * design (750,000 runs, every invariant), run in a child process by
 * binder_alloc_exhaustive_main.ts; the assertions are made here on the result it prints.
 */

import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { expect, it } from 'vitest';
import type { DesignName } from '../../drivers/android/binder/page_mapping.ts';
import { TOTAL_EXHAUSTIVE_CASES, type ExhaustiveResult } from './binder_alloc_exhaustive.ts';

const main = fileURLToPath(new URL('./binder_alloc_exhaustive_main.ts', import.meta.url));
const root = fileURLToPath(new URL('../..', import.meta.url));

export function exhaustiveTest(design: DesignName): void {
  it(`binder_alloc exhaustive test, ${design}: ${TOTAL_EXHAUSTIVE_CASES} runs, every invariant holds`, async () => {
    const { stdout } = await promisify(execFile)(process.execPath, ['--import', './hw/ts-register.mjs', main, design], { cwd: root, maxBuffer: 64 << 20 });
    const r = JSON.parse(stdout) as ExhaustiveResult;
    console.log(`binder_alloc exhaustive (${design}): ${r.runs} runs in ${(r.ms / 1000).toFixed(1)} s (${(r.cpuMs / 1000).toFixed(1)} s CPU), ${r.pagesInstalled} pages installed and reclaimed`);
    expect(r.messages).toEqual([]);
    expect(r.auditMessages).toEqual([]);
    expect(r.runs).toBe(TOTAL_EXHAUSTIVE_CASES);
    expect(r.failedRuns).toBe(0);
    expect(r.auditFailures).toBe(0);
    expect(r.reports).toEqual([]);
    expect(r.finalProblems).toEqual([]);
    expect(r.leakedFrames).toBe(0);
    expect(r.pagesInstalled).toBeGreaterThan(0);
    expect(r.pagesReclaimed).toBe(r.pagesInstalled);
  }, 900_000);
}
