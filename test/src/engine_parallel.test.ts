/**
 * The experiments on the parallel engine (--engine parallel; kernel/sched/parallel.ts): a binder
 * A/B case, the security scenarios and a shootdown point run there as on the deterministic engine,
 * with the same invariants and checks. Outcomes are compared, not interleavings: where no user
 * code runs on a worker (binder's single accesses, the scenarios) the results equal the
 * deterministic engine's; a shootdown point's remote threads run their passes on workers
 * (touchPages), and the synchronous flush still leaves no usable stale entry. Each command's
 * --json on the parallel engine follows its schema and says which engine ran.
 */

import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import { main } from '../../src/cli.ts';
import { parseConfig, runAbCase } from '../../src/experiments/ab.ts';
import { runAttackMatrix, parseTarget } from '../../src/experiments/attack.ts';
import { runPoint, DEFAULT_CONFIG, type ShootdownPoint } from '../../src/experiments/shootdown.ts';
import { SHOOTDOWN_JSON_SCHEMA } from '../../src/experiments/shootdown-report.ts';
import { remotePoolStats } from '../../hw/remote.ts';

const ajv = new Ajv2020({ allErrors: true });
const load = (f: string) => JSON.parse(readFileSync(new URL(`../../docs/schemas/${f}`, import.meta.url), 'utf8')) as object;
const validators: Record<string, ValidateFunction> = {
  ab: ajv.compile(load('ab.schema.json')),
  attack: ajv.compile(load('attack.schema.json')),
  shootdown: ajv.compile(SHOOTDOWN_JSON_SCHEMA),
};

async function run(args: string[]) {
  let out = '';
  let err = '';
  const code = await main(args, { out: (s) => void (out += s), err: (s) => void (err += s) });
  return { code, out, err };
}

describe('experiments on the parallel engine', { timeout: 120_000 }, () => {
  it('a binder A/B case finishes with the deterministic engine\'s transactions and no report', () => {
    for (const workload of ['spread', 'mmap-contention'] as const) {
      const o = { config: parseConfig('eager'), workload, seed: 3, cpus: 4, iterations: 20 };
      const det = runAbCase(o);
      const par = runAbCase({ ...o, engine: 'parallel' });
      expect(par.transactions, workload).toBe(det.transactions);
      expect(par.failures, workload).toBe(0);
      expect(par.reports, workload).toEqual([]);
      expect(par.txPerSec, workload).toBeGreaterThan(0);
    }
  });

  it('the security scenarios give the deterministic engine\'s verdicts', () => {
    const targets = [parseTarget('eager:none'), parseTarget('fault'), parseTarget('pfnmap')];
    const scenarios = ['1a', '1d', '2', '4'] as const;
    const det = runAttackMatrix({ targets, scenarios: [...scenarios], seed: 1 });
    const par = runAttackMatrix({ targets, scenarios: [...scenarios], seed: 1, engine: 'parallel' });
    expect(par.engine).toBe('parallel');
    expect(det.engine).toBeUndefined();
    expect(par.results.map((r) => `${r.target} ${r.scenario} ${r.verdict}`)).toEqual(det.results.map((r) => `${r.target} ${r.scenario} ${r.verdict}`));
    // The verdicts are not all alike: eager:none is vulnerable to the impostor.
    expect(par.results.find((r) => r.target === 'eager:none' && r.scenario === '1a')!.verdict).toBe('vulnerable');
    // Scenario 3 planted: the reader on CPU 1 uses the stale entry and KASAN reports it.
    const planted = runAttackMatrix({ targets: [parseTarget('eager:mapped')], scenarios: ['3'], seed: 1, plant: true, engine: 'parallel' });
    expect(planted.results[0]!.verdict).toBe('vulnerable');
  });

  it('a shootdown point runs its remote passes on workers; synchronous flushes leave nothing stale', () => {
    const before = remotePoolStats().stretches;
    for (const policy of ['linux', 'latr'] as const) {
      const point: ShootdownPoint = { op: 'munmap', cpus: 4, pages: 8, policy, lazy: true, pcid: true, batch: 1 };
      const r = runPoint(point, { ...DEFAULT_CONFIG, engine: 'parallel' });
      expect(r.kasan, policy).toBe(0);
      expect(r.invariantProblems, policy).toBe(0);
      expect(r.releaseViolations, policy).toBe(0);
      if (policy === 'linux') {
        expect(r.staleAfter).toBe(0);
        expect(r.ipis).toBeGreaterThan(0);
      } else expect(r.ipis).toBe(0);
    }
    expect(remotePoolStats().stretches - before).toBeGreaterThan(0);
  });

  it('ab, attack and shootdown --json (and --html) say the engine and follow their schemas', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mmulab-par-'));
    const cases: [string, string[]][] = [
      ['ab', ['--design', 'eager,fault', '--workload', 'sync-0', '--seeds', '1', '--iterations', '5', '--jobs', '1']],
      ['attack', ['--design', 'fault', '--scenario', '1a']],
      ['shootdown', ['--cpus-list', '2', '--pages', '1', '--policy', 'linux', '--lazy', 'on', '--pcid', 'on', '--rounds', '1', '--jobs', '1']],
    ];
    for (const [command, args] of cases) {
      const html = command === 'attack' ? [] : ['--html', join(dir, `${command}.html`)];
      const r = await run([command, ...args, '--engine', 'parallel', '--json', ...html]);
      // The HTML report says so too (in its header table).
      if (html.length) expect(readFileSync(html[1]!, 'utf8'), command).toMatch(/parallel[^<]*not reproducible by seed/);
      expect(r.err, command).toBe('');
      expect(r.code, command).toBe(0);
      const doc = JSON.parse(r.out) as { options?: { engine?: string }; config?: { engine?: string }; engine?: string };
      const v = validators[command]!;
      expect(v(doc) ? [] : v.errors, command).toEqual([]);
      expect(doc.options?.engine ?? doc.config?.engine ?? doc.engine, command).toBe('parallel');
      // Without --engine parallel the field is absent (deterministic documents are unchanged).
      const d = await run([command, ...args, '--json']);
      expect(d.out, command).not.toMatch(/"engine"/);
    }
  });
});
