#!/usr/bin/env node
// The `mmulab` command. mmulab is written in TypeScript; hw/ts-loader.mjs compiles it as it
// loads, without a build step.
import '../hw/ts-register.mjs';

const { main } = await import('./cli.ts');
process.exitCode = await main(process.argv.slice(2));
