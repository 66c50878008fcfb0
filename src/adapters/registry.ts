/**
 * The adapter registry: which adapters are served, in which group, their lifecycle, and the view
 * that routing checks requests against. Where adapters sit (slots, the host cache, eviction) is
 * the engine's business; the registry tells it what to hold (`AdapterHost`).
 *
 * Lifecycle of an adapter id: loading -> ready -> unloading -> (gone), or loading -> failed.
 * - Changes are applied one at a time (a SerialQueue): read and check the folder, check it fits
 *   the group's slots, hand it to the engine (written into a slot in every worker: no graph is
 *   rebuilt, nothing is recompiled), then commit. Any failure leaves the served set as it was.
 * - Loading an id that is ready replaces it; the old weights serve until the new ones are in a
 *   slot. Loading the same contents again is a no-op (idempotent).
 * - An adapter the group's gate was not trained on is served too, reachable by pins and explicit
 *   weights only.
 * - An adapter that a group uses by default, or that a task pins, cannot be unloaded
 *   (ADAPTER_IN_USE): requests that name nothing would otherwise fail with an error about an
 *   adapter they never asked for.
 */
import { EventEmitter } from 'node:events';
import { basename } from 'node:path';
import type { GroupView, RoutingView } from '../engine/routing.js';
import { MoeError } from '../errors.js';
import { isPackError } from '../pack/errors.js';
import {
  type BaseModelParts,
  detectAdapterFormat,
  importAdapterFolder,
  readBaseModelParts,
} from '../pack/import/index.js';
import { loadAdapterFolder } from '../pack/import/moe-serve.js';
import type { LayerAdapter } from '../pack/layer-adapter-types.js';
import type { LoadedPack } from '../pack/load.js';
import { contentDigest } from '../util/digest.js';
import { SerialQueue } from '../util/serial.js';
import {
  kindOf,
  misfit,
  type SlotAdapter,
  type SlotAdapterKind,
  type SlotGroup,
} from './slot-writer.js';

export type AdapterState = 'loading' | 'ready' | 'failed' | 'unloading';

/** What the registry tells about one adapter id (the REST listing shows these). */
export interface AdapterInfo {
  readonly id: string;
  readonly group: string;
  readonly type: SlotAdapterKind;
  /** LoRA rank, or bottleneck width. */
  readonly rank: number;
  /** Top-of-backbone bottleneck adapters: their activation; others: undefined. */
  readonly activation: string | undefined;
  readonly state: AdapterState;
  /** When the version now serving was installed; undefined while never served. */
  readonly loadedAt: Date | undefined;
  /** 'pack' for adapters of the model pack, else the folder it was loaded from. */
  readonly source: string;
  /** Whether the group's gate scores it; false: reachable by pins and weights only. */
  readonly gated: boolean;
  /** Why the last load failed (state 'failed'). */
  readonly error: string | undefined;
  /**
   * What the load left out and the client should know, e.g. a PEFT classifier head that is not
   * served because the adapter was loaded at run time. Empty for most adapters.
   */
  readonly notes: readonly string[];
}

/** Where adapters go: the engine (slots in every worker). */
export interface LoadAdapterOptions {
  /** Serve it under this id (default: its config's id, or the folder's name). */
  readonly id?: string;
  /** The group to load it into (default: its config's, or the one group of its kind). */
  readonly group?: string;
}

export interface AdapterHost {
  putAdapter(
    id: string,
    group: number,
    adapter: SlotAdapter,
    gateColumn: number | undefined,
  ): Promise<void>;
  removeAdapter(id: string): Promise<void>;
}

export interface RegistryEvents {
  loaded: [{ id: string; group: string; seconds: number; replaced: boolean }];
  unloaded: [{ id: string; group: string; seconds: number }];
  failed: [{ id: string; operation: 'load' | 'unload'; seconds: number; error: MoeError }];
}

