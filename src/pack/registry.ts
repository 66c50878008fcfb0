/**
 * The adapter registry: which adapters are served, their lifecycle, and the mixture graph compiled
 * from them.
 *
 * Lifecycle of an adapter id: loading -> ready -> unloading -> (gone), or loading -> failed.
 * - Changes are applied one at a time (a promise chain), each as: validate the folder, compile a
 *   new mixture graph from the would-be registry, install it in every engine worker (the engine
 *   swaps atomically; batches in flight finish on the old graph), then commit the new state.
 *   Any failure leaves the served set exactly as it was.
 * - Loading an id that is ready replaces it; the old weights serve until the new graph is
 *   installed. Loading the same folder contents again is a no-op (idempotent).
 * - The backbone is never touched: only the mixture graph is recompiled.
 * - An adapter the group's gate was not trained on is served too, reachable by pinning only.
 */
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { MoeError } from '../errors.js';
import { compileMixture } from '../onnx/mixture.js';
import type { MixtureLayout } from '../onnx/mixture-contract.js';
import { isPackError } from './errors.js';
import { type LoadedPack, loadAdapterFolder } from './load.js';
import type { BottleneckAdapter, MixtureSpec } from './types.js';

export type AdapterState = 'loading' | 'ready' | 'failed' | 'unloading';

/** What the registry tells about one adapter id (the REST listing shows these). */
export interface AdapterInfo {
  readonly id: string;
  readonly group: string;
  readonly type: 'bottleneck';
  readonly rank: number;
  readonly activation: string;
  readonly state: AdapterState;
  /** When the version now serving was installed; undefined while never served. */
  readonly loadedAt: Date | undefined;
  /** 'pack' for adapters of the model pack, else the folder it was loaded from. */
  readonly source: string;
  /** Whether the group's gate scores it; false: reachable by pinning only. */
  readonly gated: boolean;
  /** Why the last load failed (state 'failed'). */
  readonly error: string | undefined;
}

/** Where compiled graphs go: the engine. */
export interface MixtureInstaller {
  installMixture(layout: MixtureLayout, bytes: Uint8Array): Promise<void>;
}

export interface RegistryEvents {
  loaded: [{ id: string; group: string; seconds: number; replaced: boolean }];
  unloaded: [{ id: string; group: string; seconds: number }];
  failed: [{ id: string; operation: 'load' | 'unload'; seconds: number; error: MoeError }];
}

interface Entry {
  adapter: BottleneckAdapter;
  digest: string;
  source: string;
  loadedAt: Date;
}

interface Status {
  state: AdapterState;
  error?: string;
  /** For a failed first load: what was attempted. */
  attempted?: { group: string; rank: number; activation: string; source: string };
}

export interface CompiledMixture {
  readonly layout: MixtureLayout;
  readonly bytes: Uint8Array;
}

export class AdapterRegistry extends EventEmitter<RegistryEvents> {
  /** group id -> (adapter id -> entry), in load order: the bank order. */
  private readonly served = new Map<string, Map<string, Entry>>();
  /** Transient states (loading, unloading, failed); absent: ready if served. */
  private readonly status = new Map<string, Status>();
  private version = 0;
  private chain: Promise<unknown> = Promise.resolve();
  private installer: MixtureInstaller | undefined;

  constructor(private readonly pack: LoadedPack) {
    super();
    const now = new Date();
    for (const group of pack.groups) {
      const entries = new Map<string, Entry>();
      for (const adapter of group.adapters) {
        entries.set(adapter.id, {
          adapter,
          digest: digestOf(adapter),
          source: 'pack',
          loadedAt: now,
        });
      }
      this.served.set(group.id, entries);
    }
  }

  /** Compile the graph for the adapters served now (used once to start the engine). */
  compileCurrent(): CompiledMixture {
    return this.compile(this.served);
  }

  /** Route later changes to the engine. */
  attach(installer: MixtureInstaller): void {
    this.installer = installer;
  }

