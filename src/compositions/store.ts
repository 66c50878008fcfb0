/**
 * Where named compositions live. Two implementations share one contract:
 * - `FileCompositionStore` (embedded mode, this file): one JSON file in the state folder
 *   (STATE_DIR, default `<pack>/.state`), written whole to a temporary file and renamed over the
 *   old one, so a crash leaves the old file or the new one, never half of one.
 * - `RedisCompositionStore` (queue mode, transport/composition-store-redis.ts): one Redis hash
 *   shared by every API node, changes announced on a channel.
 *
 * Contracts
 * - Reads (`get`, `list`) are synchronous, from this process's snapshot: the request path never
 *   waits for a disk or Redis to resolve a composition.
 * - A change is persisted first and swapped into the snapshot after: until `put` resolves, the
 *   previous version keeps serving; a change that fails to persist changes nothing.
 * - Versions count per name from 1; a replacement is the previous version + 1. A deletion forgets
 *   the name (a later creation starts again at 1).
 * - Changes on one node are serialised (one at a time, in arrival order).
 */
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { MoeError } from '../errors.js';
import { SerialQueue } from '../util/serial.js';
import type { CompositionDefinition, Provenance, StoredComposition } from './composition.js';

export interface PutResult {
  readonly stored: StoredComposition;
  /** False: it replaced an earlier version. */
  readonly created: boolean;
}

export interface CompositionStore {
  get(name: string): StoredComposition | undefined;
  /** Sorted by name. */
  list(): StoredComposition[];
  /**
   * `get`, but a name this node has not seen is looked up in the shared store first (queue mode:
   * a composition created on another node a moment ago). Embedded: the same as `get`.
   */
  find(name: string): Promise<StoredComposition | undefined>;
  put(definition: CompositionDefinition, provenance: Provenance): Promise<PutResult>;
  /** The deleted composition; undefined when there was none. */
  delete(name: string): Promise<StoredComposition | undefined>;
  /** Read what is stored (boot). */
  start(): Promise<void>;
  close(): Promise<void>;
}

/** The next stored form of `definition` over `previous` (undefined: a new name). */
export function nextVersion(
  definition: CompositionDefinition,
  provenance: Provenance,
  previous: StoredComposition | undefined,
  now = new Date(),
): StoredComposition {
  return {
    name: definition.name,
    description: definition.description,
    groups: definition.groups,
    version: (previous?.version ?? 0) + 1,
    createdAt: previous?.createdAt ?? now.toISOString(),
    updatedAt: now.toISOString(),
    provenance,
  };
}

/** The file's format tag; a file with another is refused at boot. */
export const COMPOSITIONS_FILE_FORMAT = 'moe-serve.compositions/1';
export const COMPOSITIONS_FILE = 'compositions.json';

interface CompositionsFile {
  readonly format: typeof COMPOSITIONS_FILE_FORMAT;
  /** The pack name they were made for (for people reading the file; not checked). */
  readonly model: string;
  readonly compositions: readonly StoredComposition[];
}

/**
 * Compositions in this process only, lost on exit: the default of `buildApp` when no store is
 * given (tests, tools). `FileCompositionStore` adds the file.
 */
export class MemoryCompositionStore implements CompositionStore {
  protected snapshot = new Map<string, StoredComposition>();
  private readonly serial = new SerialQueue();

  get(name: string): StoredComposition | undefined {
    return this.snapshot.get(name);
  }

  list(): StoredComposition[] {
    return [...this.snapshot.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  async find(name: string): Promise<StoredComposition | undefined> {
    return this.get(name);
  }

  async start(): Promise<void> {}

  put(definition: CompositionDefinition, provenance: Provenance): Promise<PutResult> {
    return this.serial.run(async () => {
      const previous = this.snapshot.get(definition.name);
      const stored = nextVersion(definition, provenance, previous);
      const next = new Map(this.snapshot).set(stored.name, stored);
      await this.persist(next);
      this.snapshot = next; // the swap: the new version serves from here on
      return { stored, created: previous === undefined };
    });
  }

  delete(name: string): Promise<StoredComposition | undefined> {
    return this.serial.run(async () => {
      const previous = this.snapshot.get(name);
      if (previous === undefined) return undefined;
      const next = new Map(this.snapshot);
      next.delete(name);
      await this.persist(next);
      this.snapshot = next;
      return previous;
    });
  }

  async close(): Promise<void> {
    await this.serial.idle();
  }

  /** Make `compositions` durable before they serve; throwing leaves everything as it was. */
  protected async persist(_compositions: ReadonlyMap<string, StoredComposition>): Promise<void> {}
}

export class FileCompositionStore extends MemoryCompositionStore {
  private writes = 0;

  /** `file`: the JSON file (created with its folder on the first change). */
  constructor(
    readonly file: string,
    private readonly model: string,
  ) {
    super();
  }

  static inFolder(stateDir: string, model: string): FileCompositionStore {
    return new FileCompositionStore(join(stateDir, COMPOSITIONS_FILE), model);
  }

  /** Throws (the server does not start) when the file exists but cannot be read as ours. */
  override async start(): Promise<void> {
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return; // nothing stored yet
      throw error;
    }
    let parsed: CompositionsFile;
    try {
      parsed = JSON.parse(text) as CompositionsFile;
    } catch (error) {
      throw new Error(`${this.file}: not valid JSON (${(error as Error).message})`);
    }
    if (parsed.format !== COMPOSITIONS_FILE_FORMAT || !Array.isArray(parsed.compositions)) {
      throw new Error(
        `${this.file}: format is ${JSON.stringify(parsed.format)}, expected '${COMPOSITIONS_FILE_FORMAT}'`,
      );
    }
    this.snapshot = new Map(parsed.compositions.map((c) => [c.name, c]));
  }

  protected override async persist(
    compositions: ReadonlyMap<string, StoredComposition>,
  ): Promise<void> {
    const body: CompositionsFile = {
      format: COMPOSITIONS_FILE_FORMAT,
      model: this.model,
      compositions: [...compositions.values()],
    };
    const temp = `${this.file}.${process.pid}.${++this.writes}.tmp`;
    try {
      await mkdir(dirname(this.file), { recursive: true });
      await writeFile(temp, `${JSON.stringify(body, null, 2)}\n`, { flush: true });
      await rename(temp, this.file); // atomic on one filesystem
    } catch (error) {
      await rm(temp, { force: true }).catch(() => undefined);
      throw new MoeError(
        'COMPOSITION_STORE_FAILED',
        `Could not write ${this.file} (${(error as Error).message}); nothing changed. Check that STATE_DIR is writable.`,
      );
    }
  }
}
