/**
 * The pack graph's session together with the slot banks it reads, kept where the bank residency
 * says (bank-residency.ts): host arrays fed as they are, copies on the device, or initializers of
 * the session. An engine worker owns one, writes slot rows into it and runs batches on it.
 *
 * Contracts
 * - The host arrays are the truth: a slot write copies rows into them at once. Whatever the mode,
 *   the next `run()` sees every write made before it: it first brings the session's side up to
 *   date (device: copy the written banks again; initializers: a new session) and reports how long
 *   that took as `bankSyncMs` (0 when nothing was written since the last run, always 0 on 'host').
 * - Calls are not concurrent: the worker handles one message at a time.
 */
import { readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import * as ort from 'onnxruntime-node';
import {
  BanksAsInitializers,
  type HostBank,
  UPLOAD_INPUT,
  UPLOAD_OUTPUT,
  uploadGraph,
} from '../onnx/bank-graphs.js';
import { type BankSpec, rowSize } from '../onnx/pack-graph-contract.js';
import type { BankResidency } from './bank-residency.js';

export interface PackSessionOptions {
  /** The pack graph: a file path (weights as external data beside it) or the model bytes. */
  readonly model: string | Uint8Array;
  readonly banks: readonly BankSpec[];
  readonly residency: BankResidency;
  /** Options of the pack graph's session (provider, threads, ...). */
  readonly sessionOptions: ort.InferenceSession.SessionOptions;
}

type Feeds = Record<string, ort.Tensor>;

interface Bank extends HostBank {
  readonly rowSize: number;
  /** A tensor over the host array, created once: writes into the array show through it. */
  readonly host: ort.Tensor;
}

export abstract class PackSession {
  abstract readonly residency: BankResidency;

  /** Open the session and put the banks (zero-filled) where `residency` keeps them. */
  static async open(options: PackSessionOptions): Promise<PackSession> {
    const banks = new Map<string, Bank>();
    for (const spec of options.banks) {
      const size = rowSize(spec);
      const data =
        spec.dtype === 'int64'
          ? new BigInt64Array(spec.rows * size)
          : new Float32Array(spec.rows * size);
      const host = new ort.Tensor(spec.dtype, data, [spec.rows, ...spec.rowShape]);
      banks.set(spec.name, { spec, data, rowSize: size, host });
    }
    switch (options.residency) {
      case 'host':
        return new HostBanks(banks, await createSession(options.model, options.sessionOptions));
      case 'device':
        return DeviceBanks.create(banks, options);
      case 'initializers':
        return InitializerBanks.create(banks, options);
    }
  }

  /** The graph's inputs other than the banks. */
  readonly inputNames: readonly string[];

  protected constructor(
    protected readonly banks: ReadonlyMap<string, Bank>,
    protected session: ort.InferenceSession | undefined,
  ) {
    this.inputNames = (session?.inputNames ?? []).filter((name) => !banks.has(name));
  }

  /** Replace whole rows of bank `name` from `row` on (a slot write). */
  writeRows(name: string, row: number, rows: Float32Array | BigInt64Array): void {
    const bank = this.banks.get(name);
    if (bank === undefined) throw new Error(`no slot bank '${name}' in this graph`);
    if (
      rows.length % bank.rowSize !== 0 ||
      (row + rows.length / bank.rowSize) * bank.rowSize > bank.data.length
    ) {
      throw new Error(`slot write to '${name}' row ${row} does not fit the bank`);
    }
    (bank.data as Float32Array).set(rows as Float32Array, row * bank.rowSize);
    this.written(bank);
  }

  /** Run the pack graph on `feeds` (every input but the banks, which this adds). */
  async run(
    feeds: Feeds,
  ): Promise<{ outputs: ort.InferenceSession.ReturnType; bankSyncMs: number }> {
    let bankSyncMs = 0;
    if (this.pending) {
      const started = performance.now();
      await this.sync();
      bankSyncMs = performance.now() - started;
    }
    this.addBankFeeds(feeds);
    const outputs = await this.session!.run(feeds);
    return { outputs, bankSyncMs };
  }

  async release(): Promise<void> {
    const session = this.session;
    this.session = undefined;
    await session?.release().catch(() => undefined);
  }

  /** Rows of `bank` changed in its host array. */
  protected abstract written(bank: Bank): void;
  /** Whether the session's side lags behind the host arrays. */
  protected abstract get pending(): boolean;
  /** Bring the session's side up to date with the host arrays. */
  protected abstract sync(): Promise<void>;
  protected abstract addBankFeeds(feeds: Feeds): void;
}

/** cpu: the host arrays are the inputs, handed to ORT without a copy (FIELD-NOTES). */
class HostBanks extends PackSession {
  readonly residency = 'host';

  protected written(): void {}
  protected get pending(): boolean {
    return false;
  }
  protected async sync(): Promise<void> {}
  protected addBankFeeds(feeds: Feeds): void {
    for (const [name, bank] of this.banks) feeds[name] = bank.host;
  }
}

/**
 * webgpu: float32 banks live in device buffers that a one-Identity session returns when created
 * with `preferredOutputLocation: 'gpu-buffer'`; they are fed on every run with no copy. int64
 * banks stay host inputs (WebGPU kernels take no int64; they are S values each).
 */
class DeviceBanks extends PackSession {
  readonly residency = 'device';
  /** Upload sessions by tensor rank. */
  private readonly uploads = new Map<number, ort.InferenceSession>();
  /** Bank name -> its copy on the device. */
  private readonly resident = new Map<string, ort.Tensor>();
  private readonly dirty = new Set<Bank>();

  static async create(
    banks: ReadonlyMap<string, Bank>,
    options: PackSessionOptions,
  ): Promise<DeviceBanks> {
    const self = new DeviceBanks(banks, await createSession(options.model, options.sessionOptions));
    try {
      const uploadOptions: ort.InferenceSession.SessionOptions = {
        ...options.sessionOptions,
        preferredOutputLocation: 'gpu-buffer',
      };
      for (const bank of banks.values()) {
        if (bank.spec.dtype !== 'float32') continue;
        const rank = bank.host.dims.length;
        if (!self.uploads.has(rank)) {
          self.uploads.set(
            rank,
            await ort.InferenceSession.create(uploadGraph(rank), uploadOptions),
          );
        }
        self.dirty.add(bank);
      }
      // The first copy now, so that a provider that cannot do it fails at start, not at a batch.
      await self.sync();
    } catch (error) {
      await self.release();
      throw error;
    }
    return self;
  }

  protected written(bank: Bank): void {
    if (bank.spec.dtype === 'float32') this.dirty.add(bank);
  }
  protected get pending(): boolean {
    return this.dirty.size > 0;
  }

  protected async sync(): Promise<void> {
    for (const bank of this.dirty) {
      const upload = this.uploads.get(bank.host.dims.length)!;
      const copy = (await upload.run({ [UPLOAD_INPUT]: bank.host }))[UPLOAD_OUTPUT]!;
      this.resident.get(bank.spec.name)?.dispose();
      this.resident.set(bank.spec.name, copy);
      this.dirty.delete(bank);
    }
  }

  protected addBankFeeds(feeds: Feeds): void {
    for (const [name, bank] of this.banks) feeds[name] = this.resident.get(name) ?? bank.host;
  }

  override async release(): Promise<void> {
    for (const copy of this.resident.values()) copy.dispose();
    this.resident.clear();
    for (const upload of this.uploads.values()) await upload.release().catch(() => undefined);
    this.uploads.clear();
    await super.release();
  }
}

/**
 * cuda: the banks are initializers of the session (onnx/bank-graphs.ts), so they sit on the
 * device with the weights; after a slot write the next run first makes a new session. The old
 * one is released before the new one is made: two copies of a large backbone may not fit.
 */
class InitializerBanks extends PackSession {
  readonly residency = 'initializers';
  private stale = false;

  private constructor(
    banks: ReadonlyMap<string, Bank>,
    session: ort.InferenceSession,
    private readonly graph: BanksAsInitializers,
    private readonly options: ort.InferenceSession.SessionOptions,
  ) {
    super(banks, session);
  }

  static async create(
    banks: ReadonlyMap<string, Bank>,
    options: PackSessionOptions,
  ): Promise<InitializerBanks> {
    const { model } = options;
    const graph = new BanksAsInitializers(
      typeof model === 'string' ? await readFile(model) : model,
      [...banks.values()],
    );
    // From bytes, ORT looks for external data in the working directory unless told the folder.
    const sessionOptions =
      typeof model === 'string'
        ? withExternalDataFolder(options.sessionOptions, dirname(model))
        : options.sessionOptions;
    const session = await ort.InferenceSession.create(graph.encode(), sessionOptions);
    return new InitializerBanks(banks, session, graph, sessionOptions);
  }

  protected written(): void {
    this.stale = true;
  }
  protected get pending(): boolean {
    return this.stale;
  }

  protected async sync(): Promise<void> {
    await this.release();
    // Still stale if this throws: the next run tries again.
    this.session = await ort.InferenceSession.create(this.graph.encode(), this.options);
    this.stale = false;
  }

  protected addBankFeeds(): void {}
}

function createSession(
  model: string | Uint8Array,
  options: ort.InferenceSession.SessionOptions,
): Promise<ort.InferenceSession> {
  return typeof model === 'string'
    ? ort.InferenceSession.create(model, options)
    : ort.InferenceSession.create(model, options);
}

/** `options` plus the config entry that tells ORT where a model from bytes keeps its external data. */
function withExternalDataFolder(
  options: ort.InferenceSession.SessionOptions,
  folder: string,
): ort.InferenceSession.SessionOptions {
  const extra = (options.extra ?? {}) as Record<string, unknown>;
  const session = (extra.session ?? {}) as Record<string, unknown>;
  return {
    ...options,
    extra: {
      ...extra,
      // kOrtSessionOptionsModelExternalInitializersFileFolderPath
      session: { ...session, model_external_initializers_file_folder_path: folder },
    },
  };
}
