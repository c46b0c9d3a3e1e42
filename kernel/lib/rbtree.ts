/**
 * kernel/lib/rbtree.ts — red-black trees (Linux lib/rbtree.c, include/linux/rbtree_augmented.h).
 *
 * A generic ordered tree of nodes carrying a key and a value, with an optional augmentation: a
 * per-node value recomputed from the node and its children after every structural change (the
 * interval tree keeps the largest end of each subtree this way). Keys are compared with a
 * caller-supplied comparator; equal keys are allowed and go to the right, as binder's size-ordered
 * free tree does with `rb_link_node`. Lookup, insert and erase are O(log n).
 *
 * Deviation: Linux embeds rb_node in the containing structure and the caller writes the descent;
 * here the tree owns small node objects and offers the usual descents (find, lower bound, best
 * fit) as methods.
 */

export const RED = 0;
export const BLACK = 1;

export class RbNode<K, V> {
  left: RbNode<K, V> | null = null;
  right: RbNode<K, V> | null = null;
  parent: RbNode<K, V> | null = null;
  color = RED;
  /** The augmented value (e.g. the largest interval end in this subtree). */
  aug = 0;
  constructor(
    public key: K,
    public value: V,
  ) {}
}

export interface Augment<K, V> {
  /** The augmented value of `n` from its own key/value and its children's augmented values. */
  compute(n: RbNode<K, V>): number;
}

export class RbTree<K, V> {
  root: RbNode<K, V> | null = null;
  size = 0;

  constructor(
    readonly compare: (a: K, b: K) => number,
    private readonly augment: Augment<K, V> | null = null,
  ) {}

  /** Insert a node with `key`; equal keys go to the right of existing ones. */
  insert(key: K, value: V): RbNode<K, V> {
    const node = new RbNode(key, value);
    let parent: RbNode<K, V> | null = null;
    let cur = this.root;
    let goLeft = false;
    while (cur) {
      parent = cur;
      goLeft = this.compare(key, cur.key) < 0;
      cur = goLeft ? cur.left : cur.right;
    }
    node.parent = parent;
    if (!parent) this.root = node;
    else if (goLeft) parent.left = node;
    else parent.right = node;
    this.size++;
    this.propagate(node);
    this.insertFixup(node);
    return node;
  }

  /** The first node whose key equals `key`, or null. */
  find(key: K): RbNode<K, V> | null {
    let cur = this.root;
    let found: RbNode<K, V> | null = null;
    while (cur) {
      const c = this.compare(key, cur.key);
      if (c === 0) {
        found = cur;
        cur = cur.left; // keep looking for an earlier equal key
      } else cur = c < 0 ? cur.left : cur.right;
    }
    return found;
  }

  /** The first node with key >= `key`. */
  lowerBound(key: K): RbNode<K, V> | null {
    let cur = this.root;
    let best: RbNode<K, V> | null = null;
    while (cur) {
      if (this.compare(cur.key, key) >= 0) {
        best = cur;
        cur = cur.left;
      } else cur = cur.right;
    }
    return best;
  }

  /** The last node with key <= `key`. */
  floor(key: K): RbNode<K, V> | null {
    let cur = this.root;
    let best: RbNode<K, V> | null = null;
    while (cur) {
      if (this.compare(cur.key, key) <= 0) {
        best = cur;
        cur = cur.right;
      } else cur = cur.left;
    }
    return best;
  }

  first(): RbNode<K, V> | null {
    let n = this.root;
    if (!n) return null;
    while (n.left) n = n.left;
    return n;
  }

  last(): RbNode<K, V> | null {
    let n = this.root;
    if (!n) return null;
    while (n.right) n = n.right;
    return n;
  }

  next(n: RbNode<K, V>): RbNode<K, V> | null {
    if (n.right) {
      let c = n.right;
      while (c.left) c = c.left;
      return c;
    }
    let c: RbNode<K, V> = n;
    let p = n.parent;
    while (p && c === p.right) {
      c = p;
      p = p.parent;
    }
    return p;
  }

  prev(n: RbNode<K, V>): RbNode<K, V> | null {
    if (n.left) {
      let c = n.left;
      while (c.right) c = c.right;
      return c;
    }
    let c: RbNode<K, V> = n;
    let p = n.parent;
    while (p && c === p.left) {
      c = p;
      p = p.parent;
    }
    return p;
  }

  *[Symbol.iterator](): Generator<RbNode<K, V>> {
    for (let n = this.first(); n; n = this.next(n)) yield n;
  }

  values(): V[] {
    const out: V[] = [];
    for (let n = this.first(); n; n = this.next(n)) out.push(n.value);
    return out;
  }

  /** Recompute the augmented values from `n` up to the root (after a key/value change). */
  propagate(n: RbNode<K, V> | null): void {
    if (!this.augment) return;
    for (let c = n; c; c = c.parent) {
      const v = this.augment.compute(c);
      if (v === c.aug && c !== n) break;
      c.aug = v;
    }
  }

  private recompute(n: RbNode<K, V> | null): void {
    if (this.augment && n) n.aug = this.augment.compute(n);
  }

  private rotateLeft(x: RbNode<K, V>): void {
    const y = x.right!;
    x.right = y.left;
    if (y.left) y.left.parent = x;
    y.parent = x.parent;
    if (!x.parent) this.root = y;
    else if (x === x.parent.left) x.parent.left = y;
    else x.parent.right = y;
    y.left = x;
    x.parent = y;
    this.recompute(x);
    this.recompute(y);
  }

