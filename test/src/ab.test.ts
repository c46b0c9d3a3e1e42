/**
 * `mmulab ab` end to end: the table, the JSON result and its summary, determinism across
 * --jobs and across shards merged back together, the cost model the JSON records (enough to run
 * the same costs again), the security scenarios on the machine --cpus asks for (raised to the
 * two CPUs they need), and exit code 2 with one line for bad input.
 */

import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { main } from '../../src/cli.ts';
import type { AbFile } from '../../src/commands/ab.ts';
import { JOBS } from '../../src/jobs/registry.ts';
import type { ScenarioOptions } from '../../src/experiments/attack.ts';
import { effectiveCostModel } from '../../src/experiments/cost_model.ts';
import { Ajv2020 } from 'ajv/dist/2020.js';

const schema = JSON.parse(readFileSync(new URL('../../docs/schemas/ab.schema.json', import.meta.url), 'utf8')) as object;
const validate = new Ajv2020({ allErrors: true }).compile(schema);

function expectValid(doc: unknown): void {
  const ok = validate(doc);
  expect(ok ? [] : validate.errors).toEqual([]);
}

async function run(args: string[]) {
  let out = '';
  let err = '';
  const code = await main(args, { out: (s) => void (out += s), err: (s) => void (err += s) });
  return { code, out, err };
}

const SMALL = ['--design', 'eager,eager-writelock,fault', '--workload', 'pressure', '--seeds', '2', '--iterations', '12', '--cpus', '2', '--no-attack'];

