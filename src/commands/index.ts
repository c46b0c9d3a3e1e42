/**
 * src/commands/index.ts — the list of mmulab commands; each file registers one command on the
 * program. The first registered with `isDefault` runs when no command is named.
 */

import type { Command } from 'commander';
import type { Io } from './common.ts';
import { register as ab } from './ab.ts';
import { register as run } from './run.ts';
import { register as inspect } from './inspect.ts';
import { register as shootdown } from './shootdown.ts';
import { register as attack } from './attack.ts';
import { register as fuzz } from './fuzz.ts';
import { register as merge } from './merge.ts';

export type RegisterCommand = (program: Command, io: Io) => void;

export const COMMANDS: RegisterCommand[] = [ab, run, inspect, shootdown, attack, fuzz, merge];