interface Entry {
  readonly adapter: SlotAdapter;
  readonly digest: string;
  readonly source: string;
  readonly loadedAt: Date;
  /** AdapterInfo.notes. */
  readonly notes: readonly string[];
}

interface Status {
  state: AdapterState;
  error?: string;
  /** For a failed first load: what was attempted. */
  attempted?: {
    group: string;
    type: SlotAdapterKind;
    rank: number;
    activation: string | undefined;
    source: string;
  };
}

/** Static facts of one group, from the pack. */
interface GroupInfo {
  readonly slot: SlotGroup;
  readonly gateExperts: readonly string[];
  readonly defaultK: number;
  readonly defaultAdapter: string | undefined;
  readonly defaultTopP: number;
}

export class AdapterRegistry extends EventEmitter<RegistryEvents> {
  /** group id -> (adapter id -> entry), in load order. */
  private readonly served = new Map<string, Map<string, Entry>>();
  /** Transient states (loading, unloading, failed); absent: ready if served. */
  private readonly status = new Map<string, Status>();
  private readonly groups: GroupInfo[];
  private readonly serial = new SerialQueue();
  private host: AdapterHost | undefined;
  private routingView: RoutingView;
  /** The backbone folder's parts a saved head reads; read on the first in-layer load. */
  private baseParts: Promise<BaseModelParts> | undefined;

  constructor(
    private readonly pack: LoadedPack,
    slotGroups: readonly SlotGroup[],
  ) {
    super();
    this.groups = pack.groups.map((group, g) => ({
      slot: slotGroups[g]!,
      gateExperts: group.gate?.experts ?? [],
      defaultK: group.defaultK,
      defaultAdapter: group.defaultAdapter,
      defaultTopP: group.defaultTopP,
    }));
    const now = new Date();
    for (const group of pack.groups) {
      const entries = new Map<string, Entry>();
      for (const adapter of group.adapters) {
        entries.set(adapter.id, {
          adapter,
          digest: digestOf(adapter),
          source: 'pack',
          loadedAt: now,
          notes: [],
        });
      }
      this.served.set(group.id, entries);
    }
    this.routingView = this.buildView();
  }

  /**
   * Hand every served adapter to `host` (the engine) and route later changes to it. Resolves when
   * every worker holds them.
   */
  async attach(host: AdapterHost): Promise<void> {
    this.host = host;
    for (const [g, group] of this.pack.groups.entries()) {
      for (const [id, entry] of this.served.get(group.id)!) {
        await host.putAdapter(id, g, entry.adapter, this.gateColumn(g, id));
      }
    }
  }

  /** What routing checks requests against: the ready adapters of each group. */
  view(): RoutingView {
    return this.routingView;
  }

  list(): AdapterInfo[] {
    const infos: AdapterInfo[] = [];
    const listed = new Set<string>();
    for (const [groupId, entries] of this.served) {
      for (const [id, entry] of entries) {
        listed.add(id);
        infos.push(this.info(groupId, id, entry, this.status.get(id)));
      }
    }
    for (const [id, status] of this.status) {
      if (listed.has(id) || status.attempted === undefined) continue;
      const attempted = status.attempted;
      infos.push({
        id,
        group: attempted.group,
        type: attempted.type,
        rank: attempted.rank,
        activation: attempted.activation,
        state: status.state,
        loadedAt: undefined,
        source: attempted.source,
        gated:
          this.groupIndex(attempted.group) === undefined
            ? false
            : this.gateColumn(this.groupIndex(attempted.group)!, id) !== undefined,
        error: status.error,
        notes: [],
      });
    }
    return infos;
  }

  /** The weights of every adapter served now, by id (what the engine's slots hold or will). */
  entries(): Map<string, SlotAdapter> {
    const out = new Map<string, SlotAdapter>();
    for (const entries of this.served.values()) {
      for (const [id, entry] of entries) out.set(id, entry.adapter);
    }
    return out;
  }

  get(id: string): AdapterInfo | undefined {
    return this.list().find((info) => info.id === id);
  }

