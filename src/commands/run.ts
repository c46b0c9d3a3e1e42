/**
 * src/commands/run.ts — `mmulab run`: run emulated processes — a built-in workload (touch
 * patterns, fork with copy-on-write, a binder client and server), a user's module of programs
 * (--module), or a memory trace recorded with valgrind's lackey (--lackey) — and report TLB hit
 * rates per level, page walks, faults, RSS and virtual time (src/experiments/run.ts), as a table
 * or JSON (docs/schemas/run.schema.json); --trace writes the kernel's tracepoints as ftrace text
 * or Perfetto/Chrome JSON.
 *
 * The options that choose and shape a scenario are shared with the inspection commands
 * (src/commands/inspect.ts): addScenarioOptions and scenarioOptions below.
 */

import { readFileSync, writeFileSync } from 'node:fs';
import { extname } from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import { EngineError } from '../../hw/engine.ts';
import { chromeTraceJson, ftraceText } from '../../kernel/trace/export.ts';
import { parseConfig } from '../experiments/ab.ts';
import { BUILTIN_WORKLOADS, WORKLOAD_HELP, buildScenario, runScenario, type BuiltinWorkload, type ScenarioOptions, type WorkloadName } from '../experiments/scenario.ts';
import { measure, runTable, type RunResult } from '../experiments/run.ts';
import { LackeyError, parseLackey } from '../workloads/lackey.ts';
import { ModuleError, loadProgramModule } from '../workloads/module.ts';
import { DESIGNS } from '../../drivers/android/binder/page_mapping.ts';
import { effectiveCostModel } from '../experiments/cost_model.ts';
import { addCommonOptions, EXIT_FINDING, kernelOptions, loadCosts, parseIntOption, UsageError, type CommonOptions, type Io } from './common.ts';

/** Options of every command that builds a scenario. */
export interface ScenarioCliOptions extends CommonOptions {
  workload?: string;
  pages: number;
  accesses: number;
  stride: number;
  zipf: number;
  writes: number;
  threads: number;
  iterations: number;
  payload: number;
  design?: string;
  module?: string;
  lackey?: string;
  memory: number;
  maxSteps: number;
}

function parseNumberOption(name: string, min: number, max: number): (v: string) => number {
  return (v: string) => {
    const x = Number(v);
    if (v.trim() === '' || !Number.isFinite(x)) throw new InvalidArgumentError(`${name} must be a number, got "${v}"`);
    if (x < min || x > max) throw new InvalidArgumentError(`${name} must be between ${min} and ${max}, got ${v}`);
    return x;
  };
}

/** Add the workload options (and the common options) to a command taking an optional [workload]. */
export function addScenarioOptions(cmd: Command): Command {
  addCommonOptions(cmd, { engineHelp: 'deterministic (default: reproducible by seed) or parallel (the kernel on the main thread, user-mode access streams on worker threads: CPUs really run at once; not reproducible)' });
  return cmd
    .option('--workload <name>', `built-in workload (${BUILTIN_WORKLOADS.join(', ')}); also accepted as the first argument`)
    .option('--module <file>', 'run the programs a TypeScript or JavaScript module exports (see "Modules" below)')
    .option('--lackey <file>', 'replay a trace of valgrind --tool=lackey --trace-mem=yes')
    .option('--pages <n>', 'region size of the touch and fork workloads, in 4 KiB pages', parseIntOption('--pages', 1, 262_144), 1024)
    .option('--accesses <n>', 'touches per thread (touch workloads) or by the child (fork)', parseIntOption('--accesses', 1, 100_000_000), 50_000)
    .option('--stride <bytes>', 'step of the strided workload', parseIntOption('--stride', 1, 1 << 30), 4096)
    .option('--zipf <s>', 'exponent of the zipf workload', parseNumberOption('--zipf', 0, 10), 0.99)
    .option('--writes <fraction>', 'fraction of touches that are stores, 0 to 1', parseNumberOption('--writes', 0, 1), 0.3)
    .option('--threads <n>', 'threads of the touch workloads', parseIntOption('--threads', 1, 64), 1)
    .option('--iterations <n>', 'transactions of the binder workload', parseIntOption('--iterations', 1, 1_000_000), 50)
    .option('--payload <bytes>', 'payload of each binder transaction', parseIntOption('--payload', 0, 200_000), 4096)
    .option('--design <name>', `binder page-mapping design (${DESIGNS.join(', ')}; eager designs take :none, :mapped or :vm_ops)`)
    .option('--memory <MiB>', 'physical memory of the emulated machine', parseIntOption('--memory', 16, 4096), 128)
    .option('--max-steps <n>', 'stop after this many scheduling steps', parseIntOption('--max-steps', 1, 1e12), 50_000_000);
}

