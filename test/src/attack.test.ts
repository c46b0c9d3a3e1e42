/**
 * `mmulab attack` end to end through main(): the verdict table and the evidence, the JSON
 * document (validated against docs/schemas/attack.schema.json), --expect-safe, the shared options
 * (--cpus, --cost-model, --engine) and the exit codes 0 (ran), 1 (a design expected safe is
 * vulnerable) and 2 (bad usage, one line naming the problem).
 */

import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { main } from '../../src/cli.ts';

const schema = JSON.parse(readFileSync(new URL('../../docs/schemas/attack.schema.json', import.meta.url), 'utf8')) as object;
const validate = new Ajv2020({ allErrors: true }).compile(schema);

async function run(args: string[]) {
  let out = '';
  let err = '';
  const code = await main(args, { out: (s) => void (out += s), err: (s) => void (err += s) });
  return { code, out, err };
}

interface AttackDoc {
  schema: string;
  seed: number;
  targets: string[];
  scenarios: string[];
  results: { target: string; scenario: string; verdict: string; summary: string; evidence: { findings: string[]; pages: { pfn: number }[]; vmas: { role: string; start: string }[]; reports: { title: string }[] } }[];
  vulnerable: string[];
  expectSafe: { names: string[]; violated: { target: string; scenarios: string[] }[] };
}