  list(): AdapterInfo[] {
    const infos: AdapterInfo[] = [];
    const listed = new Set<string>();
    for (const [groupId, entries] of this.served) {
      for (const [id, entry] of entries) {
        listed.add(id);
        infos.push(this.info(groupId, entry, this.status.get(id)));
      }
    }
    for (const [id, status] of this.status) {
      if (listed.has(id) || status.attempted === undefined) continue;
      infos.push({
        id,
        group: status.attempted.group,
        type: 'bottleneck',
        rank: status.attempted.rank,
        activation: status.attempted.activation,
        state: status.state,
        loadedAt: undefined,
        source: status.attempted.source,
        gated: this.gateKnows(status.attempted.group, id),
        error: status.error,
      });
    }
    return infos;
  }

  get(id: string): AdapterInfo | undefined {
    return this.list().find((info) => info.id === id);
  }

  /**
   * Load (or replace) the adapter in `folder`, into the group its config names. `options.id`
   * serves it under another id than its config's.
   * Rejects with ADAPTER_INVALID (the folder is wrong: the message says what to fix),
   * ADAPTER_BUSY, or an ENGINE_* error; the served set is then unchanged.
   */
  load(folder: string, options: { id?: string } = {}): Promise<AdapterInfo> {
    return this.serialise(async () => {
      const started = performance.now();
      let adapter: BottleneckAdapter;
      try {
        adapter = await loadAdapterFolder(folder, {
          hiddenSize: this.pack.hiddenSize,
          groups: this.pack.groups.map((g) => g.id),
        });
      } catch (error) {
        const failure = new MoeError(
          'ADAPTER_INVALID',
          isPackError(error) ? error.message : `${folder}: ${messageOf(error)}`,
          isPackError(error) ? { file: error.file, field: error.field, reason: error.code } : {},
        );
        this.emit('failed', {
          id: options.id ?? folder,
          operation: 'load',
          seconds: since(started),
          error: failure,
        });
        throw failure;
      }
      if (options.id !== undefined) adapter = { ...adapter, id: options.id };
      const id = adapter.id;
      this.assertIdle(id);
      const existingGroup = this.groupOf(id);
      if (existingGroup !== undefined && existingGroup !== adapter.group) {
        throw new MoeError(
          'ADAPTER_INVALID',
          `Adapter '${id}' is already served in group '${existingGroup}'; unload it first or load this one under another id.`,
          { id, group: existingGroup },
        );
      }
      const groupActivation = this.activationOf(adapter.group);
      if (groupActivation !== undefined && groupActivation !== adapter.activation) {
        throw new MoeError(
          'ADAPTER_INVALID',
          `${folder}: adapter_config.json: /activation: '${adapter.activation}' differs from group '${adapter.group}', whose adapters use '${groupActivation}'.`,
          { file: 'adapter_config.json', field: '/activation' },
        );
      }
      const digest = digestOf(adapter);
      const previous = this.served.get(adapter.group)!.get(id);
      if (previous?.digest === digest) return this.get(id)!;

      const previousStatus = this.status.get(id);
      this.status.set(id, {
        state: 'loading',
        attempted: {
          group: adapter.group,
          rank: adapter.rank,
          activation: adapter.activation,
          source: folder,
        },
      });
      const next = cloneServed(this.served);
      next.get(adapter.group)!.set(id, { adapter, digest, source: folder, loadedAt: new Date() });
      try {
        await this.install(next);
      } catch (error) {
        const failure = asMoeError(error);
        if (previous === undefined) {
          this.status.set(id, {
            state: 'failed',
            error: failure.message,
            attempted: {
              group: adapter.group,
              rank: adapter.rank,
              activation: adapter.activation,
              source: folder,
            },
          });
        } else if (previousStatus === undefined) this.status.delete(id);
        else this.status.set(id, previousStatus);
        this.emit('failed', { id, operation: 'load', seconds: since(started), error: failure });
        throw failure;
      }
      this.commit(next);
      this.status.delete(id);
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
   * ADAPTER_BUSY or ADAPTER_LAST_IN_GROUP (a group keeps at least one adapter).
   */
  unload(id: string): Promise<void> {
    return this.serialise(async () => {
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
      if (this.served.get(group)!.size === 1) {
        throw new MoeError(
          'ADAPTER_LAST_IN_GROUP',
          `'${id}' is the last adapter of group '${group}'; load another one into the group before unloading it.`,
          { id, group },
        );
      }
      this.status.set(id, { state: 'unloading' });
      const next = cloneServed(this.served);
      next.get(group)!.delete(id);
      try {
        await this.install(next);
      } catch (error) {
        this.status.delete(id);
        const failure = asMoeError(error);
        this.emit('failed', { id, operation: 'unload', seconds: since(started), error: failure });
        throw failure;
      }
      this.commit(next);
      this.status.delete(id);
      this.emit('unloaded', { id, group, seconds: since(started) });
    });
  }

  // --- internals ----------------------------------------------------------------------------

  private serialise<T>(work: () => Promise<T>): Promise<T> {
    const run = this.chain.then(work);
    this.chain = run.catch(() => undefined);
    return run;
  }

  private async install(next: Map<string, Map<string, Entry>>): Promise<void> {
    const { layout, bytes } = this.compile(next);
    if (this.installer !== undefined) await this.installer.installMixture(layout, bytes);
  }

  private commit(next: Map<string, Map<string, Entry>>): void {
    for (const [group, entries] of next) this.served.set(group, entries);
  }

  private compile(served: Map<string, Map<string, Entry>>): CompiledMixture {
    this.version++;
    const groups = this.pack.groups.map((group) => ({
      id: group.id,
      adapters: [...served.get(group.id)!.values()].map((entry) => entry.adapter),
      gate: group.gate,
    }));
    const spec: MixtureSpec = {
      hiddenSize: this.pack.hiddenSize,
      groups,
      heads: this.pack.heads,
      pooling: this.pack.pooling,
    };
    const layout: MixtureLayout = {
      version: this.version,
      hiddenSize: this.pack.hiddenSize,
      groups: this.pack.groups.map((group, g) => {
        const ids = groups[g]!.adapters.map((a) => a.id);
        return {
          id: group.id,
          adapters: ids,
          gated: group.gate !== null,
          gateKnows: ids.map((id) => group.gate?.experts.includes(id) ?? false),
          defaultK: group.defaultK,
          defaultAdapter: group.defaultAdapter,
        };
      }),
      heads: this.pack.heads.map((head) => ({ id: head.id, labels: head.labels })),
    };
    return { layout, bytes: compileMixture(spec) };
  }

  private info(group: string, entry: Entry, status: Status | undefined): AdapterInfo {
    return {
      id: entry.adapter.id,
      group,
      type: 'bottleneck',
      rank: entry.adapter.rank,
      activation: entry.adapter.activation,
      state: status?.state === 'unloading' || status?.state === 'loading' ? status.state : 'ready',
      loadedAt: entry.loadedAt,
      source: entry.source,
      gated: this.gateKnows(group, entry.adapter.id),
      error: undefined,
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

  private activationOf(group: string): string | undefined {
    const first = this.served.get(group)?.values().next();
    return first === undefined || first.done ? undefined : first.value.adapter.activation;
  }

  private gateKnows(group: string, id: string): boolean {
    return this.pack.groups.find((g) => g.id === group)?.gate?.experts.includes(id) ?? false;
  }
}

function cloneServed(served: Map<string, Map<string, Entry>>): Map<string, Map<string, Entry>> {
  return new Map([...served].map(([group, entries]) => [group, new Map(entries)]));
}

/** Content digest: config fields and every weight byte. */
function digestOf(adapter: BottleneckAdapter): string {
  const hash = createHash('sha256');
  hash.update(JSON.stringify([adapter.group, adapter.rank, adapter.activation, adapter.residual]));
  for (const w of [adapter.down, adapter.downBias, adapter.up, adapter.upBias]) {
    hash.update(new Uint8Array(w.data.buffer, w.data.byteOffset, w.data.byteLength));
  }
  return hash.digest('hex');
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