export const MODULE_HELP = `
Modules (--module FILE: TypeScript or JavaScript, named *.ts, *.mts, *.cts, *.js, *.mjs or *.cjs):
  export default function* (u, lib) { … }              one program, a process named after the file
  export const programs = { name: function* (u, lib) { … }, … }   one process per program
  u is the process's system interface (yield* u.mmap(…), u.load32(a), u.store32(a, v), u.touch(a,
  'read'|'write'|'fetch'), u.fork(child), u.clone(thread), u.wait(pid), u.munmap, u.mprotect,
  u.madvise, u.sleep(cycles), …; every call with yield*). lib has PROT_*, MAP_*, MADV_*, MREMAP_*,
  PAGE_SIZE and random (seeded from --seed; never use Math.random).

Lackey traces (--lackey FILE):
  valgrind --tool=lackey --trace-mem=yes --log-file=trace.txt ./program
  Lines "I  addr,size", " L addr,size", " S addr,size", " M addr,size" are fetches, loads, stores
  and modifies; "==pid==" lines are skipped. Touched pages are mapped first (RWX where fetched).`;

/** Turn the parsed options into a scenario (reading and checking --module and --lackey). */
export async function scenarioOptions(positional: string | undefined, o: ScenarioCliOptions, park: boolean, extraKernel: { trace?: boolean; debugVm?: boolean } = {}): Promise<ScenarioOptions> {
  if (o.engine === 'parallel' && extraKernel.debugVm) throw new UsageError('--debug-vm audits the mm after every step of the deterministic engine; it cannot be combined with --engine parallel');
  if (positional !== undefined && o.workload !== undefined && positional !== o.workload) throw new UsageError(`two workloads given: "${positional}" and --workload ${o.workload}`);
  const named = positional ?? o.workload;
  const inputs = [o.module !== undefined ? '--module' : '', o.lackey !== undefined ? '--lackey' : ''].filter(Boolean);
  if (inputs.length > 1) throw new UsageError('give either --module or --lackey, not both');
  if (named !== undefined && inputs.length) throw new UsageError(`give either a workload ("${named}") or ${inputs[0]}, not both`);
  if (named !== undefined && !(BUILTIN_WORKLOADS as readonly string[]).includes(named)) throw new UsageError(`unknown workload "${named}" (known: ${BUILTIN_WORKLOADS.join(', ')}; or --module FILE, --lackey FILE)`);
  const workload: WorkloadName = o.module !== undefined ? 'module' : o.lackey !== undefined ? 'lackey' : ((named ?? 'sequential') as BuiltinWorkload);
  let design: ScenarioOptions['design'];
  if (o.design !== undefined) {
    try {
      design = parseConfig(o.design).design;
    } catch (e) {
      throw new UsageError(`--design: ${(e as Error).message}`);
    }
  }
  const memoryBytes = o.memory * 1024 * 1024;
  const need = o.pages * 4096 * (workload === 'fork' ? 2 : 1);
  if ((workload === 'fork' || (BUILTIN_WORKLOADS as readonly string[]).slice(0, 4).includes(workload)) && need > memoryBytes - (8 << 20)) {
    throw new UsageError(`--pages ${o.pages} needs ${Math.ceil(need / (1 << 20))} MiB of the emulated machine's memory; raise --memory (now ${o.memory} MiB)`);
  }
  const costs = loadCosts(o.costModel);
  const kernel = kernelOptions(o, costs, { memoryBytes, ...extraKernel });
  const so: ScenarioOptions = {
    workload, seed: o.seed, cpus: o.cpus, kernel, pages: o.pages, accesses: o.accesses, stride: o.stride, zipf: o.zipf, writes: o.writes, threads: o.threads,
    iterations: o.iterations, payload: o.payload, design, park,
  };
  if (o.lackey !== undefined) {
    let bytes: Uint8Array;
    try {
      bytes = readFileSync(o.lackey);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new UsageError(`--lackey ${o.lackey}: ${code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a directory' : (e as Error).message}`);
    }
    try {
      so.lackey = parseLackey(bytes);
    } catch (e) {
      if (e instanceof LackeyError) throw new UsageError(`${o.lackey}: ${e.message}`);
      throw e;
    }
    if (so.lackey.stream.length === 0) throw new UsageError(`${o.lackey}: the trace has no accesses (is it the output of --tool=lackey --trace-mem=yes?)`);
  }
  if (o.module !== undefined) {
    try {
      so.module = await loadProgramModule(o.module);
    } catch (e) {
      if (e instanceof ModuleError) throw new UsageError(`--module ${e.message}`);
      throw e;
    }
  }
  return so;
}

