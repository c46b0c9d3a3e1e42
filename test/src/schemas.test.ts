/**
 * The documented JSON Schemas of `mmulab run --json` (docs/schemas/run.schema.json), of the
 * inspection commands' --json (docs/schemas/inspect.schema.json, one schema for maps, smaps,
 * pagemap and ptdump), of `mmulab fuzz --json` (docs/schemas/fuzz.schema.json: a run's summary or
 * a replayed case) and of `mmulab demo --json` (docs/schemas/demo.schema.json): every workload,
 * view and kind of fuzz result, run through main(), validates; the schemas are strict enough to
 * reject a document with a field missing, mistyped or unknown, or records that do not belong to
 * the view; every schema compiles under ajv's strict mode, the cost model the ab, attack and
 * shootdown results record is described the same way in each, and the README lists every schema
 * file.
 */

import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import fc from 'fast-check';
import { main } from '../../src/cli.ts';
import { arbScenario } from '../../src/fuzz/ops.ts';
import { COST_MODEL_JSON_SCHEMA } from '../../src/experiments/cost_model.ts';
import { SHOOTDOWN_JSON_SCHEMA } from '../../src/experiments/shootdown-report.ts';
import { DEFAULT_HW_COSTS } from '../../hw/cost.ts';
import { DEFAULT_KERNEL_COSTS } from '../../kernel/cost.ts';

const SCHEMAS = new URL('../../docs/schemas/', import.meta.url);
const load = (name: string): Record<string, unknown> => JSON.parse(readFileSync(new URL(name, SCHEMAS), 'utf8')) as Record<string, unknown>;

const ajv = new Ajv2020({ allErrors: true });
ajv.addSchema(load('run.schema.json'));
ajv.addSchema(load('inspect.schema.json'));
ajv.addSchema(load('fuzz.schema.json'));
ajv.addSchema(load('demo.schema.json'));
const validateRun = ajv.getSchema('https://mmulab.dev/schemas/run.schema.json') as ValidateFunction;
const validateInspect = ajv.getSchema('https://mmulab.dev/schemas/inspect.schema.json') as ValidateFunction;
const validateFuzz = ajv.getSchema('https://mmulab.dev/schemas/fuzz.schema.json') as ValidateFunction;
const validateScenario = ajv.getSchema('https://mmulab.dev/schemas/fuzz.schema.json#/$defs/scenario') as ValidateFunction;
const validateDemo = ajv.getSchema('https://mmulab.dev/schemas/demo.schema.json') as ValidateFunction;

async function run(args: string[]) {
  let out = '';
  let err = '';
  const code = await main(args, { out: (s) => void (out += s), err: (s) => void (err += s) });
  return { code, out, err };
}

async function json(args: string[], expected = { code: 0, err: '' as string | RegExp }): Promise<Record<string, unknown>> {
  const r = await run([...args, '--json']);
  if (typeof expected.err === 'string') expect(r.err, args.join(' ')).toBe(expected.err);
  else expect(r.err, args.join(' ')).toMatch(expected.err);
  expect(r.code, args.join(' ')).toBe(expected.code);
  return JSON.parse(r.out) as Record<string, unknown>;
}