  /**
   * Load (or replace) the adapter in `folder`: our own adapter folder (its config names its group
   * and id), a PEFT LoRA folder or an AdapterHub folder (in-layer adapters, for packs whose
   * backbone is a Hugging Face folder). `options.id` serves it under that id (default: the config's
   * id, or the folder's name); `options.group` names the group (default: the config's, or the one
   * in-layer group of the adapter's kind). A head saved with a PEFT adapter is served only when the
   * adapter is part of the pack (the pack graph holds the heads; loading never rebuilds it).
   * Rejects with ADAPTER_INVALID (the folder is wrong or does not fit: the message says what to
   * fix), ADAPTER_BUSY, ADAPTER_SLOTS_FULL, or an ENGINE_* error; the served set is then unchanged.
   */
  load(folder: string, options: LoadAdapterOptions = {}): Promise<AdapterInfo> {
    return this.serial.run(async () => {
      const started = performance.now();
      const fail = (failure: MoeError, id: string): never => {
        this.emit('failed', { id, operation: 'load', seconds: since(started), error: failure });
        throw failure;
      };
      let adapter: SlotAdapter;
      let notes: readonly string[];
      try {
        ({ adapter, notes } = await this.read(folder, options));
      } catch (error) {
        return fail(
          error instanceof MoeError
            ? error
            : new MoeError(
                'ADAPTER_INVALID',
                isPackError(error) ? error.message : `${folder}: ${messageOf(error)}`,
                isPackError(error)
                  ? { file: error.file, field: error.field, reason: error.code }
                  : {},
              ),
          options.id ?? folder,
        );
      }
      if (options.id !== undefined) adapter = { ...adapter, id: options.id };
      const id = adapter.id;
      this.assertIdle(id);
      const g = this.groupIndex(adapter.group)!;
      const existingGroup = this.groupOf(id);
      if (existingGroup !== undefined && existingGroup !== adapter.group) {
        return fail(
          new MoeError(
            'ADAPTER_INVALID',
            `Adapter '${id}' is already served in group '${existingGroup}'; unload it first or load this one under another id.`,
            { id, group: existingGroup },
          ),
          id,
        );
      }
      const problem = misfit(this.groups[g]!.slot, adapter);
      if (problem !== undefined) {
        return fail(
          new MoeError('ADAPTER_INVALID', `${folder}: ${problem}.`, { id, group: adapter.group }),
          id,
        );
      }
      const digest = digestOf(adapter);
      const previous = this.served.get(adapter.group)!.get(id);
      if (previous?.digest === digest) return this.get(id)!;

      const previousStatus = this.status.get(id);
      const attempted = {
        group: adapter.group,
        type: kindOf(adapter),
        rank: rankOf(adapter),
        activation: activationOf(adapter),
        source: folder,
      };
      this.status.set(id, { state: 'loading', attempted });
      try {
        await this.host?.putAdapter(id, g, adapter, this.gateColumn(g, id));
      } catch (error) {
        const failure = asMoeError(error);
        if (previous === undefined)
          this.status.set(id, { state: 'failed', error: failure.message, attempted });
        else if (previousStatus === undefined) this.status.delete(id);
        else this.status.set(id, previousStatus);
        return fail(failure, id);
      }
      this.served
        .get(adapter.group)!
        .set(id, { adapter, digest, source: folder, loadedAt: new Date(), notes });
      this.status.delete(id);
      this.routingView = this.buildView();
      this.emit('loaded', {
        id,
        group: adapter.group,
        seconds: since(started),
        replaced: previous !== undefined,
      });
      return this.get(id)!;
    });
  }

