/**
 * A served model: the pack, its tokenizer, the adapter registry and the engine, wired together.
 * This is the one place that turns a user's request (texts plus routing wishes) into engine items
 * and engine results back into answers. The CLI calls it directly; the HTTP service puts its
 * batcher between `prepare` and the engine.
 */

import type { EngineItemResult, TaskOutput } from '../engine/decode.js';
import { Engine, type EngineOptions } from '../engine/engine.js';
import { type ItemRouting, routeItem } from '../engine/routing.js';
import { MoeError } from '../errors.js';
import { prepareBackbone } from '../onnx/backbone-cache.js';
import type { MixtureLayout } from '../onnx/mixture-contract.js';
import { type LoadedPack, loadPack } from '../pack/load.js';
import { AdapterRegistry } from '../pack/registry.js';
import { TextTokenizer, type TruncationPolicy } from './tokenizer.js';

export interface ModelOptions {
  /** Folder of the model pack (holds manifest.json). */
  readonly packDir: string;
  readonly engine?: Omit<EngineOptions, 'backbonePath'>;
  /**
   * Where a Hugging Face backbone's built graph is cached; default `<pack>/.cache/backbone`
   * (src/onnx/backbone-cache.ts).
   */
  readonly backboneCacheDir?: string;
  /** Progress of a backbone build (first start of a Hugging Face pack); default stderr. */
  readonly log?: (line: string) => void;
  /** What to do with inputs longer than the pack's max_length. Default 'truncate'. */
  readonly truncation?: TruncationPolicy;
}

/** A request in the API's own terms (the HTTP body maps onto it one to one). */
export interface InferRequest {
  readonly inputs: readonly string[];
  /**
   * Pre-tokenized inputs, instead of `inputs` (which must then be empty): ids of the pack's
   * vocabulary, run exactly as given (no special tokens added); the length policy applies (see
   * TextTokenizer.encodeIds).
   */
  readonly tokenIds?: readonly (readonly number[])[];
  /** Task (head) id: only its output is returned, and its pinned adapter is used. */
  readonly task?: string;
  /** Shorthand for pinning the adapter of the group named 'language'. */
  readonly language?: string;
  /** group id -> adapter id to pin. */
  readonly adapters?: Readonly<Record<string, string>>;
  /** Adapter ids never to route to. */
  readonly exclude?: readonly string[];
  /** Adapters mixed in every gated group that is not pinned; default: each group's default_k. */
  readonly topK?: number;
}

export interface InferResult {
  readonly routing: EngineItemResult['routing'];
  readonly outputs: Readonly<Record<string, TaskOutput>>;
  readonly embedding: Float32Array;
  /** Tokens fed to the model (specials included, after truncation). */
  readonly tokens: number;
  readonly truncated: boolean;
}

/** One input, tokenized and with its routing resolved to adapter ids: what the batcher queues. */
export interface PreparedItem {
  readonly ids: Int32Array;
  readonly routing: ItemRouting;
  readonly truncated: boolean;
  /** Tasks whose outputs the answer keeps (all when undefined). */
  readonly tasks: readonly string[] | undefined;
}

/**
 * The request side of a model: pack, tokenizer and adapter registry, without an engine. The API
 * role of queue mode validates and tokenizes with it and leaves running to the workers (no ORT
 * session, no engine thread in that process); `Model` adds the engine.
 */
/** What the server tells about the model it serves (GET /v1/models, KServe metadata). */
export interface ModelDescription {
  readonly id: string;
  readonly version: string;
  readonly description: string;
  readonly hiddenSize: number;
  readonly maxLength: number;
  readonly groups: readonly {
    id: string;
    gated: boolean;
    defaultK: number;
    adapters: readonly string[];
  }[];
  readonly tasks: readonly {
    id: string;
    labels: readonly string[];
    pin: { group: string; adapter: string } | undefined;
  }[];
}

export class ModelFrontend {
  protected constructor(
    readonly pack: LoadedPack,
    readonly tokenizer: TextTokenizer,
    readonly registry: AdapterRegistry,
    private readonly truncation: TruncationPolicy,
    /** The layout of the pack's own adapters (the frontend has no engine whose layout to follow). */
    private readonly packLayout: MixtureLayout | undefined,
  ) {}

  /** Open the pack and its tokenizer only: no engine workers, no ORT sessions. */
  static async open(options: Pick<ModelOptions, 'packDir' | 'truncation'>): Promise<ModelFrontend> {
    const pack = await loadPack(options.packDir);
    const tokenizer = await TextTokenizer.load(pack.tokenizerPath, pack.maxLength);
    const registry = new AdapterRegistry(pack);
    const { layout } = registry.compileCurrent();
    return new ModelFrontend(pack, tokenizer, registry, options.truncation ?? 'truncate', layout);
  }

  /** The mixture layout requests are validated against. */
  get layout(): MixtureLayout {
    return this.packLayout!;
  }

  get name(): string {
    return this.pack.manifest.name;
  }

