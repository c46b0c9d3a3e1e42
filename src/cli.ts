/**
 * src/cli.ts — the `mmulab` command line (commander). Results go to stdout, diagnostics and
 * progress to stderr. Exit codes: 0 success, 1 a finding or failure the command reports, 2 bad
 * usage (141 when the output's reader went away, set by src/mmulab.js); bad input gets one line
 * naming the problem, never a stack trace.
 *
 * Each command lives in src/commands/<name>.ts and registers itself here.
 */

import { readFileSync } from 'node:fs';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { runDemo } from './demo.ts';
import { COST_MODEL_HELP, EXIT_OK, EXIT_USAGE, loadCosts, refuseSharedOptions, UsageError, type Io } from './commands/common.ts';
import { COMMANDS } from './commands/index.ts';

export { EXIT_FINDING, EXIT_OK, EXIT_USAGE, UsageError } from './commands/common.ts';

/** mmulab's version, from its package.json. */
export const VERSION = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;

export function buildProgram(io: Io): Command {
  const program = new Command();
  program
    .name('mmulab')
    .version(VERSION, '-V, --version', 'print the mmulab version')
    .description('A laboratory for x86-64 memory management: a bit-accurate MMU, a Linux-like mm layer, and binder page-mapping designs.')
    .configureOutput({ writeOut: (s) => io.out(s), writeErr: (s) => io.err(s) })
    .exitOverride()
    .showHelpAfterError('(run mmulab --help for usage)');

  for (const register of COMMANDS) register(program, io);

  const demo = program
    .command('demo', { isDefault: !COMMANDS.length })
    .description('build a machine, map pages, run accesses and print translations, faults and A/D bits')
    .option('--json', 'print the steps as JSON')
    .option('--cost-model <file>', `${COST_MODEL_HELP} (the cycles counter; the kernel section is not used)`);
  refuseSharedOptions(demo, {
    seed: 'the tour makes no random choice',
    cpus: 'the tour runs on one CPU',
    engine: 'the tour drives its CPU directly, without an engine',
  });
  demo
    .addHelpText('after', '\nExamples:\n  mmulab demo\n  mmulab demo --json\n  mmulab demo --cost-model costs.json    the same steps, cycles at other costs')
    .action((o: { json?: boolean; costModel?: string }) => {
      const costs = loadCosts(o.costModel);
      io.out(runDemo({ json: !!o.json, ...(costs ? { cost: costs.model.hw, clockGhz: costs.model.clockGhz } : {}) }).text + '\n');
    });

  return program;
}

/** Run the command line; returns the exit code. */
export async function main(
  argv: string[],
  sink: { out: (s: string) => unknown; err: (s: string) => unknown; errIsTty?: boolean } = {
    out: (s) => process.stdout.write(s),
    err: (s) => process.stderr.write(s),
    errIsTty: !!process.stderr.isTTY,
  },
): Promise<number> {
  const io: Io = { out: sink.out, err: sink.err, errIsTty: !!sink.errIsTty, exitCode: EXIT_OK };
  const program = buildProgram(io);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return io.exitCode;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.help' || e.code === 'commander.version') return EXIT_OK;
      return EXIT_USAGE; // commander already printed the message
    }
    if (e instanceof UsageError || e instanceof InvalidArgumentError) {
      io.err(`mmulab: ${e.message}\n`);
      return EXIT_USAGE;
    }
    io.err(`mmulab: internal error: ${(e as Error).message}\n`);
    return 3;
  }
}