  /**
   * Stop serving `id`. A failed load's record is simply cleared. Rejects with ADAPTER_NOT_FOUND,
   * ADAPTER_BUSY, ADAPTER_IN_USE or ADAPTER_LAST_IN_GROUP.
   */
  unload(id: string): Promise<void> {
    return this.serial.run(async () => {
      const started = performance.now();
      const group = this.groupOf(id);
      if (group === undefined) {
        if (this.status.get(id)?.state === 'failed') {
          this.status.delete(id);
          return;
        }
        throw new MoeError(
          'ADAPTER_NOT_FOUND',
          `No adapter '${id}' is registered; GET /v1/adapters lists them.`,
          { id },
        );
      }
      this.assertIdle(id);
      const g = this.groupIndex(group)!;
      if (this.groups[g]!.defaultAdapter === id) {
        throw new MoeError(
          'ADAPTER_IN_USE',
          `'${id}' is the default adapter of group '${group}': requests that pin nothing in that group use it. Change the pack's default_adapter, or load a replacement under the id '${id}'.`,
          { id, group },
        );
      }
      const pinnedBy = this.pack.heads
        .filter((head) => head.pin?.group === group && head.pin.adapter === id)
        .map((head) => head.id);
      if (pinnedBy.length > 0) {
        throw new MoeError(
          'ADAPTER_IN_USE',
          `'${id}' is pinned by task${pinnedBy.length > 1 ? 's' : ''} ${pinnedBy.join(', ')}: requests for ${pinnedBy.length > 1 ? 'them' : 'it'} route through it. Load a replacement under the id '${id}' instead.`,
          { id, group, tasks: pinnedBy },
        );
      }
      if (this.served.get(group)!.size === 1) {
        throw new MoeError(
          'ADAPTER_LAST_IN_GROUP',
          `'${id}' is the last adapter of group '${group}'; load another one into the group before unloading it.`,
          { id, group },
        );
      }
      // Out of the routing view first (an adapter unloading is not routable): no batch dispatched
      // from now on routes to it. It stays listed, 'unloading', until its slot is free everywhere.
      this.status.set(id, { state: 'unloading' });
      this.routingView = this.buildView();
      try {
        await this.host?.removeAdapter(id);
      } catch (error) {
        this.status.delete(id);
        this.routingView = this.buildView();
        const failure = asMoeError(error);
        this.emit('failed', { id, operation: 'unload', seconds: since(started), error: failure });
        throw failure;
      }
      this.served.get(group)!.delete(id);
      this.status.delete(id);
      this.routingView = this.buildView();
      this.emit('unloaded', { id, group, seconds: since(started) });
    });
  }

  // --- internals ----------------------------------------------------------------------------

  /** Read and check an adapter folder of any supported format (see `load`). */
  private async read(
    folder: string,
    options: LoadAdapterOptions,
  ): Promise<{ adapter: SlotAdapter; notes: readonly string[] }> {
    const format = await detectAdapterFormat(folder);
    if (format === 'moe-serve') {
      const adapter = await loadAdapterFolder(folder, {
        hiddenSize: this.pack.hiddenSize,
        groups: this.pack.groups.map((g) => g.id),
        ...(options.group === undefined ? {} : { group: options.group }),
      });
      return {
        adapter: options.id === undefined ? adapter : { ...adapter, id: options.id },
        notes: [],
      };
    }
    const backbone = this.pack.backbone;
    if (backbone.kind !== 'huggingface') {
      throw new MoeError(
        'ADAPTER_INVALID',
        `${folder}: ${format === 'peft' ? 'a PEFT LoRA' : 'an AdapterHub'} adapter sits inside the backbone's layers, and this pack's backbone is an ONNX ${backbone.kind === 'onnx' ? 'file' : 'export'}, which hosts top-of-backbone adapters only; make the pack from the model's Hugging Face folder (npm run pack -- create).`,
        { format },
      );
    }
    const kind = format === 'peft' ? 'lora' : 'bottleneck-layers';
    const candidates = this.pack.groups.filter((g) => g.structure.kind === kind).map((g) => g.id);
    const group = options.group ?? (candidates.length === 1 ? candidates[0] : undefined);
    if (group === undefined || !candidates.includes(group)) {
      throw new MoeError(
        'ADAPTER_INVALID',
        candidates.length === 0
          ? `${folder}: this pack has no group for ${kind} adapters; add one with placement 'layers' to the pack.`
          : `${folder}: name the group to load it into ('group': ${candidates.join(' or ')}).`,
        { field: 'group', choices: candidates },
      );
    }
    // The base model's parts a saved head reads (labels, BERT's pooler): the head is checked like
    // one in the pack, then left out (see `notes`); read once, on the first in-layer load.
    this.baseParts ??= readBaseModelParts(backbone.dir).catch((error: unknown) => {
      this.baseParts = undefined; // a later load tries again
      throw error;
    });
    const imported = await importAdapterFolder(folder, {
      id: options.id ?? basename(folder),
      group,
      backbone: backbone.info.config,
      groups: this.pack.groups.map((g) => g.id),
      base: await this.baseParts,
    });
    const { head, ...adapter } = imported.adapter as LayerAdapter;
    const notes =
      head === undefined
        ? []
        : [
            `The folder's classifier head (PEFT modules_to_save, ${head.labels.length} labels) is not served: heads are part of the pack graph, which loading never rebuilds. To serve it, add the adapter to the pack: npm run pack -- add-adapter --pack <pack> --group ${group} --adapter <folder>.`,
          ];
    return { adapter: adapter as SlotAdapter, notes };
  }

