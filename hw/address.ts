/**
 * hw/address.ts — linear addresses at the API boundary.
 *
 * A linear address is 64 bits. The API takes it as a bigint (any value from -2^63 to 2^64-1,
 * read modulo 2^64) or as a number, which must be a safe integer: non-negative numbers are the
 * address itself, negative numbers are two's complement, so -0x1000 is 0xfffffffffffff000.
 * Every upper-half canonical address of 4-level paging therefore has an exact number form.
 * Inside the hardware an address travels as two signed 32-bit halves (hi, lo).
 */

export type LinearAddress = number | bigint;

export class AddressError extends RangeError {
  constructor(message: string) {
    super(message);
    this.name = 'AddressError';
  }
}

/** Split a linear address into [hi, lo] 32-bit halves; throws AddressError on anything else. */
export function toVa(va: LinearAddress): [number, number] {
  if (typeof va === 'number') {
    if (!Number.isSafeInteger(va)) throw new AddressError(`linear address ${String(va)} is not a safe integer; pass a bigint for addresses that do not fit in 53 bits`);
    if (va >= 0) return [Math.floor(va / 0x100000000) | 0, va % 0x100000000 | 0];
    const u = BigInt.asUintN(64, BigInt(va));
    return [Number(u >> 32n) | 0, Number(u & 0xffffffffn) | 0];
  }
  if (typeof va === 'bigint') {
    if (va < -(1n << 63n) || va >= 1n << 64n) throw new AddressError(`linear address 0x${va.toString(16)} does not fit in 64 bits`);
    const u = BigInt.asUintN(64, va);
    return [Number(u >> 32n) | 0, Number(u & 0xffffffffn) | 0];
  }
  throw new AddressError(`linear address must be a number or a bigint, got ${typeof va}`);
}

/** The unsigned 64-bit address of two halves. */
export function vaFromHalves(hi: number, lo: number): bigint {
  return (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
}

/** The number form of two halves: non-negative below 2^63, negative (two's complement) above. */
export function vaNumberFromHalves(hi: number, lo: number): number {
  return Number(BigInt.asIntN(64, vaFromHalves(hi, lo)));
}

/** Format as 0x%016x. */
export function hex64(v: LinearAddress): string {
  const u = typeof v === 'bigint' ? BigInt.asUintN(64, v) : BigInt.asUintN(64, BigInt(v));
  return '0x' + u.toString(16).padStart(16, '0');
}