  /**
   * Validate the request's routing wishes and tokenize its inputs. Throws MoeError (4xx) for the
   * first problem; nothing is queued then.
   */
  prepare(request: InferRequest): PreparedItem[] {
    const pins: Record<string, string> = {};
    let tasks: string[] | undefined;
    if (request.task !== undefined) {
      const head = this.pack.heads.find((h) => h.id === request.task);
      if (head === undefined) {
        const choices = this.pack.heads.map((h) => h.id);
        throw new MoeError(
          'ROUTING_UNKNOWN_TASK',
          `Unknown task '${request.task}'; this model's tasks are: ${choices.join(', ')}.`,
          { field: 'task', choices },
        );
      }
      tasks = [head.id];
      if (head.pin !== undefined) pins[head.pin.group] = head.pin.adapter;
    }
    if (request.language !== undefined) {
      if (!this.pack.groups.some((g) => g.id === 'language')) {
        throw new MoeError(
          'ROUTING_UNKNOWN_GROUP',
          `This model has no 'language' adapter group; drop 'language'.`,
          {
            field: 'language',
          },
        );
      }
      pins.language = request.language;
    }
    Object.assign(pins, request.adapters);
    const k: Record<string, number> = {};
    if (request.topK !== undefined) {
      for (const group of this.layout.groups) {
        if (group.gated && pins[group.id] === undefined) k[group.id] = request.topK;
      }
    }
    const routing: ItemRouting = {
      pins,
      k,
      ...(request.exclude === undefined ? {} : { exclude: request.exclude }),
    };
    // Fail fast, before anything is queued. The engine resolves it again at dispatch against the
    // graph then current (an adapter may have been unloaded in between).
    routeItem(this.layout, routing);
    // Without a task, answer the heads whose adapter this routing really uses: a head trained on
    // its own task adapter says little when run through another one.
    tasks ??= this.headsServedBy(pins);
    if (request.tokenIds !== undefined) {
      if (request.inputs.length > 0) {
        throw new MoeError('INPUT_INVALID', 'Send texts or token ids in one request, not both.', {
          field: 'inputs',
        });
      }
      return request.tokenIds.map((ids, index) => {
        if (ids.length === 0) {
          throw new MoeError('INPUT_EMPTY', `inputs[${index}] has no token ids.`, {
            field: `inputs[${index}]`,
          });
        }
        const encoded = this.tokenizer.encodeIds(ids, this.truncation, index);
        return { ids: encoded.ids, routing, truncated: encoded.truncated, tasks };
      });
    }
    return request.inputs.map((text, index) => {
      if (text.trim().length === 0) {
        throw new MoeError(
          'INPUT_EMPTY',
          `inputs[${index}] is empty; send text with at least one word.`,
          {
            field: `inputs[${index}]`,
          },
        );
      }
      const encoded = this.tokenizer.encode(text, this.truncation, index);
      return { ids: encoded.ids, routing, truncated: encoded.truncated, tasks };
    });
  }

  describe(): ModelDescription {
    return {
      id: this.name,
      version: this.pack.manifest.version,
      description: this.pack.manifest.description ?? '',
      hiddenSize: this.pack.hiddenSize,
      maxLength: this.pack.maxLength,
      groups: this.layout.groups.map((g) => ({
        id: g.id,
        gated: g.gated,
        defaultK: g.defaultK,
        adapters: g.adapters,
      })),
      tasks: this.pack.heads.map((h) => ({ id: h.id, labels: h.labels, pin: h.pin })),
    };
  }

  /**
   * Heads whose pinned adapter is the one `pins` (or the group's default adapter) selects, plus
   * heads without a pin; a pin into a gated, unpinned group cannot be known before the gate runs,
   * so such heads are kept.
   */
  private headsServedBy(pins: Readonly<Record<string, string>>): string[] {
    return this.pack.heads
      .filter((head) => {
        if (head.pin === undefined) return true;
        const group = this.layout.groups.find((g) => g.id === head.pin!.group);
        const chosen = pins[head.pin.group] ?? (group?.gated ? undefined : group?.defaultAdapter);
        return chosen === undefined || chosen === head.pin.adapter;
      })
      .map((head) => head.id);
  }
}

export class Model extends ModelFrontend {
  private constructor(
    pack: LoadedPack,
    tokenizer: TextTokenizer,
    registry: AdapterRegistry,
    readonly engine: Engine,
    truncation: TruncationPolicy,
  ) {
    super(pack, tokenizer, registry, truncation, undefined);
  }

  static override async open(options: ModelOptions): Promise<Model> {
    const pack = await loadPack(options.packDir);
    const tokenizer = await TextTokenizer.load(pack.tokenizerPath, pack.maxLength);
    const registry = new AdapterRegistry(pack);
    const first = registry.compileCurrent();
    const backbone = await prepareBackbone(pack.dir, pack.manifest.name, pack.backbone, {
      ...(options.backboneCacheDir === undefined ? {} : { cacheDir: options.backboneCacheDir }),
      log: options.log ?? ((line) => process.stderr.write(`${line}\n`)),
    });
    const engine = await Engine.start(
      { ...options.engine, backbonePath: backbone.path },
      first.layout,
      first.bytes,
    );
    registry.attach(engine);
    return new Model(pack, tokenizer, registry, engine, options.truncation ?? 'truncate');
  }

  /** The engine's current layout (it changes when adapters are loaded or unloaded). */
  override get layout(): MixtureLayout {
    return this.engine.layout;
  }

  /** Run prepared items as one engine batch. Item errors (routing) reject the whole call. */
  async runPrepared(items: readonly PreparedItem[]): Promise<InferResult[]> {
    const outcome = await this.engine.run(items);
    return outcome.items.map((item, i) => {
      if (!item.ok) throw item.error;
      return toResult(item.result, items[i]!);
    });
  }

  /** Tokenize, route and run `request.inputs` in one batch. */
  async infer(request: InferRequest): Promise<InferResult[]> {
    return this.runPrepared(this.prepare(request));
  }

  close(): Promise<void> {
    return this.engine.close();
  }
}

/** Keep the requested tasks' outputs and attach the token accounting. */
export function toResult(result: EngineItemResult, item: PreparedItem): InferResult {
  const outputs =
    item.tasks === undefined
      ? result.outputs
      : Object.fromEntries(item.tasks.map((task) => [task, result.outputs[task]!]));
  return {
    routing: result.routing,
    outputs,
    embedding: result.embedding,
    tokens: item.ids.length,
    truncated: item.truncated,
  };
}