describe('mmulab attack', () => {
  it('prints a verdict per design and scenario, and the evidence of each finding', async () => {
    const r = await run(['attack', '--design', 'fault,eager:none', '--scenario', '1a,1d']);
    expect(r.code).toBe(0);
    expect(r.err).toBe('');
    expect(r.out).toMatch(/^design\s+1a\s+1d$/m);
    expect(r.out).toMatch(/^fault\s+immune\s+immune$/m);
    expect(r.out).toMatch(/^eager:none\s+VULNERABLE\s+VULNERABLE$/m);
    // Evidence: which page, which VMA, which report.
    expect(r.out).toMatch(/page {3}pfn \d+ at 0x40000000: impostor 4 KiB entry zapped by binder reclaim/);
    expect(r.out).toContain('vma    0x40000000-0x40200000 impostor [rd wr sh mr mw me ms] ops shmem');
    expect(r.out).toContain('report kernel BUG at mm/memory.c: vm_insert_page (vm_insert_page-mixedmap) in sender');
    expect(r.out).toMatch(/1d {2}VULNERABLE binder frame pfn \d+ mapped into another binder file's mapping/);
    expect(r.out).toMatch(/1a {2}immune {5}impostor \(shared anonymous RW memory\) untouched/);
  });

  it('expands a bare eager design into its variants (--variant narrows them)', async () => {
    const r = await run(['attack', '--design', 'eager-writelock', '--variant', 'none,vm_ops', '--scenario', '1b', '--json']);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.out) as AttackDoc;
    expect(doc.targets).toEqual(['eager-writelock:none', 'eager-writelock:vm_ops']);
    expect(doc.results.map((x) => x.verdict)).toEqual(['vulnerable', 'immune']);
  });

  it('--json: a document that follows the schema, with the evidence', async () => {
    const r = await run(['attack', '--design', 'eager:none,pfnmap', '--scenario', '1c,2', '--seed', '3', '--json']);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.out) as AttackDoc;
    const ok = validate(doc);
    expect(ok ? [] : validate.errors).toEqual([]);
    expect(doc).toMatchObject({ schema: 'mmulab.attack/1', seed: 3, targets: ['eager:none', 'pfnmap'], scenarios: ['1c', '2'], vulnerable: ['eager:none'], expectSafe: { names: [], violated: [] } });
    expect(doc.results).toHaveLength(4);
    const bad = doc.results.find((x) => x.target === 'eager:none' && x.scenario === '1c')!;
    expect(bad.verdict).toBe('vulnerable');
    expect(bad.evidence.vmas[0]).toMatchObject({ role: 'impostor', start: '0x40000000' });
    expect(bad.evidence.reports.map((x) => x.title)).toContain('kernel BUG at mm/hugetlb.c: __unmap_hugepage_range');
    const splice = doc.results.find((x) => x.target === 'pfnmap' && x.scenario === '2')!;
    expect(splice.summary).toMatch(/vmsplice refused \(EFAULT\)/);
    // The schema is strict enough to reject a wrong document.
    expect(validate({ ...doc, results: [{ ...bad, verdict: 'immune' }] })).toBe(false);
    expect(validate({ ...doc, schema: 'mmulab.ab/1' })).toBe(false);
    expect(validate({ ...doc, cpus: 1 })).toBe(false);
    const { cpus: _cpus, ...noCpus } = doc as AttackDoc & { cpus: number };
    expect(validate(noCpus)).toBe(false);
  });

  it('--cpus and --cost-model shape every scenario\'s machine and are recorded; the verdicts stay', async () => {
    const costs = join(mkdtempSync(join(tmpdir(), 'mmulab-attack-')), 'costs.json');
    writeFileSync(costs, JSON.stringify({ clockGhz: 2, hw: { ipiLatency: 9000 }, kernel: { contextSwitch: 3000 } }));
    const args = ['attack', '--design', 'eager:none,fault', '--scenario', '1a,3'];
    const base = JSON.parse((await run([...args, '--json'])).out) as AttackDoc & { cpus: number };
    expect(base.cpus).toBe(2);
    const r = await run([...args, '--cpus', '4', '--cost-model', costs, '--json']);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.out) as AttackDoc & { cpus: number; costModel: string; costs: { clockGhz: number; hw: Record<string, number>; kernel: Record<string, number> } };
    expect(validate(doc) ? [] : validate.errors).toEqual([]);
    expect(doc.cpus).toBe(4);
    expect(doc.costModel).toBe(costs);
    // The effective model: every cost, the file's where it set one.
    expect(doc.costs).toEqual({ ...(base as unknown as typeof doc).costs, clockGhz: 2, hw: { ...(base as unknown as typeof doc).costs.hw, ipiLatency: 9000 }, kernel: { ...(base as unknown as typeof doc).costs.kernel, contextSwitch: 3000 } });
    expect((base as unknown as typeof doc).costs.hw.ipiLatency).toBe(3720);
    expect(validate({ ...doc, costs: { ...doc.costs, clockGhz: 0 } })).toBe(false);
    expect(doc.results.map((x) => x.verdict)).toEqual(base.results.map((x) => x.verdict));
    const text = await run([...args, '--cpus', '4']);
    expect(text.out.split('\n')[0]).toBe('mmulab attack: binder security scenarios, seed 1, 4 CPUs');
  });

  it('--expect-safe: exit 1 naming the design and the scenarios when one of them is vulnerable', async () => {
    const r = await run(['attack', '--design', 'fault', '--scenario', '1a', '--expect-safe', 'eager:none', '--expect-safe', 'fault']);
    expect(r.code).toBe(1);
    // A design expected safe is attacked even when --design does not name it.
    expect(r.out).toMatch(/^eager:none\s+VULNERABLE$/m);
    expect(r.out).toContain('expected safe, but vulnerable: eager:none (scenario 1a)');
    expect(r.err).toBe('mmulab attack: expected safe, but vulnerable: eager:none (1a)\n');
  });

  it('--expect-safe: exit 0 when the designs named are immune; a bare eager name covers its variants', async () => {
    const safe = await run(['attack', '--scenario', '1a,1b', '--expect-safe', 'fault,eager:vm_ops', '--design', 'fault,eager:vm_ops,eager:none', '--json']);
    expect(safe.code).toBe(0);
    const doc = JSON.parse(safe.out) as AttackDoc;
    expect(doc.vulnerable).toEqual(['eager:none']);
    expect(doc.expectSafe).toEqual({ names: ['fault', 'eager:vm_ops'], violated: [] });
    const all = await run(['attack', '--scenario', '1a', '--design', 'eager', '--variant', 'mapped', '--expect-safe', 'eager', '--json']);
    expect(all.code).toBe(1);
    expect((JSON.parse(all.out) as AttackDoc).expectSafe.violated).toEqual([{ target: 'eager:none', scenarios: ['1a'] }]);
  });

  it('--plant judges scenarios 3 and 5 with their planted bug', async () => {
    const r = await run(['attack', '--design', 'fault', '--scenario', '3', '--plant', '--expect-safe', 'fault']);
    expect(r.code).toBe(1);
    expect(r.out).toContain('judging the planted bugs of scenarios 3 and 5');
    expect(r.out).toContain('report BUG: KASAN: use-after-free in user access');
  });

  it('bad usage: exit 2 with one line naming the problem', async () => {
    const cases: [string[], RegExp][] = [
      [['attack', '--design', 'bogus'], /unknown design "bogus" \(known: eager, eager-writelock, eager-deferred, fault, pfnmap\)/],
      [['attack', '--design', 'fault:none'], /design "fault" has no identity variants/],
      [['attack', '--variant', 'strict'], /unknown variant "strict" \(known: none, mapped, vm_ops\)/],
      [['attack', '--scenario', '6'], /unknown scenario "6" \(known: 1, 1a, 1b, 1c, 1d, 2, 3, 4, 5\)/],
      [['attack', '--expect-safe', 'eager:strict'], /unknown identity variant "strict"/],
      [['attack', '--design', 'fault', '--variant', 'none'], /--variant applies to the eager designs only/],
      [['attack', '--seed', 'x'], /--seed must be an integer/],
      [['attack', '--cpus', '1'], /--cpus must be between 2 and 64, got 1/],
      [['attack', '--engine', 'quick'], /--engine.*quick/],
      [['attack', '--cost-model', '/nonexistent/costs.json'], /--cost-model: cannot read cost model \/nonexistent\/costs\.json: no such file/],
    ];
    for (const [args, msg] of cases) {
      const r = await run(args);
      expect(`${args.join(' ')} → ${r.code}`).toBe(`${args.join(' ')} → 2`);
      expect(r.out).toBe('');
      expect(r.err).toMatch(msg);
      expect(r.err.split('\n').filter((l) => l && !l.startsWith('(run mmulab --help'))).toHaveLength(1);
    }
  });

  it('--help lists the scenarios and examples', async () => {
    const r = await run(['attack', '--help']);
    expect(r.code).toBe(0);
    expect(r.out).toContain('Usage: mmulab attack [options]');
    expect(r.out).toContain('--expect-safe <names>');
    expect(r.out).toContain('1d  impostor VMA: another binder mapping');
    expect(r.out).toContain('Examples:');
    expect(r.out).toContain('mmulab attack --expect-safe fault --expect-safe eager:vm_ops');
  });
});
