/**
 * src/experiments/cost_model.ts — the effective cost model of a run, as the --json results of
 * `ab`, `attack` and `shootdown` record it: the clock and every hardware cost (hw/cost.ts) and
 * kernel cost (kernel/cost.ts) the run's machines were built with, the built-in values where
 * --cost-model left them alone. The record is itself a complete --cost-model file, so a result
 * can be reproduced from it alone, and `mmulab merge` compares it to refuse shards that ran on
 * different costs. COST_MODEL_JSON_SCHEMA describes it; the JSON Schemas in docs/schemas/ hold
 * the same fragment under $defs/costModel.
 */

import { DEFAULT_CLOCK_GHZ, DEFAULT_HW_COSTS, type HwCostModel } from '../../hw/cost.ts';
import { DEFAULT_KERNEL_COSTS, type KernelCostModel } from '../../kernel/cost.ts';
import type { KernelOptions } from '../../kernel/kernel.ts';

/** Every cost a run used: a complete cost model file. */
export interface EffectiveCostModel {
  clockGhz: number;
  hw: HwCostModel;
  kernel: KernelCostModel;
}

/** The cost options a kernel is built with (absent: the built-in costs). */
export type CostOptions = Pick<KernelOptions, 'hwCosts' | 'clockGhz' | 'costs'>;

/** The costs a kernel built with `k` uses: the built-in ones, overridden by `k`'s. */
export function effectiveCostModel(k: CostOptions | undefined): EffectiveCostModel {
  return {
    clockGhz: k?.clockGhz ?? DEFAULT_CLOCK_GHZ,
    hw: { ...DEFAULT_HW_COSTS, ...k?.hwCosts },
    kernel: { ...DEFAULT_KERNEL_COSTS, ...k?.costs },
  };
}

const costs = (names: readonly string[]): Record<string, { type: 'number'; minimum: 0 }> => Object.fromEntries(names.map((n) => [n, { type: 'number', minimum: 0 }]));
const HW_NAMES = Object.keys(DEFAULT_HW_COSTS);
const KERNEL_NAMES = Object.keys(DEFAULT_KERNEL_COSTS);

/** JSON Schema (draft 2020-12) of an EffectiveCostModel. */
export const COST_MODEL_JSON_SCHEMA = {
  description: 'the effective cost model of the run: every cost its machines were built with (the built-in values where --cost-model set none); a complete --cost-model file as it stands',
  type: 'object',
  required: ['clockGhz', 'hw', 'kernel'],
  properties: {
    clockGhz: { type: 'number', exclusiveMinimum: 0, description: 'clock rate turning cycles into microseconds' },
    hw: { description: 'cycles of each hardware event (hw/cost.ts)', type: 'object', required: HW_NAMES, properties: costs(HW_NAMES), additionalProperties: false },
    kernel: { description: 'cycles of kernel work (kernel/cost.ts); copyPerByte is per byte, timeSlice the preemption slice', type: 'object', required: KERNEL_NAMES, properties: costs(KERNEL_NAMES), additionalProperties: false },
  },
  additionalProperties: false,
} as const;
