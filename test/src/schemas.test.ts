/**
 * The documented JSON Schemas of `mmulab run --json` (docs/schemas/run.schema.json) and of the
 * inspection commands' --json (docs/schemas/inspect.schema.json, one schema for maps, smaps,
 * pagemap and ptdump): every workload and every view, run through main(), validates; the schemas
 * are strict enough to reject a document with a field missing, mistyped or unknown, or records
 * that do not belong to the view; every schema compiles under ajv's strict mode, and the README
 * lists every schema file.
 */

import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import { main } from '../../src/cli.ts';

const SCHEMAS = new URL('../../docs/schemas/', import.meta.url);
const load = (name: string): Record<string, unknown> => JSON.parse(readFileSync(new URL(name, SCHEMAS), 'utf8')) as Record<string, unknown>;

const ajv = new Ajv2020({ allErrors: true });
ajv.addSchema(load('run.schema.json'));
ajv.addSchema(load('inspect.schema.json'));
const validateRun = ajv.getSchema('https://mmulab.dev/schemas/run.schema.json') as ValidateFunction;
const validateInspect = ajv.getSchema('https://mmulab.dev/schemas/inspect.schema.json') as ValidateFunction;

async function run(args: string[]) {
  let out = '';
  let err = '';
  const code = await main(args, { out: (s) => void (out += s), err: (s) => void (err += s) });
  return { code, out, err };
}

async function json(args: string[]): Promise<Record<string, unknown>> {
  const r = await run([...args, '--json']);
  expect(r.err, args.join(' ')).toBe('');
  expect(r.code, args.join(' ')).toBe(0);
  return JSON.parse(r.out) as Record<string, unknown>;
}

function errorsOf(validate: ValidateFunction, doc: unknown): unknown[] {
  return validate(doc) ? [] : (validate.errors ?? []);
}

const FIXTURE = join(import.meta.dirname, '..', 'fixtures', 'lackey-true.txt');
const tmp = mkdtempSync(join(tmpdir(), 'mmulab-schemas-'));
const costs = join(tmp, 'costs.json');
writeFileSync(costs, JSON.stringify({ clockGhz: 2, hw: { walkMemRef: 40 } }));
const module = join(tmp, 'prog.mjs');
writeFileSync(module, 'export default function* (u, lib) { const a = yield* u.mmap(0, 8192, lib.PROT_READ | lib.PROT_WRITE, lib.MAP_PRIVATE | lib.MAP_ANONYMOUS); yield* u.store32(a, 1); }\n');

const SMALL = ['--pages', '16', '--accesses', '300', '--memory', '32'];

describe('docs/schemas/run.schema.json', () => {
  const RUNS: [string, string[]][] = [
    ['sequential', ['sequential', ...SMALL, '--threads', '2']],
    ['strided', ['strided', ...SMALL, '--stride', '8192']],
    ['random', ['random', ...SMALL, '--writes', '1']],
    ['zipf', ['zipf', ...SMALL, '--zipf', '1.2', '--cost-model', costs]],
    ['fork', ['fork', ...SMALL]],
    ['binder', ['binder', '--iterations', '3', '--design', 'fault', '--memory', '32']],
    ['a lackey trace, with --trace', ['--lackey', FIXTURE, '--trace', join(tmp, 't.txt')]],
    ['a module', ['--module', module, '--cpus', '1']],
  ];
  for (const [what, args] of RUNS) {
    it(`validates the result of ${what}`, async () => {
      const doc = await json(['run', ...args]);
      expect(errorsOf(validateRun, doc)).toEqual([]);
    });
  }

  it('rejects a missing, mistyped or unknown field, and options that do not fit the workload', async () => {
    const doc = await json(['run', 'strided', ...SMALL]);
    expect(validateRun(doc)).toBe(true);
    const bad = (f: (d: Record<string, any>) => void): boolean => {
      const d = structuredClone(doc) as Record<string, any>;
      f(d);
      return validateRun(d);
    };
    expect(bad((d) => delete d.tlb)).toBe(false);
    expect(bad((d) => delete d.tlb.l1d.hitRate)).toBe(false);
    expect(bad((d) => (d.tlb.walks = 'many'))).toBe(false);
    expect(bad((d) => (d.tlb.stlb.hitRate = 1.5))).toBe(false);
    expect(bad((d) => (d.faults.byKind.anon = -1))).toBe(false);
    expect(bad((d) => delete d.perCpu[0].l1Hits)).toBe(false);
    expect(bad((d) => (d.processes[0].pid = '1'))).toBe(false);
    expect(bad((d) => (d.outcome.reason = 'crashed'))).toBe(false);
    expect(bad((d) => (d.surprise = 1))).toBe(false);
    expect(bad((d) => (d.rss.extraKb = 0))).toBe(false);
    expect(bad((d) => delete d.options.stride)).toBe(false); // strided records its stride
    expect(bad((d) => (d.options.engine = 'parallel'))).toBe(false);
    expect(bad((d) => (d.workload = 'binder'))).toBe(false); // binder needs its options and section
    expect(bad((d) => (d.binder = { transactions: 1, failures: 0, latencyUs: { p50: 1, p99: 1, max: 1 } }))).toBe(false);
    expect(bad((d) => (d.schema = 'mmulab.run/2'))).toBe(false);
  });
});