  private rotateRight(x: RbNode<K, V>): void {
    const y = x.left!;
    x.left = y.right;
    if (y.right) y.right.parent = x;
    y.parent = x.parent;
    if (!x.parent) this.root = y;
    else if (x === x.parent.right) x.parent.right = y;
    else x.parent.left = y;
    y.right = x;
    x.parent = y;
    this.recompute(x);
    this.recompute(y);
  }

  private insertFixup(z: RbNode<K, V>): void {
    while (z.parent && z.parent.color === RED) {
      const p = z.parent;
      const g = p.parent!;
      if (p === g.left) {
        const u = g.right;
        if (u && u.color === RED) {
          p.color = BLACK;
          u.color = BLACK;
          g.color = RED;
          z = g;
        } else {
          if (z === p.right) {
            z = p;
            this.rotateLeft(z);
          }
          z.parent!.color = BLACK;
          z.parent!.parent!.color = RED;
          this.rotateRight(z.parent!.parent!);
        }
      } else {
        const u = g.left;
        if (u && u.color === RED) {
          p.color = BLACK;
          u.color = BLACK;
          g.color = RED;
          z = g;
        } else {
          if (z === p.left) {
            z = p;
            this.rotateRight(z);
          }
          z.parent!.color = BLACK;
          z.parent!.parent!.color = RED;
          this.rotateLeft(z.parent!.parent!);
        }
      }
    }
    this.root!.color = BLACK;
  }

  /** Remove node `z` (which must be in this tree). */
  erase(z: RbNode<K, V>): void {
    let y = z;
    let yColor = y.color;
    let x: RbNode<K, V> | null;
    let xParent: RbNode<K, V> | null;
    if (!z.left) {
      x = z.right;
      xParent = z.parent;
      this.transplant(z, z.right);
    } else if (!z.right) {
      x = z.left;
      xParent = z.parent;
      this.transplant(z, z.left);
    } else {
      y = z.right;
      while (y.left) y = y.left;
      yColor = y.color;
      x = y.right;
      if (y.parent === z) {
        xParent = y;
      } else {
        xParent = y.parent;
        this.transplant(y, y.right);
        y.right = z.right;
        y.right.parent = y;
      }
      this.transplant(z, y);
      y.left = z.left;
      y.left.parent = y;
      y.color = z.color;
    }
    this.size--;
    // Augmented values from the lowest changed point up.
    if (this.augment) {
      for (let c = xParent; c; c = c.parent) c.aug = this.augment.compute(c);
    }
    if (yColor === BLACK) this.eraseFixup(x, xParent);
    z.left = z.right = z.parent = null;
  }

  private transplant(u: RbNode<K, V>, v: RbNode<K, V> | null): void {
    if (!u.parent) this.root = v;
    else if (u === u.parent.left) u.parent.left = v;
    else u.parent.right = v;
    if (v) v.parent = u.parent;
  }

  private eraseFixup(x: RbNode<K, V> | null, parent: RbNode<K, V> | null): void {
    while (x !== this.root && (!x || x.color === BLACK)) {
      if (!parent) break;
      if (x === parent.left) {
        let w = parent.right!;
        if (w.color === RED) {
          w.color = BLACK;
          parent.color = RED;
          this.rotateLeft(parent);
          w = parent.right!;
        }
        if ((!w.left || w.left.color === BLACK) && (!w.right || w.right.color === BLACK)) {
          w.color = RED;
          x = parent;
          parent = x.parent;
        } else {
          if (!w.right || w.right.color === BLACK) {
            w.left!.color = BLACK;
            w.color = RED;
            this.rotateRight(w);
            w = parent.right!;
          }
          w.color = parent.color;
          parent.color = BLACK;
          if (w.right) w.right.color = BLACK;
          this.rotateLeft(parent);
          x = this.root;
          parent = null;
        }
      } else {
        let w = parent.left!;
        if (w.color === RED) {
          w.color = BLACK;
          parent.color = RED;
          this.rotateRight(parent);
          w = parent.left!;
        }
        if ((!w.right || w.right.color === BLACK) && (!w.left || w.left.color === BLACK)) {
          w.color = RED;
          x = parent;
          parent = x.parent;
        } else {
          if (!w.left || w.left.color === BLACK) {
            w.right!.color = BLACK;
            w.color = RED;
            this.rotateLeft(w);
            w = parent.left!;
          }
          w.color = parent.color;
          parent.color = BLACK;
          if (w.left) w.left.color = BLACK;
          this.rotateRight(parent);
          x = this.root;
          parent = null;
        }
      }
    }
    if (x) x.color = BLACK;
  }

  /**
   * Check the red-black and ordering invariants (and augmentation); returns a description of
   * the first violation, or null. For tests and the invariant checker.
   */
  validate(): string | null {
    if (this.root && this.root.color !== BLACK) return 'root is red';
    let count = 0;
    const walk = (n: RbNode<K, V> | null, parent: RbNode<K, V> | null): number => {
      if (!n) return 1;
      count++;
      if (n.parent !== parent) throw new Error('parent link broken');
      if (n.color === RED && ((n.left && n.left.color === RED) || (n.right && n.right.color === RED))) throw new Error('red node with a red child');
      if (n.left && this.compare(n.left.key, n.key) > 0) throw new Error('left child orders after its parent');
      if (n.right && this.compare(n.right.key, n.key) < 0) throw new Error('right child orders before its parent');
      const bl = walk(n.left, n);
      const br = walk(n.right, n);
      if (bl !== br) throw new Error('black heights differ');
      if (this.augment && this.augment.compute(n) !== n.aug) throw new Error('stale augmented value');
      return bl + (n.color === BLACK ? 1 : 0);
    };
    try {
      walk(this.root, null);
    } catch (e) {
      return (e as Error).message;
    }
    if (count !== this.size) return `size ${this.size} but ${count} nodes`;
    return null;
  }
}
