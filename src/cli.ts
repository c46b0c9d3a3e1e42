/**
 * src/cli.ts — the `mmulab` command line (commander). Results go to stdout, diagnostics and
 * progress to stderr. Exit codes: 0 success, 1 a finding or failure the command reports, 2 bad
 * usage; bad input gets one line naming the problem, never a stack trace.
 */

import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { runDemo } from './demo.ts';

export const EXIT_OK = 0;
export const EXIT_FINDING = 1;
export const EXIT_USAGE = 2;

/** An error whose message is meant for the user as is. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export function buildProgram(out: (s: string) => unknown, err: (s: string) => unknown): Command {
  const program = new Command();
  program
    .name('mmulab')
    .description('A laboratory for x86-64 memory management: a bit-accurate MMU, a Linux-like mm layer, and binder page-mapping designs.')
    .configureOutput({ writeOut: out, writeErr: err })
    .exitOverride()
    .showHelpAfterError('(run mmulab --help for usage)');

  program
    .command('demo', { isDefault: true })
    .description('build a machine, map pages, run accesses and print translations, faults and A/D bits')
    .option('--json', 'print the steps as JSON')
    .addHelpText('after', '\nExample:\n  mmulab demo\n  mmulab demo --json')
    .action((o: { json?: boolean }) => {
      out(runDemo({ json: !!o.json }).text + '\n');
    });

  return program;
}

/** Run the command line; returns the exit code. */
export async function main(argv: string[], io: { out: (s: string) => unknown; err: (s: string) => unknown } = { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) }): Promise<number> {
  const program = buildProgram(io.out, io.err);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return EXIT_OK;
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