describe('docs/schemas/inspect.schema.json', () => {
  const VIEWS: [string, string[]][] = [
    ['maps', ['maps', 'binder', '--iterations', '2', '--memory', '32']],
    ['maps of a lackey trace', ['maps', '--lackey', FIXTURE]],
    ['smaps', ['smaps', 'fork', '--pages', '8', '--accesses', '20', '--memory', '32', '--process', 'fork-child']],
    ['smaps --rollup', ['smaps', 'fork', '--pages', '8', '--accesses', '20', '--memory', '32', '--rollup']],
    ['pagemap --all', ['pagemap', 'sequential', '--pages', '8', '--accesses', '100', '--all', '--cost-model', costs]],
    ['pagemap at a step', ['pagemap', 'sequential', ...SMALL, '--at-step', '1']],
    ['ptdump', ['ptdump', 'binder', '--iterations', '2', '--memory', '32']],
  ];
  for (const [what, args] of VIEWS) {
    it(`validates ${what}`, async () => {
      const doc = await json(args);
      expect(errorsOf(validateInspect, doc)).toEqual([]);
      expect(doc.schema).toBe('mmulab.inspect/1');
    });
  }

  it('rejects records of another view, and a missing, mistyped or unknown field', async () => {
    const maps = await json(['maps', 'sequential', ...SMALL]);
    const pagemap = await json(['pagemap', 'sequential', ...SMALL]);
    const ptdump = await json(['ptdump', 'sequential', ...SMALL]);
    const smaps = await json(['smaps', 'sequential', ...SMALL]);
    for (const d of [maps, pagemap, ptdump, smaps]) expect(errorsOf(validateInspect, d)).toEqual([]);
    const bad = (doc: Record<string, unknown>, f: (d: Record<string, any>) => void): boolean => {
      const d = structuredClone(doc) as Record<string, any>;
      f(d);
      return validateInspect(d);
    };
    // The records must be the view's.
    expect(bad(maps, (d) => (d.view = 'pagemap'))).toBe(false);
    expect(bad(pagemap, (d) => (d.view = 'ptdump'))).toBe(false);
    expect(bad(maps, (d) => (d.view = 'smaps'))).toBe(false); // maps records lack fields and vmFlags
    expect(bad(maps, (d) => (d.pages = []))).toBe(false);
    // Missing, mistyped, unknown.
    expect(bad(maps, (d) => delete d.text)).toBe(false);
    expect(bad(maps, (d) => delete d.vmas[0].perms)).toBe(false);
    expect(bad(maps, (d) => (d.vmas[0].perms = 'rwz'))).toBe(false);
    expect(bad(maps, (d) => (d.vmas[0].start = '7f00'))).toBe(false);
    expect(bad(maps, (d) => (d.vmas[0].colour = 'red'))).toBe(false);
    expect(bad(maps, (d) => (d.pid = 0))).toBe(false);
    expect(bad(maps, (d) => (d.at.reason = 'later'))).toBe(false);
    expect(bad(maps, (d) => delete d.options.pages)).toBe(false);
    expect(bad(maps, (d) => (d.extra = true))).toBe(false);
    expect(bad(smaps, (d) => (d.vmas[0].fields.Rss = '64 kB'))).toBe(false);
    expect(bad(smaps, (d) => delete d.vmas[0].vmFlags)).toBe(false);
    expect(bad(pagemap, (d) => (d.pages[0].pfn = -1))).toBe(false);
    expect(bad(pagemap, (d) => (d.pages[0].flags = ['present', 'haunted']))).toBe(false);
    expect(bad(pagemap, (d) => (d.pages[0].entry = '0x1'))).toBe(false);
    expect(bad(ptdump, (d) => (d.lines[1].level = 'pte4'))).toBe(false);
    expect(bad(ptdump, (d) => (d.lines[0] = { marker: 'User Space', level: 'pgd' }))).toBe(false);
  });
});

describe('the schema files', () => {
  const files = readdirSync(SCHEMAS).filter((f) => f.endsWith('.schema.json')).sort();

  it('are all there, compile in ajv strict mode and name themselves', () => {
    expect(files).toEqual(['ab.schema.json', 'attack.schema.json', 'inspect.schema.json', 'run.schema.json', 'shootdown.schema.json']);
    const strict = new Ajv2020({ strict: true, strictRequired: false, allowUnionTypes: true });
    for (const f of files) {
      const s = load(f);
      expect(s.$id, f).toBe(`https://mmulab.dev/schemas/${f}`);
      strict.addSchema(s);
    }
    for (const f of files) expect(() => strict.getSchema(`https://mmulab.dev/schemas/${f}`), f).not.toThrow();
  });

  it('are each listed in the README', () => {
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    for (const f of files) expect(readme, f).toContain(`docs/schemas/${f}`);
  });
});