  private buildView(): RoutingView {
    const groups: GroupView[] = this.pack.groups.map((group, g) => {
      const info = this.groups[g]!;
      const known = new Set(info.gateExperts);
      return {
        id: group.id,
        gated: group.gate !== null,
        adapters: [...this.served.get(group.id)!.keys()].filter(
          (id) => this.status.get(id)?.state !== 'unloading',
        ),
        gateKnows: (id: string) => known.has(id),
        defaultK: info.defaultK,
        defaultAdapter: info.defaultAdapter,
        defaultTopP: info.defaultTopP,
      };
    });
    return { groups };
  }

  private gateColumn(g: number, id: string): number | undefined {
    const column = this.groups[g]!.gateExperts.indexOf(id);
    return column < 0 ? undefined : column;
  }

  private groupIndex(group: string): number | undefined {
    const index = this.pack.groups.findIndex((g) => g.id === group);
    return index < 0 ? undefined : index;
  }

  private info(group: string, id: string, entry: Entry, status: Status | undefined): AdapterInfo {
    return {
      id,
      group,
      type: kindOf(entry.adapter),
      rank: rankOf(entry.adapter),
      activation: activationOf(entry.adapter),
      state: status?.state === 'unloading' || status?.state === 'loading' ? status.state : 'ready',
      loadedAt: entry.loadedAt,
      source: entry.source,
      gated: this.gateColumn(this.groupIndex(group)!, id) !== undefined,
      error: undefined,
      notes: entry.notes,
    };
  }

  private assertIdle(id: string): void {
    const state = this.status.get(id)?.state;
    if (state === 'loading' || state === 'unloading') {
      throw new MoeError('ADAPTER_BUSY', `Adapter '${id}' is ${state}; retry when that finishes.`, {
        id,
        state,
      });
    }
  }

  private groupOf(id: string): string | undefined {
    for (const [group, entries] of this.served) if (entries.has(id)) return group;
    return undefined;
  }
}

function rankOf(adapter: SlotAdapter): number {
  if ('type' in adapter) return adapter.rank;
  return adapter.kind === 'lora' ? adapter.rank : adapter.bottleneckSize;
}

function activationOf(adapter: SlotAdapter): string | undefined {
  if ('type' in adapter) return adapter.activation;
  return adapter.kind === 'bottleneck-layers' ? adapter.placement.activation : undefined;
}

/** Content digest: the adapter's config fields and every weight byte. */
function digestOf(adapter: SlotAdapter): string {
  return contentDigest(adapter);
}

function asMoeError(error: unknown): MoeError {
  return error instanceof MoeError ? error : new MoeError('ENGINE_FAILED', messageOf(error));
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function since(started: number): number {
  return (performance.now() - started) / 1000;
}
