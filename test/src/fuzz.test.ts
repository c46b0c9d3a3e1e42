// `mmulab fuzz` (src/commands/fuzz.ts): a clean run, a planted bug that is found, shrunk and
// printed with a replay line that reproduces it, replays of passing cases, JSON, the shared
// options (--cpus, --cost-model and --engine become part of the replay line), bad usage.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { main } from '../../src/cli.ts';
import { arbScenario, type Scenario } from '../../src/fuzz/ops.ts';
import { DEFAULT_SHAPE, replayCommand } from '../../src/fuzz/replay.ts';

async function run(args: string[]) {
  let out = '';
  let err = '';
  const code = await main(args, { out: (s) => void (out += s), err: (s) => void (err += s) });
  return { code, out, err };
}

describe('mmulab fuzz', () => {
  it('runs a fixed amount of work from a seed and reports nothing found', async () => {
    const r = await run(['fuzz', '--seed', '3', '--ops', '3000', '--ops-per-run', '200', '--jobs', '1']);
    expect(r.err).toContain('mmulab fuzz: seed 3');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^seed 3: \d+ cases, \d+ operations \(\d+ skipped\) in [\d.]+ s \(\d+ ops\/s\), \d+ invariant checks$/m);
    expect(Number(/(\d+) operations/.exec(r.out)![1])).toBeGreaterThanOrEqual(3000);
    expect(r.out).toContain('result: no invariant violation, no unexpected report');
  }, 120_000);

  it('finds a planted bug, prints the shrunk case and a replay line, and the replay line reproduces it', async () => {
    const r = await run(['fuzz', '--seed', '1', '--ops', '400000', '--ops-per-run', '200', '--plant', 'leak-ref', '--shrink-time', '5', '--jobs', '1']);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/FAILURE \(invariant\) at op \d+: mm invariants violated/);
    expect(r.out).toMatch(/refcount \d+ but \d+ mappings \+ 0 holder references/);
    expect(r.out).toMatch(/^seed \d+, path [\d:]+ \(shrunk in \d+ runs\) — the minimal case:$/m);
    expect(r.out).toMatch(/^\s+0: @\d+ /m); // the shrunk sequence, one op per line
    const line = /^replay: (mmulab fuzz --replay \d+(?::\d+)+ --ops-per-run 200 --plant leak-ref)$/m.exec(r.out);
    expect(line, r.out).not.toBeNull();
    const token = /--replay (\S+)/.exec(line![1]!)![1]!;
    expect(r.out).toContain(`seed ${token.split(':')[0]}, path ${token.split(':').slice(1).join(':')}`);
    // Run the printed command.
    const again = await run(line![1]!.split(' ').slice(1));
    expect(again.code).toBe(1);
    expect(again.out).toMatch(/FAILURE \(invariant\) at op \d+: mm invariants violated/);
    expect(again.out).toContain(`replay: ${line![1]}`);
    // The same case, printed the same way.
    const caseOf = (s: string) => s.split('\n').filter((l) => /^\s+\d+: @/.test(l));
    expect(caseOf(again.out)).toEqual(caseOf(r.out));
    // Without the planted bug the same case passes.
    const clean = await run(['fuzz', '--replay', token, '--ops-per-run', '200']);
    expect(clean.code).toBe(0);
    expect(clean.out).toMatch(/the case passed: \d+ operations, \d+ checks/);
  }, 300_000);

  it('runs on the parallel engine: the engine is part of the replay line, and the case it names fails there only', async () => {
    // A planted missing flush found on the parallel engine (seed 5, 20,000 operations), shrunk to
    // two operations: the receiver reads its buffer, then reclaim zaps the page without a flush.
    // CPU 0's turn covers both, so its TLB keeps the translation of the freed frame; under the
    // deterministic engine's interleaving the same two operations leave no stale entry.
    const token = '12:0:0:0:0:0:4:34:12:13:27:7:4:4:5:4:3:3:3:3:2:2:2:2:2';
    const par = await run(['fuzz', '--replay', token, '--plant', 'zap-without-flush', '--engine', 'parallel']);
    expect(par.code, par.out + par.err).toBe(1);
    expect(par.out).toMatch(/FAILURE \(invariant\) at op 1: mm invariants violated/);
    expect(par.out).toMatch(/TLB entry 0x[0-9a-f]+ \(pcid \d+, mm \d+\) still translates to free frame/);
    expect(par.out).toContain(`replay: mmulab fuzz --replay ${token} --plant zap-without-flush --engine parallel`);
    const det = await run(['fuzz', '--replay', token, '--plant', 'zap-without-flush']);
    expect(det.code).toBe(0);
    expect(det.out).toMatch(/the case passed: 2 operations/);
  }, 120_000);

  it('prints JSON, and splits the work over worker processes with --jobs', async () => {
    const r = await run(['fuzz', '--seed', '8', '--ops', '1000', '--ops-per-run', '100', '--json', '--jobs', '2']);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.out) as { schema: string; seed: number; ops: number; cases: number; counterexample: unknown; byOp: Record<string, number>; outcomes: { errnos: Record<string, number> } };
    expect(doc.schema).toBe('mmulab.fuzz/1'); // docs/schemas/fuzz.schema.json, validated in schemas.test.ts
    expect(doc.seed).toBe(8);
    // What the run was asked to do, as given on the command line.
    expect((doc as unknown as { settings: unknown }).settings).toEqual({ ops: 1000, jobs: 2, opsPerRun: 100, roundOps: 16, checkEvery: 64, plant: null, cpus: null, costModel: null, debugVm: false });
    expect(doc.ops).toBeGreaterThanOrEqual(1000);
    expect(doc.counterexample).toBeNull();
    expect(Object.keys(doc.byOp).length).toBeGreaterThan(5);
  }, 120_000);

  it('--cpus fixes every case\'s CPU count; it and --cost-model are part of the replay line', async () => {
    const cases = fc.sample(arbScenario({ ops: 20, cpus: 6 }), { seed: 4, numRuns: 5, unbiased: true }) as Scenario[];
    expect(cases.map((s) => s.cpus)).toEqual([6, 6, 6, 6, 6]);
    // Without --cpus the cases are generated as before (replay tokens keep working).
    const drawn = fc.sample(arbScenario({ ops: 20 }), { seed: 4, numRuns: 20, unbiased: true }) as Scenario[];
    expect(new Set(drawn.map((s) => s.cpus)).size).toBeGreaterThan(1);
    const kernel = { clockGhz: 2 };
    expect(replayCommand({ seed: 1, path: '2' }, { ...DEFAULT_SHAPE, cpus: 6, costs: { file: 'c.json', kernel } })).toBe('mmulab fuzz --replay 1:2 --cpus 6 --cost-model c.json');
    expect(replayCommand({ seed: 1, path: '2' }, { ...DEFAULT_SHAPE, costs: { file: "my costs.json", kernel } })).toBe("mmulab fuzz --replay 1:2 --cost-model 'my costs.json'");
    const r = await run(['fuzz', '--seed', '3', '--ops', '200', '--ops-per-run', '50', '--cpus', '3', '--jobs', '1']);
    expect(r.code).toBe(0);
    expect(r.err).toBe('mmulab fuzz: seed 3, 200 operations, 3 CPUs\n');
  }, 120_000);

  it('--debug-vm audits after every scheduling step: a planted missing flush is caught at the step, and the replay line keeps the mode', async () => {
    const clean = await run(['fuzz', '--seed', '5', '--ops', '1500', '--ops-per-run', '150', '--debug-vm', '--jobs', '1']);
    expect(clean.code, clean.out).toBe(0);
    expect(clean.out).toContain('result: no invariant violation, no unexpected report');
    // --check-every larger than any case: only the per-step audit (and the final checks) can see it.
    const r = await run(['fuzz', '--seed', '1', '--ops', '100000', '--ops-per-run', '100', '--check-every', '1000', '--plant', 'skip-flush', '--debug-vm', '--shrink-time', '5', '--jobs', '1']);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/unexpected BUG report (?:after op \d+|at the end): BUG: mm invariant violated after engine step \d+ \(CPU \d+\): .*still translates to free frame/);
    const line = /^replay: (mmulab fuzz --replay \S+ --ops-per-run 100 --check-every 1000 --plant skip-flush --debug-vm)$/m.exec(r.out);
    expect(line, r.out).not.toBeNull();
    const again = await run(line![1]!.split(' ').slice(1));
    expect(again.code).toBe(1);
    expect(again.out).toMatch(/BUG: mm invariant violated after engine step/);
  }, 300_000);

  it('rejects bad usage with exit code 2 and one line', async () => {
    for (const [args, msg] of [
      [['fuzz', '--replay', 'nonsense'], /--replay must look like SEED:PATH/],
      [['fuzz', '--plant', 'bogus'], /unknown bug "bogus"/],
      [['fuzz', '--replay', '1:2', '--time', '5'], /--replay runs one case/],
      [['fuzz', '--time', '0'], /--time must be between 1/],
      [['fuzz', '--ops', '-5'], /--ops must be between 1/],
      [['fuzz', '--cpus', '65'], /--cpus must be between 1 and 64, got 65/],
      [['fuzz', '--engine', 'parallel', '--debug-vm', '--ops', '1'], /--debug-vm audits the mm after every step of the deterministic engine; it does not run with --engine parallel/],
    ] as [string[], RegExp][]) {
      const r = await run(args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.err, args.join(' ')).toMatch(msg);
    }
  });
});