/** The options a result records (what shaped the run). */
export function recordedOptions(so: ScenarioOptions, o: ScenarioCliOptions): Record<string, unknown> {
  const r: Record<string, unknown> = { seed: so.seed, cpus: so.cpus, engine: o.engine, memoryMiB: o.memory };
  if (o.costModel) r.costModel = o.costModel;
  r.costs = effectiveCostModel(so.kernel);
  if (so.kernel?.debugVm) r.debugVm = true;
  switch (so.workload) {
    case 'sequential':
    case 'strided':
    case 'random':
    case 'zipf':
      Object.assign(r, { pages: so.pages, accesses: so.accesses, writes: so.writes, threads: so.threads });
      if (so.workload === 'strided') r.stride = so.stride;
      if (so.workload === 'zipf') r.zipf = so.zipf;
      break;
    case 'fork':
      Object.assign(r, { pages: so.pages, accesses: so.accesses, writes: so.writes });
      break;
    case 'binder':
      Object.assign(r, { iterations: so.iterations, payload: so.payload, design: o.design ?? 'eager' });
      break;
    case 'module':
      r.module = o.module;
      break;
    case 'lackey':
      r.lackey = o.lackey;
      break;
  }
  return r;
}

interface RunCliOptions extends ScenarioCliOptions {
  trace?: string;
  debugVm?: boolean;
}

function traceFormat(file: string): 'ftrace' | 'json' {
  const ext = extname(file).toLowerCase();
  if (ext === '.json') return 'json';
  if (ext === '.txt' || ext === '.trace' || ext === '.ftrace') return 'ftrace';
  throw new UsageError(`--trace ${file}: name the file .txt for ftrace text or .json for Perfetto/Chrome JSON`);
}

export function register(program: Command, io: Io): void {
  const cmd = program
    .command('run')
    .description('run emulated processes (a built-in workload, your own module, or a lackey trace) and report TLB hit rates, walks, faults, RSS and cycles')
    .argument('[workload]', `built-in workload: ${BUILTIN_WORKLOADS.join(', ')} (default sequential)`);
  addScenarioOptions(cmd)
    .option('--trace <file>', 'write the tracepoints: file.txt as ftrace text, file.json as Perfetto/Chrome JSON')
    .option('--debug-vm', 'checking mode: audit the mm invariants after every scheduling step (slow); the audit at the end of the run is always made')
    .addHelpText(
      'after',
      `
Workloads:
${BUILTIN_WORKLOADS.map((w: BuiltinWorkload) => `  ${w.padEnd(11)} ${WORKLOAD_HELP[w]}`).join('\n')}
${MODULE_HELP}

Examples:
  mmulab run zipf --pages 4096 --accesses 200000
  mmulab run strided --stride 8192 --threads 2 --cpus 2 --json
  mmulab run fork --pages 256 --writes 0.5
  mmulab run binder --design fault --iterations 100 --trace binder.json
  mmulab run --module myprog.ts --trace out.txt
  mmulab run --lackey trace.txt`,
    )
    .action(async (positional: string | undefined, o: RunCliOptions) => {
      const format = o.trace !== undefined ? traceFormat(o.trace) : undefined;
      const so = await scenarioOptions(positional, o, false, { ...(format ? { trace: true } : {}), ...(o.debugVm ? { debugVm: true } : {}) });
      const s = buildScenario(so);
      let outcome;
      try {
        outcome = runScenario(s, o.maxSteps, o.engine);
      } catch (e) {
        if (e instanceof EngineError) {
          io.err(`mmulab: the workload cannot go on: ${e.message}\n`);
          io.exitCode = EXIT_FINDING;
          return;
        }
        throw e;
      }
      const result: RunResult = measure(s, outcome, recordedOptions(so, o));
      if (o.trace !== undefined) {
        const text = format === 'json' ? chromeTraceJson(s.k) : ftraceText(s.k);
        try {
          writeFileSync(o.trace, text);
        } catch (e) {
          throw new UsageError(`cannot write --trace ${o.trace}: ${(e as Error).message}`);
        }
        result.trace = { file: o.trace, format: format!, events: s.k.trace.events.length };
      }
      io.out(o.json ? JSON.stringify(result, null, 2) + '\n' : runTable(result));
      if (outcome.reason !== 'done') {
        io.err(`mmulab: the workload did not finish within --max-steps ${o.maxSteps}\n`);
        io.exitCode = EXIT_FINDING;
      }
      if (result.reports.length) io.exitCode = EXIT_FINDING;
    });
}
