/**
 * kernel/lib/interval_tree.ts — an augmented red-black tree of closed intervals
 * [start, last] (include/linux/interval_tree_generic.h). Each node keeps the largest `last` in
 * its subtree, so all intervals overlapping a query are found in O(log n + k). Used for a file's
 * i_mmap tree (VMAs keyed by their page-offset range), as Linux's vma_interval_tree is.
 */

import { RbTree, type RbNode } from './rbtree.ts';

export interface Interval {
  start: number;
  last: number;
}

export class IntervalTree<T> {
  private readonly tree: RbTree<number, { iv: Interval; item: T }>;
  private readonly nodes = new Map<T, RbNode<number, { iv: Interval; item: T }>>();

  constructor() {
    this.tree = new RbTree<number, { iv: Interval; item: T }>((a, b) => a - b, {
      compute: (n) => Math.max(n.value.iv.last, n.left ? n.left.aug : -Infinity, n.right ? n.right.aug : -Infinity),
    });
  }

  get size(): number {
    return this.tree.size;
  }

  /** Add `item` covering [start, last]. An item can be in the tree once. */
  insert(item: T, start: number, last: number): void {
    if (this.nodes.has(item)) throw new Error('interval tree: item inserted twice');
    if (!(last >= start)) throw new Error(`interval tree: bad interval [${start}, ${last}]`);
    this.nodes.set(item, this.tree.insert(start, { iv: { start, last }, item }));
  }

  remove(item: T): boolean {
    const n = this.nodes.get(item);
    if (!n) return false;
    this.tree.erase(n);
    this.nodes.delete(item);
    return true;
  }

  has(item: T): boolean {
    return this.nodes.has(item);
  }

  /** Every item whose interval overlaps [start, last], in order of start. */
  query(start: number, last: number): T[] {
    const out: T[] = [];
    const visit = (n: RbNode<number, { iv: Interval; item: T }> | null): void => {
      if (!n || n.aug < start) return;
      visit(n.left);
      if (n.key > last) return;
      if (n.value.iv.last >= start) out.push(n.value.item);
      visit(n.right);
    };
    visit(this.tree.root);
    return out;
  }

  items(): T[] {
    return this.tree.values().map((v) => v.item);
  }

  validate(): string | null {
    return this.tree.validate();
  }
}
