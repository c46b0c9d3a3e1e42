/**
 * src/commands/index.ts — the list of mmulab commands; each file registers one command on the
 * program. The first registered with `isDefault` runs when no command is named.
 */

import type { Command } from 'commander';
import type { Io } from './common.ts';
import { register as ab } from './ab.ts';

export type RegisterCommand = (program: Command, io: Io) => void;

export const COMMANDS: RegisterCommand[] = [ab];
