/**
 * `mmulab merge`, the one way to join the shards of a split run: it tells ab and shootdown shards
 * apart by their "schema" field and gives what the unsharded run gives (the JSON byte for byte,
 * the table, the CSV and HTML files); it refuses mixed, foreign, overlapping, tampered and
 * incomplete sets, and shards run with different cost models, with exit code 2 and one line
 * naming the file and the problem (for cost models, the first cost that differs).
 */

import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { main } from '../../src/cli.ts';

async function run(args: string[]) {
  let out = '';
  let err = '';
  const code = await main(args, { out: (s) => void (out += s), err: (s) => void (err += s) });
  return { code, out, err };
}

const dir = mkdtempSync(join(tmpdir(), 'mmulab-merge-'));
const SD = ['shootdown', '--cpus-list', '2', '--pages', '1,8,64', '--policy', 'linux', '--rounds', '1', '--jobs', '1'];
const AB = ['ab', '--design', 'eager,fault', '--workload', 'sync-0', '--seeds', '2', '--iterations', '4', '--cpus', '2', '--jobs', '1', '--no-attack'];

/** Run and write the output to dir/name; returns the path. */
async function save(name: string, args: string[]): Promise<string> {
  const r = await run(args);
  expect(r.code, args.join(' ')).toBe(0);
  const f = join(dir, name);
  writeFileSync(f, r.out);
  return f;
}

function edited(name: string, from: string, f: (d: Record<string, any>) => void): string {
  const d = JSON.parse(readFileSync(from, 'utf8')) as Record<string, any>;
  f(d);
  const out = join(dir, name);
  writeFileSync(out, JSON.stringify(d));
  return out;
}

const files: Record<string, string> = {};
/** A cost model that changes one hardware cost; and one that restates a built-in value. */
const slowWalks = join(dir, 'slow-walks.json');
writeFileSync(slowWalks, JSON.stringify({ hw: { walkMemRef: 40 } }));
const builtIn = join(dir, 'built-in.json');
writeFileSync(builtIn, JSON.stringify({ clockGhz: 3 }));

beforeAll(async () => {
  files.sdWhole = await save('sd.json', [...SD, '--json']);
  for (const i of [1, 2, 3]) files[`sd${i}`] = await save(`sd${i}.json`, [...SD, '--json', '--shard', `${i}/3`]);
  files.abWhole = await save('ab.json', [...AB, '--json']);
  for (const i of [1, 2]) files[`ab${i}`] = await save(`ab${i}.json`, [...AB, '--json', '--shard', `${i}/2`]);
  files.run = await save('run.json', ['run', 'sequential', '--pages', '4', '--accesses', '10', '--json']);
  files.sd2slow = await save('sd2-slow.json', [...SD, '--json', '--shard', '2/3', '--cost-model', slowWalks]);
  files.ab2slow = await save('ab2-slow.json', [...AB, '--json', '--shard', '2/2', '--cost-model', slowWalks]);
  files.ab2builtIn = await save('ab2-built-in.json', [...AB, '--json', '--shard', '2/2', '--cost-model', builtIn]);
  files.ab1slow = await save('ab1-slow.json', [...AB, '--json', '--shard', '1/2', '--cost-model', slowWalks]);
  writeFileSync(join(dir, 'slow-walks-copy.json'), readFileSync(slowWalks));
  files.ab2slowCopy = await save('ab2-slow-copy.json', [...AB, '--json', '--shard', '2/2', '--cost-model', join(dir, 'slow-walks-copy.json')]);
}, 120_000);

