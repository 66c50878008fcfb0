/**
 * Fit jobs: `POST /v1/compositions` with `fit` starts one here and answers 202 with its id; the
 * search (fit.ts) runs on this node, driving the model only through `Inference.infer`, so the
 * forward passes run where every request runs (engine workers, or queue workers) and this
 * thread only keeps the books. When the search is done, its weights are validated against the
 * adapters served then and stored as a composition (provenance 'fitted').
 *
 * Contracts
 * - At most `maxRunning` fits run on this node at once; one more is refused with FIT_BUSY (429,
 *   retry-after), never queued: a fit holds the engine for up to FIT_MAX_SECONDS.
 * - A job's state lives in a `FitJobStates`: process memory in embedded mode, Redis in queue mode
 *   (any API node answers GET /v1/jobs/{id}). A finished job is readable for the result TTL
 *   (JOB_RESULT_TTL_SECONDS).
 * - `close()` (shutdown) aborts every running fit; each ends as failed with FIT_CANCELLED, and
 *   `close()` resolves once all have ended.
 * - Progress is written at most every PROGRESS_WRITE_MS (Redis writes stay bounded).
 */
import { randomUUID } from 'node:crypto';
import { type ErrorCode, MoeError } from '../errors.js';
import type { Inference } from '../inference/service.js';
import { checkComposition, type Provenance, type StoredComposition } from './composition.js';
import { type FitOutcome, type FitProgress, type FitSpec, fitComposition } from './fit.js';
import type { CompositionStore } from './store.js';

/** Fit job ids start with this, which tells them from durable inference jobs at /v1/jobs/{id}. */
export const FIT_JOB_PREFIX = 'fit-';

export type FitJobState = 'waiting' | 'active' | 'completed' | 'failed';

export interface FitJobRecord {
  readonly id: string;
  readonly state: FitJobState;
  /** The composition the job stores. */
  readonly name: string;
  readonly task: string;
  readonly groups: readonly string[];
  readonly examples: number;
  readonly budget: FitSpec['budget'];
  /** ISO times. */
  readonly createdAt: string;
  readonly finishedAt: string | undefined;
  readonly progress: FitProgress | undefined;
  /** Set when completed. */
  readonly result:
    | (Pick<FitOutcome, 'before' | 'after' | 'evaluations' | 'elapsedMs' | 'stoppedBy'> & {
        readonly composition: { readonly name: string; readonly version: number };
        readonly weights: FitOutcome['weights'];
      })
    | undefined;
  /** Set when failed. */
  readonly error: ReturnType<MoeError['toJSON']> | undefined;
}

/** Where fit job states are kept; `save` (re)sets the result TTL. */
export interface FitJobStates {
  save(record: FitJobRecord): Promise<void>;
  get(id: string): Promise<FitJobRecord | undefined>;
  close(): Promise<void>;
}

/** Embedded mode: job states in this process, dropped `ttlMs` after their last write. */
export class MemoryFitJobStates implements FitJobStates {
  private readonly records = new Map<string, { record: FitJobRecord; expires: number }>();

  constructor(private readonly ttlMs: number) {}

  async save(record: FitJobRecord): Promise<void> {
    this.sweep();
    this.records.set(record.id, { record, expires: Date.now() + this.ttlMs });
  }

  async get(id: string): Promise<FitJobRecord | undefined> {
    this.sweep();
    return this.records.get(id)?.record;
  }

  async close(): Promise<void> {}

  private sweep(): void {
    const now = Date.now();
    for (const [id, { record, expires }] of this.records) {
      // A running job is never dropped: its writes are throttled, not its life.
      if (expires < now && (record.state === 'completed' || record.state === 'failed')) {
        this.records.delete(id);
      }
    }
  }
}

export interface FitJobsOptions {
  readonly inference: Pick<Inference, 'infer' | 'describe'>;
  readonly store: CompositionStore;
  readonly states: FitJobStates;
  /** FIT_MAX_RUNNING: fits running on this node at once. */
  readonly maxRunning: number;
  /** Errors that escape a job (its state could not be written). */
  readonly log?: (message: string, fields: Record<string, unknown>) => void;
}

/** What a client asked for: the validated fit, and the composition to store. */
export interface FitRequest {
  readonly name: string;
  readonly description: string;
  readonly spec: FitSpec;
}

const PROGRESS_WRITE_MS = 500;

export class FitJobs {
  private readonly running = new Map<
    string,
    { controller: AbortController; done: Promise<void> }
  >();
  private closing: Promise<void> | undefined;

  constructor(private readonly options: FitJobsOptions) {}

  /** Fits running on this node now. */
  get active(): number {
    return this.running.size;
  }

