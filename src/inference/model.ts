/**
 * A served model: the pack, its tokenizer, the adapter registry and the engine, wired together.
 * This is the one place that turns a user's request (texts plus routing wishes) into engine items
 * and engine results back into answers. The CLI calls it directly; the HTTP service puts its
 * batcher between `prepare` and the engine.
 */

import { AdapterRegistry } from '../adapters/registry.js';
import type { EngineItemResult, TaskOutput } from '../engine/decode.js';
import { Engine, type EngineOptions } from '../engine/engine.js';
import { type ItemRouting, planItem, type RoutingView } from '../engine/routing.js';
import { MoeError } from '../errors.js';
import { checkTokenizerFitsGates, type LoadedPack, loadPack } from '../pack/load.js';
import { prepareEngineGraph, slotGroupsOf } from './pack-graph-plan.js';
import { TextTokenizer, type TruncationPolicy } from './tokenizer.js';

export interface ModelOptions {
  /** Folder of the model pack (holds manifest.json). */
  readonly packDir: string;
  readonly engine?: EngineOptions;
  /**
   * Where a Hugging Face backbone's built graph is cached; default `<pack>/.cache/backbone`
   * (src/onnx/backbone-cache.ts).
   */
  readonly backboneCacheDir?: string;
  /** Progress of a backbone build (first start of a Hugging Face pack); default stderr. */
  readonly log?: (line: string) => void;
  /** What to do with inputs longer than the pack's max_length. Default 'truncate'. */
  readonly truncation?: TruncationPolicy;
  /**
   * Default false. true: the embedding output is what the pack's heads read, the pooled final state
   * before any L2 normalisation (models/README.md, "The forward pass"), for training heads
   * (src/tools/add-head.ts). With `pooling.normalize` that is another graph than the served one,
   * so a Hugging Face pack then needs its own `backboneCacheDir` (the default cache keeps one
   * graph per pack and would drop the served one).
   */
  readonly headInput?: boolean;
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
  /**
   * group id -> an adapter id to pin, or adapter id -> weight for an explicit mixture (weights
   * >= 0 summing to 1).
   */
  readonly adapters?: Readonly<Record<string, string | Readonly<Record<string, number>>>>;
  /** Adapter ids never to route to. */
  readonly exclude?: readonly string[];
  /** Adapters mixed in every gated group that is not pinned; default: each group's default_k. */
  readonly topK?: number;
  /** Top-p in every gated group that is not pinned; default: each group's default_top_p. */
  readonly topP?: number;
  /**
   * What the model id the client named (`<model>:<adapter>[+...]`, `<model>:<composition>`) or
   * the `composition` field fixes, resolved on the API node (compositions/model-ids.ts); kept
   * apart from `adapters` so that a conflict names it.
   */
  readonly composition?: RequestComposition;
}

/**
 * Routing a request takes from its model id or named composition. Fixed groups (pins, weights)
 * conflict with other fields that fix the same group differently (ROUTING_CONFLICT); the gate
 * settings (k, topP) apply to gated groups nothing else fixes, and the request's own top_k /
 * top_p override them.
 */
