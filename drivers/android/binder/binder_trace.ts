/**
 * drivers/android/binder/binder_trace.ts — binder's tracepoints (drivers/android/binder_trace.h)
 * with their field names and TP_printk texts: the allocator's page events (binder_lru_page_class:
 * `proc=%d page_index=%zu`), binder_update_page_range, the buffer events (binder_buffer_class),
 * and the transaction, ioctl, command and return events.
 */

import type { Kernel } from '../../../kernel/kernel.ts';
import { BC_NAMES, BR_NAMES } from './uapi.ts';

export type LruPageEvent =
  | 'binder_alloc_lru_start'
  | 'binder_alloc_lru_end'
  | 'binder_free_lru_start'
  | 'binder_free_lru_end'
  | 'binder_alloc_page_start'
  | 'binder_alloc_page_end'
  | 'binder_unmap_user_start'
  | 'binder_unmap_user_end'
  | 'binder_unmap_kernel_start'
  | 'binder_unmap_kernel_end';

export function traceLruPage(k: Kernel, ev: LruPageEvent, proc: number, page_index: number): void {
  if (!k.trace.enabled) return;
  k.trace.emit(`binder:${ev}`, { proc, page_index }, `proc=${proc} page_index=${page_index}`);
}

export function traceUpdatePageRange(k: Kernel, proc: number, allocate: boolean, offset: number, size: number): void {
  if (!k.trace.enabled) return;
  k.trace.emit('binder:binder_update_page_range', { proc, allocate, offset, size }, `proc=${proc} allocate=${allocate ? 1 : 0} offset=${offset} size=${size}`);
}

export type BufferEvent = 'binder_transaction_alloc_buf' | 'binder_transaction_buffer_release' | 'binder_transaction_failed_buffer_release';

export function traceBuffer(k: Kernel, ev: BufferEvent, debug_id: number, data_size: number, offsets_size: number, extra_buffers_size: number): void {
  if (!k.trace.enabled) return;
  k.trace.emit(
    `binder:${ev}`,
    { debug_id, data_size, offsets_size, extra_buffers_size },
    `transaction=${debug_id} data_size=${data_size} offsets_size=${offsets_size} extra_buffers_size=${extra_buffers_size}`,
  );
}

export function traceTransaction(k: Kernel, f: { debug_id: number; target_node: number; to_proc: number; to_thread: number; reply: boolean; code: number; flags: number }): void {
  if (!k.trace.enabled) return;
  k.trace.emit(
    'binder:binder_transaction',
    { debug_id: f.debug_id, target_node: f.target_node, to_proc: f.to_proc, to_thread: f.to_thread, reply: f.reply ? 1 : 0, code: f.code, flags: f.flags },
    `transaction=${f.debug_id} dest_node=${f.target_node} dest_proc=${f.to_proc} dest_thread=${f.to_thread} reply=${f.reply ? 1 : 0} flags=0x${f.flags.toString(16)} code=0x${f.code.toString(16)}`,
  );
}

export function traceTransactionReceived(k: Kernel, debug_id: number): void {
  if (!k.trace.enabled) return;
  k.trace.emit('binder:binder_transaction_received', { debug_id }, `transaction=${debug_id}`);
}

export function traceIoctl(k: Kernel, cmd: number, arg: number): void {
  if (!k.trace.enabled) return;
  k.trace.emit('binder:binder_ioctl', { cmd, arg }, `cmd=0x${cmd.toString(16)} arg=0x${arg.toString(16)}`);
}

export function traceCommand(k: Kernel, cmd: number): void {
  if (!k.trace.enabled) return;
  k.trace.emit('binder:binder_command', { cmd }, `cmd=0x${cmd.toString(16)} ${BC_NAMES[cmd] ?? 'unknown'}`);
}

export function traceReturn(k: Kernel, cmd: number): void {
  if (!k.trace.enabled) return;
  k.trace.emit('binder:binder_return', { cmd }, `cmd=0x${cmd.toString(16)} ${BR_NAMES[cmd] ?? 'unknown'}`);
}