  /** Start a fit; resolves with its first state. FIT_BUSY (429) beyond `maxRunning`. */
  async start(request: FitRequest): Promise<FitJobRecord> {
    if (this.closing !== undefined) {
      throw new MoeError('DRAINING', 'The server is shutting down; start the fit on another node.');
    }
    if (this.running.size >= this.options.maxRunning) {
      throw new MoeError(
        'FIT_BUSY',
        `This node already runs ${this.running.size} composition fit(s), its limit (FIT_MAX_RUNNING=${this.options.maxRunning}); retry when one has finished.`,
        { retryAfterSeconds: Math.ceil(request.spec.budget.seconds / 2) || 1 },
      );
    }
    const { spec } = request;
    const record: FitJobRecord = {
      id: `${FIT_JOB_PREFIX}${randomUUID()}`,
      state: 'waiting',
      name: request.name,
      task: spec.task,
      groups: [...spec.groups],
      examples: spec.examples.length,
      budget: spec.budget,
      createdAt: new Date().toISOString(),
      finishedAt: undefined,
      progress: undefined,
      result: undefined,
      error: undefined,
    };
    const controller = new AbortController();
    // Reserve the slot before the first await: two POSTs at once cannot both pass the bound.
    const slot = { controller, done: Promise.resolve() };
    this.running.set(record.id, slot);
    try {
      await this.options.states.save(record);
    } catch (error) {
      this.running.delete(record.id);
      throw error;
    }
    slot.done = this.run(record, request, controller.signal).finally(() =>
      this.running.delete(record.id),
    );
    return record;
  }

  /** JOB_NOT_FOUND when there is no such fit job (or its result expired). */
  async status(id: string): Promise<FitJobRecord> {
    const record = await this.options.states.get(id);
    if (record === undefined) {
      throw new MoeError(
        'JOB_NOT_FOUND',
        `No job '${id}': it never existed, or it finished more than JOB_RESULT_TTL_SECONDS ago and its result was removed.`,
        { id },
      );
    }
    return record;
  }

  /** Abort every running fit and wait for them to end (idempotent). */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const runs = [...this.running.values()];
      for (const run of runs) run.controller.abort();
      await Promise.all(runs.map((run) => run.done));
    })();
    return this.closing;
  }

  private async run(base: FitJobRecord, request: FitRequest, signal: AbortSignal): Promise<void> {
    let record: FitJobRecord = { ...base, state: 'active' };
    let lastWrite = 0;
    let writing: Promise<void> = Promise.resolve();
    const write = (next: FitJobRecord) => {
      record = next;
      writing = writing
        .then(() => this.options.states.save(next))
        .catch((error: unknown) =>
          this.options.log?.('could not write a fit job state', { id: next.id, error: `${error}` }),
        );
      return writing;
    };
    try {
      await write(record);
      const outcome = await fitComposition(this.options.inference, request.spec, {
        signal,
        onProgress: (progress) => {
          const now = performance.now();
          if (now - lastWrite < PROGRESS_WRITE_MS) {
            record = { ...record, progress };
            return;
          }
          lastWrite = now;
          void write({ ...record, progress });
        },
      });
      if (signal.aborted) throw cancelled();
      const stored = await this.store(request, outcome, base.id);
      await write({
        ...record,
        state: 'completed',
        finishedAt: new Date().toISOString(),
        result: {
          before: outcome.before,
          after: outcome.after,
          evaluations: outcome.evaluations,
          elapsedMs: outcome.elapsedMs,
          stoppedBy: outcome.stoppedBy,
          weights: outcome.weights,
          composition: { name: stored.name, version: stored.version },
        },
      });
    } catch (caught) {
      const error = signal.aborted ? cancelled() : asMoeError(caught);
      await write({
        ...record,
        state: 'failed',
        finishedAt: new Date().toISOString(),
        error: error.toJSON(),
      });
    }
  }

  /** Validate the fitted weights against the adapters served now, and store them. */
  private async store(
    request: FitRequest,
    outcome: FitOutcome,
    jobId: string,
  ): Promise<StoredComposition> {
    const groups = Object.fromEntries(
      Object.entries(outcome.weights).map(([group, weights]) => [group, { weights }]),
    );
    const definition = checkComposition(this.options.inference.describe(), {
      name: request.name,
      description: request.description,
      groups,
    });
    const { spec } = request;
    const provenance: Provenance = {
      kind: 'fitted',
      jobId,
      task: spec.task,
      groups: [...spec.groups],
      examples: spec.examples.length,
      budget: spec.budget,
      before: outcome.before,
      after: outcome.after,
      evaluations: outcome.evaluations,
      elapsedMs: outcome.elapsedMs,
      stoppedBy: outcome.stoppedBy,
    };
    return (await this.options.store.put(definition, provenance)).stored;
  }
}

function cancelled(): MoeError {
  return new MoeError(
    'FIT_CANCELLED',
    'The fit was cancelled because the server shut down; nothing was stored. Start it again.',
  );
}

function asMoeError(error: unknown): MoeError {
  if (error instanceof MoeError) return error;
  const code: ErrorCode = 'INTERNAL';
  return new MoeError(code, `The fit failed: ${error instanceof Error ? error.message : error}`);
}