export interface RequestComposition {
  /** How the client named it (`demo:de`, `demo:iberian`, or the composition name). */
  readonly id: string;
  /** group id -> adapter pinned. */
  readonly pins?: Readonly<Record<string, string>>;
  /** group id -> adapter id -> weight (>= 0, summing to 1). */
  readonly weights?: Readonly<Record<string, Readonly<Record<string, number>>>>;
  /** group id -> most adapters to mix. */
  readonly k?: Readonly<Record<string, number>>;
  /** group id -> top-p in (0, 1]. */
  readonly topP?: Readonly<Record<string, number>>;
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
  ) {}

  /** Open the pack and its tokenizer only: no engine workers, no ORT sessions. */
  static async open(options: Pick<ModelOptions, 'packDir' | 'truncation'>): Promise<ModelFrontend> {
    const { pack, tokenizer } = await openPackAndTokenizer(options.packDir);
    const registry = new AdapterRegistry(pack, slotGroupsOf(pack));
    return new ModelFrontend(pack, tokenizer, registry, options.truncation ?? 'truncate');
  }

  /** What requests are validated against: the adapters the registry serves now. */
  get view(): RoutingView {
    return this.registry.view();
  }

  get name(): string {
    return this.pack.manifest.name;
  }

  /**
   * Validate the request's routing wishes and tokenize its inputs (off the JS thread; the work
   * per input is bounded by max_length, see TextTokenizer). Rejects with MoeError (4xx) for the
   * first problem; nothing is queued then.
   */
  async prepare(request: InferRequest): Promise<PreparedItem[]> {
    const { pins, weights, task } = this.choicesOf(request);
    const k: Record<string, number> = {};
    const topP: Record<string, number> = {};
    const preset = request.composition;
    for (const group of this.view.groups) {
      if (!group.gated || pins[group.id] !== undefined || weights[group.id] !== undefined) continue;
      const presetK = preset?.k?.[group.id];
      const presetTopP = preset?.topP?.[group.id];
      const groupK = request.topK ?? presetK;
      const groupTopP = request.topP ?? presetTopP;
      if (groupK !== undefined) k[group.id] = groupK;
      if (groupTopP !== undefined) topP[group.id] = groupTopP;
    }
    const routing: ItemRouting = {
      pins,
      weights,
      k,
      topP,
      ...(request.exclude === undefined ? {} : { exclude: request.exclude }),
    };
    // Fail fast, before anything is queued. The engine plans it again at dispatch against the
    // adapters then served (one may have been unloaded in between).
    planItem(this.view, routing);
    // Without a task, answer the heads whose adapter this routing really uses: a head trained on
    // its own task adapter says little when run through another one.
    const tasks = task === undefined ? this.headsServedBy(pins, weights) : [task];
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
    request.inputs.forEach((text, index) => {
      // A regex that stops at the first non-space, not a trim() that copies the whole text.
      if (!/\S/.test(text)) {
        throw new MoeError(
          'INPUT_EMPTY',
          `inputs[${index}] is empty; send text with at least one word.`,
          { field: `inputs[${index}]` },
        );
      }
    });
    const encoded = await this.tokenizer.encodeAll(request.inputs, this.truncation);
    return encoded.map((e) => ({ ids: e.ids, routing, truncated: e.truncated, tasks }));
  }

  /**
   * What a request fixes, per group, from every field that can: the model id (a composition
   * such as `demo:de`), `task` (the adapter its head pins), `language` and `adapters` (a pin, or
   * explicit weights). Two fields that ask different things of one group is ROUTING_CONFLICT (422)
   * naming both: running the article head through the theme adapter answers neither question.
   */
  private choicesOf(request: InferRequest): {
    pins: Record<string, string>;
    weights: Record<string, Readonly<Record<string, number>>>;
    task?: string;
  } {
    const chosen: Record<string, { adapter: string; field: string; says: string }> = {};
    const weights: Record<string, Readonly<Record<string, number>>> = {};
    /** Where each group's weights came from: a later field fixing the group conflicts. */
    const mixedBy: Record<string, { field: string; says: string }> = {};
    const pin = (group: string, adapter: string, field: string, says: string) => {
      const mixed = mixedBy[group];
      if (mixed !== undefined) {
        throw new MoeError(
          'ROUTING_CONFLICT',
          `Conflicting routing in group '${group}': ${mixed.says}, but ${says}; drop one of the two.`,
          { field, group, conflict: [mixed.field, field] },
        );
      }
      const earlier = chosen[group];
      if (earlier === undefined) {
        chosen[group] = { adapter, field, says };
      } else if (earlier.adapter !== adapter) {
        throw new MoeError(
          'ROUTING_CONFLICT',
          `Conflicting routing in group '${group}': ${earlier.says}, but ${says}; drop one of the two.`,
          { field, group, conflict: [earlier.field, field], adapters: [earlier.adapter, adapter] },
        );
      }
    };
    const composition = request.composition;
    for (const [group, adapter] of Object.entries(composition?.pins ?? {})) {
      pin(group, adapter, 'model', `model '${composition!.id}' pins ${group}=${adapter}`);
    }
    for (const [group, mixture] of Object.entries(composition?.weights ?? {})) {
      weights[group] = mixture;
      mixedBy[group] = { field: 'model', says: `'${composition!.id}' fixes a mixture` };
    }
    let task: string | undefined;
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
      task = head.id;
      if (head.pin !== undefined) {
        const { group, adapter } = head.pin;
        pin(group, adapter, 'task', `task '${head.id}' runs through ${group}=${adapter}`);
      }
    }
    if (request.language !== undefined) {
      if (!this.pack.groups.some((g) => g.id === 'language')) {
        throw new MoeError(
          'ROUTING_UNKNOWN_GROUP',
          `This model has no 'language' adapter group; drop 'language'.`,
          { field: 'language' },
        );
      }
      pin('language', request.language, 'language', `language asks for ${request.language}`);
    }
    for (const [group, choice] of Object.entries(request.adapters ?? {})) {
      if (typeof choice === 'string') {
        pin(group, choice, `adapters.${group}`, `adapters.${group} asks for ${choice}`);
        continue;
      }
      const earlier = chosen[group] ?? mixedBy[group];
      if (earlier !== undefined) {
        throw new MoeError(
          'ROUTING_CONFLICT',
          `Conflicting routing in group '${group}': ${earlier.says}, but adapters.${group} asks for a mixture; drop one of the two.`,
          { field: `adapters.${group}`, group, conflict: [earlier.field, `adapters.${group}`] },
        );
      }
      weights[group] = choice;
    }
    const pins = Object.fromEntries(Object.entries(chosen).map(([g, c]) => [g, c.adapter]));
    return task === undefined ? { pins, weights } : { pins, weights, task };
  }

  describe(): ModelDescription {
    return {
      id: this.name,
      version: this.pack.manifest.version,
      description: this.pack.manifest.description ?? '',
      hiddenSize: this.pack.hiddenSize,
      maxLength: this.pack.maxLength,
      groups: this.view.groups.map((g) => ({
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
  private headsServedBy(
    pins: Readonly<Record<string, string>>,
    weights: Readonly<Record<string, Readonly<Record<string, number>>>>,
  ): string[] {
    return this.pack.heads
      .filter((head) => {
        if (head.pin === undefined) return true;
        const group = this.view.groups.find((g) => g.id === head.pin!.group);
        const mixture = weights[head.pin.group];
        if (mixture !== undefined) return (mixture[head.pin.adapter] ?? 0) > 0;
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
    super(pack, tokenizer, registry, truncation);
  }

  static override async open(options: ModelOptions): Promise<Model> {
    const opened = await openPackAndTokenizer(options.packDir);
    const tokenizer = opened.tokenizer;
    const pack = options.headInput ? headInputView(opened.pack, options) : opened.pack;
    // The pack graph is built here, at start-up before anything listens; a Hugging Face
    // backbone's is built on the first start only (then it is cached).
    const graph = await prepareEngineGraph(pack, {
      ...(options.backboneCacheDir === undefined ? {} : { cacheDir: options.backboneCacheDir }),
      log: options.log ?? ((line) => process.stderr.write(`${line}\n`)),
    });
    const registry = new AdapterRegistry(pack, graph.groups);
    const engine = await Engine.start(options.engine ?? {}, graph);
    engine.setRoutingView(() => registry.view());
    try {
      await registry.attach(engine);
    } catch (error) {
      await engine.close();
      throw error;
    }
    return new Model(pack, tokenizer, registry, engine, options.truncation ?? 'truncate');
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
    return this.runPrepared(await this.prepare(request));
  }

  close(): Promise<void> {
    return this.engine.close();
  }
}

/**
 * The pack as the heads see it: the same routing and pooling, the embedding not normalised (heads
 * read `final`, the embedding output is `final / |final|` when pooling.normalize is set).
 */
function headInputView(pack: LoadedPack, options: ModelOptions): LoadedPack {
  if (!pack.pooling.normalize) return pack;
  if (pack.backbone.kind === 'huggingface' && options.backboneCacheDir === undefined) {
    throw new Error(
      'headInput on a pack that normalises its embeddings builds another graph: give it a backboneCacheDir of its own',
    );
  }
  return { ...pack, pooling: { ...pack.pooling, normalize: false } };
}

/** The pack and its tokenizer, with the checks that need both (token_bag gates cover the ids). */
async function openPackAndTokenizer(
  packDir: string,
): Promise<{ pack: LoadedPack; tokenizer: TextTokenizer }> {
  const pack = await loadPack(packDir);
  const tokenizer = await TextTokenizer.load(pack.tokenizerPath, pack.maxLength);
  checkTokenizerFitsGates(pack, tokenizer.vocabSize);
  return { pack, tokenizer };
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