// Whole runs of the kernel: generous time limits, for a machine busy with other work.
describe('mmulab ab', { timeout: 120_000 }, () => {
  it('prints a JSON result whose summary follows from its cases', async () => {
    const r = await run(['ab', ...SMALL, '--jobs', '1', '--json']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.out) as AbFile;
    expectValid(doc);
    // The schema is strict enough to reject a wrong document.
    expect(validate({ ...doc, cases: [{ ...doc.cases[0], metrics: { ...doc.cases[0]!.metrics, txPerSec: 'fast' } }] })).toBe(false);
    expect(doc.schema).toBe('mmulab.ab/1');
    expect(doc.options.configs).toEqual(['eager', 'eager-writelock', 'fault']);
    expect(doc.cases).toHaveLength(6);
    for (const c of doc.cases) {
      expect(c.metrics.transactions + c.metrics.failures).toBe(24);
      expect(c.metrics.reports).toEqual([]);
      expect(c.metrics.latencyUs.p50).toBeLessThanOrEqual(c.metrics.latencyUs.p99);
      expect(c.metrics.latencyUs.p99).toBeLessThanOrEqual(c.metrics.latencyUs.max);
    }
    // The summary's means are the means of the cases.
    const fault = doc.summary.find((s) => s.config === 'fault')!;
    const faultCases = doc.cases.filter((c) => c.config === 'fault');
    expect(fault.metrics.faults!.mean).toBeCloseTo((faultCases[0]!.metrics.receiverFaults + faultCases[1]!.metrics.receiverFaults) / 2, 9);
    expect(fault.vsBaseline).toBeDefined();
    expect(doc.summary.find((s) => s.config === 'eager')!.vsBaseline).toBeUndefined();
    // The designs differ the way they are built: the v6.8 design takes the receiver's mmap
    // lock for every page, v6.14 uses the per-VMA lock, the fault design takes neither and
    // makes the receiver fault instead.
    const by = (cfg: string) => doc.cases.filter((c) => c.config === cfg).map((c) => c.metrics);
    for (const m of by('eager-writelock')) expect(m.mmapLock.driverAcquisitions).toBeGreaterThan(0);
    for (const m of by('eager')) {
      expect(m.mmapLock.driverAcquisitions).toBe(0);
      expect(m.vmaLock.driverSuccess).toBeGreaterThan(0);
    }
    for (const [i, m] of by('fault').entries()) {
      expect(m.mmapLock.driverAcquisitions + m.vmaLock.driverSuccess + m.vmaLock.driverFallback).toBe(0);
      expect(m.receiverFaults).toBeGreaterThan(by('eager')[i]!.receiverFaults);
    }
  });

  it('prints a table with one row per design and gives the same numbers with worker processes', async () => {
    const [a, b] = await Promise.all([run(['ab', ...SMALL, '--jobs', '1']), run(['ab', ...SMALL, '--jobs', '2'])]);
    expect(a.code).toBe(0);
    expect(a.out).toContain('== pressure');
    for (const d of ['eager ', 'eager-writelock ', 'fault ']) expect(a.out).toContain(d);
    expect(b.out).toBe(a.out);
  });

  it('splits into shards that merge back into the unsharded result', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mmulab-ab-'));
    const whole = JSON.parse((await run(['ab', ...SMALL, '--jobs', '1', '--json'])).out) as AbFile;
    const files: string[] = [];
    for (const s of ['1/3', '2/3', '3/3']) {
      const r = await run(['ab', ...SMALL, '--jobs', '1', '--json', '--shard', s]);
      expect(r.code).toBe(0);
      const part = JSON.parse(r.out) as AbFile;
      expectValid(part);
      expect(part.cases).toHaveLength(2);
      const f = join(dir, `part${s[0]}.json`);
      writeFileSync(f, r.out);
      files.push(f);
    }
    const merged = await run(['merge', ...[...files].reverse(), '--json', '--html', join(dir, 'r.html')]);
    expect(merged.code).toBe(0);
    expect(merged.out).toBe(JSON.stringify(whole, null, 2) + '\n');
    expect(readFileSync(join(dir, 'r.html'), 'utf8')).toContain('<svg');
    // An incomplete set is refused, not merged.
    const missing = await run(['merge', files[2]!, files[1]!, '--json']);
    expect(missing.code).toBe(2);
    expect(missing.out).toBe('');
    expect(missing.err).toBe('mmulab: incomplete: shard 1/3 missing (given: 2/3, 3/3)\n');
  });

  it('runs the security scenarios against each compared design, with verdicts computed per design', async () => {
    const r = await run(['ab', '--design', 'eager:none,eager:vm_ops,fault', '--workload', 'sync-0', '--seeds', '1', '--iterations', '5', '--cpus', '2', '--jobs', '2', '--json']);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.out) as AbFile;
    expectValid(doc);
    const v = (config: string, scenario: string) => doc.attack!.find((x) => x.config === config && x.scenario === scenario)!.verdict;
    expect(doc.attack).toHaveLength(3 * 8);
    // The review's expectation, as the emulator finds it.
    for (const s of ['1a', '1b', '1c', '1d']) {
      expect(v('eager:none', s)).toBe('vulnerable');
      expect(v('eager:vm_ops', s)).toBe('immune');
      expect(v('fault', s)).toBe('immune');
    }
    const table = await run(['ab', '--design', 'eager:none,fault', '--workload', 'sync-0', '--seeds', '1', '--iterations', '5', '--cpus', '2', '--jobs', '1']);
    expect(table.out).toMatch(/== security scenarios/);
    expect(table.out).toMatch(/^eager:none\s+VULNERABLE/m);
    expect(table.out).toMatch(/^fault\s+immune/m);
  });

  it('records the effective cost model; the record, passed back as --cost-model, runs the same costs', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mmulab-ab-'));
    const base = JSON.parse((await run(['ab', ...SMALL, '--jobs', '1', '--json'])).out) as AbFile;
    expect(base.options.costs).toEqual(effectiveCostModel(undefined));
    expect(base.options.costModel).toBeUndefined();
    const file = join(dir, 'costs.json');
    writeFileSync(file, JSON.stringify({ clockGhz: 2, hw: { walkMemRef: 40 }, kernel: { contextSwitch: 3000 } }));
    const r = await run(['ab', ...SMALL, '--jobs', '1', '--json', '--cost-model', file]);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.out) as AbFile;
    expectValid(doc);
    expect(doc.options.costModel).toBe(file);
    expect(doc.options.costs).toEqual({ clockGhz: 2, hw: { ...base.options.costs.hw, walkMemRef: 40 }, kernel: { ...base.options.costs.kernel, contextSwitch: 3000 } });
    expect(doc.cases).not.toEqual(base.cases);
    // The record is a complete cost model file: the same run from it alone.
    const saved = join(dir, 'recorded.json');
    writeFileSync(saved, JSON.stringify(doc.options.costs));
    const again = JSON.parse((await run(['ab', ...SMALL, '--jobs', '1', '--json', '--cost-model', saved])).out) as AbFile;
    expect(again.options.costs).toEqual(doc.options.costs);
    expect(again.cases).toEqual(doc.cases);
    // The table names the file.
    expect((await run(['ab', ...SMALL, '--jobs', '1', '--cost-model', file])).out.split('\n')[0]).toContain(`2 CPUs, 12 transactions per worker, cost model ${file};`);
    // The schema wants the costs, every one of them, and nothing else.
    expect(validate({ ...doc, options: { ...doc.options, costs: undefined } })).toBe(false);
    expect(validate({ ...doc, options: { ...doc.options, costs: { ...doc.options.costs, hw: { ...doc.options.costs.hw, walkMemRef: undefined } } } })).toBe(false);
    expect(validate({ ...doc, options: { ...doc.options, costs: { ...doc.options.costs, kernel: { ...doc.options.costs.kernel, teleport: 1 } } } })).toBe(false);
  });

  describe('the security scenarios\' machine', () => {
    afterEach(() => {
      vi.restoreAllMocks();
    });
    const realAttack = JOBS.attack!;
    const ATTACK = ['--design', 'eager:none,fault', '--workload', 'sync-0', '--seeds', '1', '--iterations', '3', '--jobs', '1'];

    /** Run ab with the scenarios inline (--jobs 1) and catch what each was run with. */
    async function spied(args: string[]): Promise<{ doc: AbFile; text: string; seen: ScenarioOptions[] }> {
      const seen: ScenarioOptions[] = [];
      vi.restoreAllMocks();
      vi.spyOn(JOBS, 'attack').mockImplementation(((a: ScenarioOptions) => {
        seen.push(a);
        return realAttack(a as never);
      }) as never);
      const json = await run(['ab', ...ATTACK, ...args, '--json']);
      expect(json.code).toBe(0);
      const table = await run(['ab', ...ATTACK, ...args]);
      return { doc: JSON.parse(json.out) as AbFile, text: table.out, seen };
    }

    it('has the CPUs --cpus asks for, and the run\'s cost model', async () => {
      const file = join(mkdtempSync(join(tmpdir(), 'mmulab-ab-')), 'costs.json');
      writeFileSync(file, JSON.stringify({ hw: { ipiLatency: 9000 } }));
      const { doc, text, seen } = await spied(['--cpus', '5', '--cost-model', file]);
      expectValid(doc);
      expect(doc.attackCpus).toBe(5);
      expect(seen).toHaveLength(2 * 2 * 8); // 2 designs × 8 scenarios, for the JSON and the table
      for (const a of seen) {
        expect(a.cpus).toBe(5);
        expect(a.kernel?.hwCosts?.ipiLatency).toBe(9000);
      }
      expect(text).toMatch(/^== security scenarios \(mmulab attack\): a verdict per design, computed by the emulator on 5 CPUs$/m);
      expect(text).toMatch(/^eager:none\s+VULNERABLE/m);
    });

    it('has at least the two CPUs the scenarios need, and says so when --cpus asked for fewer', async () => {
      const { doc, text, seen } = await spied(['--cpus', '1']);
      expectValid(doc);
      expect(doc.options.cpus).toBe(1);
      expect(doc.attackCpus).toBe(2);
      for (const a of seen) {
        expect(a.cpus).toBe(2);
        expect(a.kernel).toBeUndefined();
      }
      expect(text).toContain('computed by the emulator on 2 CPUs (--cpus 1 raised to 2: the scenarios need at least 2, scenario 3\'s reader runs on CPU 1)');
      // The verdicts depend on the design, not on the CPU count.
      const four = await spied(['--cpus', '4']);
      expect(four.doc.attackCpus).toBe(4);
      expect(four.doc.attack!.map((v) => v.verdict)).toEqual(doc.attack!.map((v) => v.verdict));
    });

    it('is recorded only with the verdicts', async () => {
      const r = await run(['ab', ...SMALL, '--jobs', '1', '--json']);
      const doc = JSON.parse(r.out) as AbFile;
      expect(doc.attack).toBeUndefined();
      expect(doc.attackCpus).toBeUndefined();
      expect(validate({ ...doc, attackCpus: 2 })).toBe(false);
      expect(validate({ ...doc, attack: [] })).toBe(false);
      expect(validate({ ...doc, attack: [], attackCpus: 1 })).toBe(false);
      expect(validate({ ...doc, attack: [], attackCpus: 2 })).toBe(true);
    });
  });

  it('nop-64k: services that never read their payload leave the fault design nothing to map for it; eager maps it anyway', async () => {
    const r = await run(['ab', '--design', 'eager,fault', '--workload', 'sync-64k,nop-64k', '--seeds', '1', '--iterations', '20', '--cpus', '2', '--no-attack', '--jobs', '1', '--json']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.out) as AbFile;
    expectValid(doc);
    const m = (config: string, workload: string) => doc.cases.find((c) => c.config === config && c.workload === workload)!.metrics;
    for (const c of doc.cases) expect(c.metrics.transactions, `${c.config}/${c.workload}`).toBe(40);
    // eager installs every page of a buffer in the sender's context, read or not: at least the
    // 16 pages of a 64 KiB payload, and its receivers take no fault for them.
    expect(m('eager', 'nop-64k').pteInstalls).toBeGreaterThanOrEqual(16);
    expect(m('eager', 'nop-64k').receiverFaults).toBe(m('eager', 'sync-64k').receiverFaults);
    // fault installs a page only when a receiver touches it: the pages of a read payload are
    // faulted in, and those nobody reads never are (fewer installs than one payload's pages).
    expect(m('fault', 'sync-64k').pteInstalls).toBeGreaterThanOrEqual(16);
    expect(m('fault', 'sync-64k').receiverFaults).toBeGreaterThanOrEqual(m('eager', 'sync-64k').receiverFaults + 16);
    expect(m('fault', 'nop-64k').pteInstalls).toBeLessThan(16);
    expect(m('fault', 'nop-64k').receiverFaults).toBeLessThan(m('eager', 'nop-64k').receiverFaults + 16);
  });

  it('answers bad input with exit code 2 and one line naming the problem', async () => {
    const cases: [string[], RegExp][] = [
      [['ab', '--design', 'eager,bogus'], /unknown design "bogus"/],
      [['ab', '--design', 'fault:vm_ops'], /design "fault" has no identity variants/],
      [['ab', '--design', 'eager:sometimes'], /unknown identity variant "sometimes"/],
      [['ab', '--workload', 'nope'], /unknown workload "nope"/],
      [['ab', '--seeds', '0'], /--seeds must be between 1 and 1000/],
      [['ab', '--cpus', 'many'], /--cpus must be an integer/],
      [['ab', '--shard', '3/2'], /--shard 3\/2/],
      [['ab', '--engine', 'quantum'], /quantum/],
      [['ab', '--cost-model', '/nonexistent/costs.json'], /cannot read cost model/],
      [['merge', '/nonexistent/part.json'], /no such file/],
    ];
    for (const [args, re] of cases) {
      const r = await run(args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.err, args.join(' ')).toMatch(re);
      expect(r.out).toBe('');
      expect(r.err).not.toMatch(/\n\s+at /); // no stack trace
    }
    const dir = mkdtempSync(join(tmpdir(), 'mmulab-ab-'));
    const bad = join(dir, 'x.json');
    writeFileSync(bad, '{"schema": "something else"}');
    const r = await run(['merge', bad]);
    expect(r.code).toBe(2);
    expect(r.err).toContain('x.json: not the --json output of a sharded mmulab command (its "schema" is "something else"');
  });
});