/** `doc` changed by `f` (a deep copy). */
function changed(doc: Record<string, unknown>, f: (d: Record<string, any>) => void): Record<string, any> {
  const d = structuredClone(doc) as Record<string, any>;
  f(d);
  return d;
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
    ['fork, in checking mode', ['fork', ...SMALL, '--debug-vm']],
    ['binder', ['binder', '--iterations', '3', '--design', 'fault', '--memory', '32']],
    ['a lackey trace, with --trace', ['--lackey', FIXTURE, '--trace', join(tmp, 't.txt')]],
    ['a module', ['--module', module, '--cpus', '1']],
    ['zipf on the parallel engine', ['zipf', ...SMALL, '--threads', '2', '--cpus', '2', '--engine', 'parallel']],
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
    expect(bad((d) => (d.options.engine = 'threads'))).toBe(false);
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

describe('docs/schemas/fuzz.schema.json', { timeout: 120_000 }, () => {
  // The smallest runs fuzz accepts: --ops 1 (one chunk of cases), short cases, one job.
  const TINY = ['fuzz', '--seed', '5', '--ops', '1', '--ops-per-run', '20', '--jobs', '1'];

  it('validates a run that found nothing', async () => {
    const doc = await json(TINY, { code: 0, err: 'mmulab fuzz: seed 5, 1 operations\n' });
    expect(errorsOf(validateFuzz, doc)).toEqual([]);
    expect(doc).toMatchObject({ schema: 'mmulab.fuzz/1', seed: 5, counterexample: null });
  });

  it('validates a run on worker processes, with --cpus and --cost-model', async () => {
    const doc = await json(['fuzz', '--seed', '5', '--ops', '2', '--ops-per-run', '20', '--jobs', '2', '--cpus', '3', '--cost-model', costs], { code: 0, err: /^mmulab fuzz: seed 5, 2 operations, 2 jobs, 3 CPUs, cost model / });
    expect(errorsOf(validateFuzz, doc)).toEqual([]);
  });

  it('validates a run on the parallel engine, which its settings record', async () => {
    const doc = await json([...TINY, '--engine', 'parallel'], { code: 0, err: 'mmulab fuzz: seed 5, 1 operations, parallel engine\n' });
    expect(errorsOf(validateFuzz, doc)).toEqual([]);
    expect((doc.settings as Record<string, unknown>).engine).toBe('parallel');
  });

  it('validates a run that found a (planted) failure, with its shrunk counterexample', async () => {
    const doc = await json(['fuzz', '--seed', '1', '--ops', '2000', '--ops-per-run', '20', '--plant', 'leak-ref', '--shrink-time', '5', '--jobs', '1'], { code: 1, err: /^mmulab fuzz: seed 1/ });
    expect(errorsOf(validateFuzz, doc)).toEqual([]);
    const c = doc.counterexample as Record<string, any>;
    expect(c.failure.kind).toBe('invariant');
    expect(c.replay).toBe(`mmulab fuzz --replay ${c.token} --ops-per-run 20 --plant leak-ref`);
  });

  it('validates a replayed case, passing and failing', async () => {
    const passed = await json(['fuzz', '--replay', '5:0', '--ops-per-run', '300']);
    expect(errorsOf(validateFuzz, passed)).toEqual([]);
    expect(passed.replay).toBe('mmulab fuzz --replay 5:0 --ops-per-run 300');
    expect((passed.result as { failure: unknown }).failure).toBeNull();
    expect((passed.scenario as { ops: unknown[] }).ops.length).toBeGreaterThan(100);
    const failed = await json(['fuzz', '--replay', '5:0', '--ops-per-run', '300', '--plant', 'leak-ref'], { code: 1, err: '' });
    expect(errorsOf(validateFuzz, failed)).toEqual([]);
    expect((failed.result as { failure: { kind: string } }).failure.kind).toBe('invariant');
  });

  it('describes every case the generator makes, wild values (NaN prints as null) included', () => {
    const cases = fc.sample(arbScenario({ ops: 300 }), { seed: 11, numRuns: 30, unbiased: true });
    for (const s of cases) expect(errorsOf(validateScenario, JSON.parse(JSON.stringify(s)))).toEqual([]);
    const ops = cases.flatMap((s) => s.ops);
    expect(new Set(ops.map((o) => o.t)).size).toBe(19); // every kind of operation was checked
  });

  it('rejects a missing, mistyped or unknown field, and a summary mixed with a replay', async () => {
    const summary = await json(TINY, { code: 0, err: /^mmulab fuzz/ });
    const replay = await json(['fuzz', '--replay', '5:0', '--ops-per-run', '20']);
    expect(validateFuzz(summary)).toBe(true);
    expect(validateFuzz(replay)).toBe(true);
    const bad = (doc: Record<string, unknown>, f: (d: Record<string, any>) => void): boolean => validateFuzz(changed(doc, f));
    expect(bad(summary, (d) => delete d.ops)).toBe(false);
    expect(bad(summary, (d) => (d.cases = '4'))).toBe(false);
    expect(bad(summary, (d) => (d.byOp.teleport = 1))).toBe(false);
    expect(bad(summary, (d) => (d.outcomes.errnos.EINVAL = -1))).toBe(false);
    expect(bad(summary, (d) => delete d.outcomes.binderUserErrors)).toBe(false);
    expect(bad(summary, (d) => (d.counterexample = { token: '5:0' }))).toBe(false);
    expect(bad(summary, (d) => (d.schema = 'mmulab.fuzz/2'))).toBe(false);
    expect(bad(summary, (d) => (d.surprise = true))).toBe(false);
    expect(bad(summary, (d) => (d.scenario = replay.scenario))).toBe(false); // a summary holds no case
    expect(bad(replay, (d) => delete d.result.cycles)).toBe(false);
    expect(bad(replay, (d) => (d.result.failure = { kind: 'oops', message: '', op: 0 }))).toBe(false);
    expect(bad(replay, (d) => (d.scenario.ops[0].t = 'ioctl'))).toBe(false);
    expect(bad(replay, (d) => (d.scenario.ops[0].extra = 1))).toBe(false);
    expect(bad(replay, (d) => (d.scenario.ops = []))).toBe(false);
    expect(bad(replay, (d) => (d.scenario.designs = [0]))).toBe(false);
    expect(bad(replay, (d) => (d.scenario.ops[0] = { t: 'touch', a: 0, addr: { r: 'win', page: 1, off: 0 }, kind: 'poke', pages: 1 }))).toBe(false);
    expect(bad(replay, (d) => (d.scenario.ops[0] = { t: 'munmap', a: 0, addr: { r: 'wild', page: 1 }, len: { pages: 1, delta: 0 } }))).toBe(false);
    expect(bad(replay, (d) => (d.seed = 5))).toBe(false); // a replay has no seed of its own
    expect(bad(replay, (d) => (d.replay = 'mmulab fuzz --seed 5'))).toBe(false);
  });
});

describe('docs/schemas/demo.schema.json', { timeout: 120_000 }, () => {
  it('validates the tour, on the built-in costs and on a --cost-model', async () => {
    const doc = await json(['demo']);
    expect(errorsOf(validateDemo, doc)).toEqual([]);
    expect(doc.schema).toBe('mmulab.demo/1');
    const withCosts = await json(['demo', '--cost-model', costs]);
    expect(errorsOf(validateDemo, withCosts)).toEqual([]);
    // The costs the demo machine ran with: the file's where it set them.
    const file = JSON.parse(readFileSync(costs, 'utf8')) as { clockGhz?: number; hw?: Record<string, number> };
    const recorded = (withCosts as { costs: { clockGhz: number; hw: Record<string, number> } }).costs;
    if (file.clockGhz !== undefined) expect(recorded.clockGhz).toBe(file.clockGhz);
    for (const [k, v] of Object.entries(file.hw ?? {})) expect(recorded.hw[k]).toBe(v);
    expect(Object.keys(file.hw ?? {}).length + (file.clockGhz !== undefined ? 1 : 0)).toBeGreaterThan(0);
  });

  it('rejects a missing, mistyped or unknown field', async () => {
    const doc = await json(['demo']);
    const bad = (f: (d: Record<string, any>) => void): boolean => validateDemo(changed(doc, f));
    expect(bad((d) => delete d.counters.cycles)).toBe(false);
    expect(bad((d) => (d.counters.tlbMagic = 1))).toBe(false);
    expect(bad((d) => (d.counters.walks = 1.5))).toBe(false);
    expect(bad((d) => (d.rows = []))).toBe(false);
    expect(bad((d) => (d.rows[0].cpl = 1))).toBe(false);
    expect(bad((d) => (d.rows[0].kind = 'execute'))).toBe(false);
    expect(bad((d) => (d.rows[0].va = '7f0000001000'))).toBe(false);
    expect(bad((d) => (d.rows[0].answeredBy = 'cache'))).toBe(false);
    expect(bad((d) => (d.rows[0].pteAfter = 'A=1'))).toBe(false);
    expect(bad((d) => (d.rows[0].result = 'ok'))).toBe(false);
    expect(bad((d) => delete d.rows[0].step)).toBe(false);
    expect(bad((d) => (d.rows[0].note = ''))).toBe(false);
    expect(bad((d) => delete d.schema)).toBe(false);
    expect(bad((d) => (d.extra = 1))).toBe(false);
  });
});

describe('the cost model in ab, attack and shootdown results', () => {
  it('is described once, the same way in each schema, with every cost of the built-in model', () => {
    const fragment = JSON.parse(JSON.stringify(COST_MODEL_JSON_SCHEMA)) as { properties: { hw: { required: string[] }; kernel: { required: string[] } } };
    for (const f of ['ab.schema.json', 'attack.schema.json', 'shootdown.schema.json', 'run.schema.json']) expect((load(f).$defs as Record<string, unknown>).costModel, f).toEqual(fragment);
    expect(JSON.parse(JSON.stringify(SHOOTDOWN_JSON_SCHEMA.$defs.costModel))).toEqual(fragment);
    expect(fragment.properties.hw.required).toEqual(Object.keys(DEFAULT_HW_COSTS));
    expect(fragment.properties.kernel.required).toEqual(Object.keys(DEFAULT_KERNEL_COSTS));
  });
});

describe('the schema files', () => {
  const files = readdirSync(SCHEMAS).filter((f) => f.endsWith('.schema.json')).sort();

  it('are all there, compile in ajv strict mode and name themselves', () => {
    expect(files).toEqual(['ab.schema.json', 'attack.schema.json', 'demo.schema.json', 'fuzz.schema.json', 'inspect.schema.json', 'run.schema.json', 'shootdown.schema.json']);
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