describe('mmulab merge', () => {
  it('joins shootdown shards in any order into the unsharded result, with its table, CSV and HTML', async () => {
    const json = await run(['merge', files.sd3!, files.sd1!, files.sd2!, '--json']);
    expect(json.code).toBe(0);
    expect(json.err).toBe('');
    expect(json.out).toBe(readFileSync(files.sdWhole!, 'utf8'));
    const csv = join(dir, 'merged.csv');
    const html = join(dir, 'merged.html');
    const table = await run(['merge', files.sd1!, files.sd2!, files.sd3!, '--csv', csv, '--html', html]);
    expect(table.code).toBe(0);
    const whole = await run([...SD, '--csv', join(dir, 'whole.csv')]);
    expect(table.out).toBe(whole.out);
    expect(readFileSync(csv, 'utf8')).toBe(readFileSync(join(dir, 'whole.csv'), 'utf8'));
    expect(readFileSync(html, 'utf8')).toContain(`mmulab merge ${files.sd1} ${files.sd2} ${files.sd3}`);
  });

  it('joins ab shards into the unsharded result; a whole run alone is a complete set of one', async () => {
    const r = await run(['merge', files.ab2!, files.ab1!, '--json']);
    expect(r.code).toBe(0);
    expect(r.out).toBe(readFileSync(files.abWhole!, 'utf8'));
    const table = await run(['merge', files.ab1!, files.ab2!]);
    expect(table.out).toBe((await run(AB)).out);
    const one = await run(['merge', files.sdWhole!, '--json']);
    expect(one.code).toBe(0);
    expect(one.out).toBe(readFileSync(files.sdWhole!, 'utf8'));
  });

  it('records the cost model in every shard; joins shards that ran on the same costs, whatever the file was called', async () => {
    const slow = JSON.parse(readFileSync(files.ab1slow!, 'utf8')) as { options: { costModel: string; costs: { hw: Record<string, number> } } };
    expect(slow.options.costModel).toBe(slowWalks);
    expect(slow.options.costs.hw.walkMemRef).toBe(40);
    expect((JSON.parse(readFileSync(files.sd2slow!, 'utf8')) as { config: { costs: { hw: Record<string, number> } } }).config.costs.hw.walkMemRef).toBe(40);
    // A file restating the built-in costs is the built-in model: the set is the unsharded run.
    const same = await run(['merge', files.ab1!, files.ab2builtIn!, '--json']);
    expect(same.err).toBe('');
    expect(same.code).toBe(0);
    expect(same.out).toBe(readFileSync(files.abWhole!, 'utf8'));
    // The same costs from two files of other names: merged, with the first shard's file name.
    const copies = await run(['merge', files.ab2slowCopy!, files.ab1slow!, '--json']);
    expect(copies.code).toBe(0);
    const merged = JSON.parse(copies.out) as { options: { costModel: string; costs: unknown } };
    expect(merged.options.costModel).toBe(slowWalks);
    expect(merged.options.costs).toEqual(slow.options.costs);
  });

  const refusals: [string, () => string[], RegExp][] = [
    ['ab shards run with different cost models', () => [files.ab1!, files.ab2slow!], /ab2-slow\.json: options\.costs\.hw\.walkMemRef is 40, but 15 in .*ab1\.json: the shards ran with different cost models$/],
    ['shootdown shards run with different cost models', () => [files.sd1!, files.sd2slow!, files.sd3!], /sd2-slow\.json: config\.costs\.hw\.walkMemRef is 40, but 15 in .*sd1\.json: the shards ran with different cost models$/],
    ['a shard whose kernel costs were changed', () => [files.ab1!, edited('ab2-kernel.json', files.ab2!, (d) => (d.options.costs.kernel.contextSwitch = 2000))], /ab2-kernel\.json: options\.costs\.kernel\.contextSwitch is 2000, but 1500 in .*ab1\.json: the shards ran with different cost models$/],
    ['a shard that does not record its cost model', () => [files.ab1!, edited('ab2-nocosts.json', files.ab2!, (d) => delete d.options.costs)], /ab2-nocosts\.json: not a valid ab result: field "options\.costs" is missing or has the wrong type$/],
    ['shards run with and without the security scenarios', () => [files.ab1!, edited('ab2-attack.json', files.ab2!, (d) => (d.options.attack = true))], /ab2-attack\.json: options\.attack differs from .*ab1\.json's; these are shards of different runs$/],
    ['a first shard that should hold the security verdicts and does not', () => [edited('ab1-noverdicts.json', files.ab1!, (d) => (d.options.attack = true)), edited('ab2-attack2.json', files.ab2!, (d) => (d.options.attack = true))], /ab1-noverdicts\.json: not a valid ab result: options\.attack is true but the security verdicts of its first shard are missing$/],
    ['verdicts in a run without the security scenarios', () => [edited('ab1-stray.json', files.ab1!, (d) => { d.attack = []; d.attackCpus = 2; }), files.ab2!], /ab1-stray\.json: not a valid ab result: it holds security verdicts although options\.attack is false$/],
    ['a shard whose security verdicts do not say on how many CPUs', () => [edited('ab1-nocpus.json', files.ab1!, (d) => { d.attack = []; }), files.ab2!], /ab1-nocpus\.json: not a valid ab result: field "attackCpus" is missing or has the wrong type$/],
    ['shards of two commands', () => [files.ab1!, files.sd1!], /sd1\.json: written by mmulab shootdown, but .*ab1\.json by mmulab ab; merge the shards of one run at a time$/],
    ['a shard missing', () => [files.sd1!, files.sd3!], /^mmulab: incomplete: shard 2\/3 missing \(given: 1\/3, 3\/3\)$/],
    ['two shards missing', () => [files.sd2!], /^mmulab: incomplete: shards 1\/3, 3\/3 missing \(given: 2\/3\)$/],
    ['a shard given twice', () => [files.sd1!, files.sd2!, files.sd2!, files.sd3!], /sd2\.json: shard 2\/3 again \(also .*sd2\.json\): overlapping shards$/],
    ['a whole run with a shard', () => [files.sdWhole!, files.sd1!], /sd1\.json: shard 1\/3, but .*sd\.json is shard 1\/1: the run was split two ways$/],
    ['shards of another run', () => [files.sd1!, edited('sd2-seed.json', files.sd2!, (d) => (d.config.seed = 9)), files.sd3!], /sd2-seed\.json: config\.seed differs from .*sd1\.json's; these are shards of different runs$/],
    ['shards of another grid', () => [files.sd1!, edited('sd2-grid.json', files.sd2!, (d) => d.grid.pages.push(512)), files.sd3!], /sd2-grid\.json: grid\.pages differs from .*sd1\.json's/],
    ['a shard cut short', () => [files.sd1!, edited('sd2-cut.json', files.sd2!, (d) => d.points.pop()), files.sd3!], /sd2-cut\.json: shard 2\/3 lacks 1 of its 1 points \(first: "munmap cpus=2 pages=8 policy=linux lazy=on pcid=on batch=1"\)/],
    ['a shard holding another shard\'s point', () => [files.sd1!, edited('sd2-more.json', files.sd2!, (d) => d.points.push(JSON.parse(readFileSync(files.sd3!, 'utf8')).points[0])), files.sd3!], /sd2-more\.json: shard 2\/3 holds point "munmap cpus=2 pages=64 .*" of shard 3\/3: overlapping shards$/],
    ['a point outside the run', () => [edited('sd1-odd.json', files.sd1!, (d) => (d.points[0].pages = 5)), files.sd2!, files.sd3!], /sd1-odd\.json: holds point "munmap cpus=2 pages=5 .*", which is not part of the run$/],
    ['a bad shard field', () => [edited('sd1-shard.json', files.sd1!, (d) => (d.shard = { index: 4, count: 3 }))], /sd1-shard\.json: field "shard" must be \{"index": i, "count": n\} with 1 <= i <= n/],
    ['a result that is never sharded', () => [files.run!], /run\.json: a result of mmulab run, which is never sharded/],
    ['a document without a schema', () => [edited('plain.json', files.sd1!, (d) => delete d.schema)], /plain\.json: not the --json output of a sharded mmulab command \(its "schema" is missing; merge takes mmulab\.ab\/1, mmulab\.shootdown\/1\)$/],
    ['a document with a field missing', () => [edited('nogrid.json', files.sd1!, (d) => delete d.grid)], /nogrid\.json: not a valid shootdown result: field "grid" is missing or has the wrong type$/],
    ['a file that does not exist', () => [join(dir, 'absent.json')], /absent\.json: no such file$/],
  ];
  for (const [what, args, message] of refusals) {
    it(`refuses ${what}: exit 2, one line`, async () => {
      const r = await run(['merge', ...args(), '--json']);
      expect(r.code).toBe(2);
      expect(r.out).toBe('');
      const lines = r.err.trimEnd().split('\n');
      expect(lines, r.err).toHaveLength(1);
      expect(lines[0]).toMatch(message);
    });
  }

  it('refuses --csv for a command that writes none, and text that is not JSON', async () => {
    const csv = await run(['merge', files.ab1!, files.ab2!, '--csv', join(dir, 'x.csv')]);
    expect(csv.code).toBe(2);
    expect(csv.err).toBe('mmulab: --csv: mmulab ab writes no CSV file\n');
    const text = join(dir, 'text.json');
    writeFileSync(text, 'op cpus pages\n');
    const r = await run(['merge', text]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/^mmulab: .*text\.json: not JSON \(/);
  });

  it('exits 1 for a finding in the merged result, as the command would', async () => {
    const withReport = edited('ab2-report.json', files.ab2!, (d) => d.cases[0].metrics.reports.push('BUG: KASAN: use-after-free in binder_alloc'));
    const r = await run(['merge', files.ab1!, withReport]);
    expect(r.code).toBe(1);
    expect(r.out).toContain('checker reports:');
  });
});
