#!/usr/bin/env node
// The `mmulab` command. mmulab is written in TypeScript; hw/ts-loader.mjs compiles it as it
// loads, without a build step.
import '../hw/ts-register.mjs';

// A reader that goes away early (`mmulab fuzz --help | head`) ends the command quietly with the
// status of a process killed by SIGPIPE (128 + 13), as it ends a C program, instead of Node's
// unhandled 'error' event and its stack trace. Any other write error is one line and exit 3.
const EXIT_SIGPIPE = 141;
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (e) => {
    if (e && e.code === 'EPIPE') process.exit(EXIT_SIGPIPE);
    try {
      process.stderr.write(`mmulab: cannot write the output: ${e && e.message}\n`);
    } finally {
      process.exit(3);
    }
  });
}

const { main } = await import('./cli.ts');
process.exitCode = await main(process.argv.slice(2));
