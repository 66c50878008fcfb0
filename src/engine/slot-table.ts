/**
 * Which adapter sits in which slot of one group, as the engine host sees it (every worker holds
 * the same contents: the host posts each write to all of them). Owned by the Engine; only its
 * dispatch and adapter operations change it.
 *
 * - A `sticky` adapter (one the group's gate can choose) must always be in a slot: the gate may
 *   pick it for any item, and nothing is known about which before the graph runs.
 * - Other adapters (reached by pins and explicit weights) may be evicted, least recently used
 *   first, and are written back into a slot when a batch needs them (vLLM's max_loras slots over
 *   a CPU cache; S-LoRA's adapter pool).
 */

interface SlotEntry {
  readonly id: string;
  readonly sticky: boolean;
  /** Logical time of the last batch that used it (or of its write). */
  lastUsed: number;
}

export class SlotTable {
  private readonly entries: (SlotEntry | undefined)[];
  private readonly byId = new Map<string, number>();
  private clock = 0;

  constructor(readonly size: number) {
    this.entries = new Array(size).fill(undefined);
  }

  slotOf(id: string): number | undefined {
    return this.byId.get(id);
  }

  idAt(slot: number): string | undefined {
    return this.entries[slot]?.id;
  }

  /** The ids in slot order (undefined for empty slots): a snapshot for decoding a batch. */
  snapshot(): (string | undefined)[] {
    return this.entries.map((entry) => entry?.id);
  }

  /** Occupied slots, for gate routing. */
  occupied(): { slot: number; id: string }[] {
    const out: { slot: number; id: string }[] = [];
    this.entries.forEach((entry, slot) => {
      if (entry !== undefined) out.push({ slot, id: entry.id });
    });
    return out;
  }

  get used(): number {
    return this.byId.size;
  }

  /** Mark `ids` as used by the batch being dispatched (LRU order). */
  touch(ids: Iterable<string>): void {
    const now = ++this.clock;
    for (const id of ids) {
      const slot = this.byId.get(id);
      if (slot !== undefined) this.entries[slot]!.lastUsed = now;
    }
  }

  /**
   * A slot for a new occupant: a free one, else the least recently used non-sticky one whose
   * adapter is not in `keep`. Returns the slot and the evicted id, or undefined when every slot is
   * sticky or kept. Does not change the table (see `assign`).
   */
  findSlot(keep: ReadonlySet<string>): { slot: number; evicted: string | undefined } | undefined {
    let victim: number | undefined;
    for (let slot = 0; slot < this.size; slot++) {
      const entry = this.entries[slot];
      if (entry === undefined) return { slot, evicted: undefined };
      if (entry.sticky || keep.has(entry.id)) continue;
      if (victim === undefined || entry.lastUsed < this.entries[victim]!.lastUsed) victim = slot;
    }
    return victim === undefined ? undefined : { slot: victim, evicted: this.entries[victim]!.id };
  }

  /** Put `id` into `slot` (replacing any occupant's mapping; `id` leaves its old slot, if any). */
  assign(slot: number, id: string, sticky: boolean): void {
    const previous = this.entries[slot];
    if (previous !== undefined && this.byId.get(previous.id) === slot)
      this.byId.delete(previous.id);
    const old = this.byId.get(id);
    if (old !== undefined && old !== slot) this.entries[old] = undefined;
    this.entries[slot] = { id, sticky, lastUsed: ++this.clock };
    this.byId.set(id, slot);
  }

  /** Empty the slot of `id`; returns the slot it had. */
  remove(id: string): number | undefined {
    const slot = this.byId.get(id);
    if (slot === undefined) return undefined;
    this.byId.delete(id);
    this.entries[slot] = undefined;
    return slot;
  }
}
