/**
 * The wire form (snake_case) of a stored composition and of a fit job, shared by the
 * composition routes, the model cards and GET /v1/jobs/{id}.
 */
import type { StoredComposition } from '../compositions/composition.js';
import type { FitJobRecord } from '../compositions/fit-jobs.js';
import type { CompositionBody } from './composition-schemas.js';

/** `model`: the served model's id and its groups (for the missing adapters), when known. */
export function compositionJson(
  composition: StoredComposition,
  model?: {
    readonly id: string;
    readonly groups: readonly { readonly adapters: readonly string[] }[];
  },
): CompositionBody {
  const loaded = new Set(model?.groups.flatMap((g) => g.adapters) ?? []);
  const missing =
    model === undefined
      ? []
      : Object.values(composition.groups).flatMap((g) =>
          g.kind === 'weights' ? Object.keys(g.weights).filter((id) => !loaded.has(id)) : [],
        );
  const p = composition.provenance;
  return {
    name: composition.name,
    model: model === undefined ? composition.name : `${model.id}:${composition.name}`,
    description: composition.description,
    version: composition.version,
    created_at: composition.createdAt,
    updated_at: composition.updatedAt,
    groups: Object.fromEntries(
      Object.entries(composition.groups).map(([group, entry]) => [
        group,
        entry.kind === 'weights'
          ? { weights: { ...entry.weights } }
          : {
              gate: {
                ...(entry.k === undefined ? {} : { k: entry.k }),
                ...(entry.topP === undefined ? {} : { top_p: entry.topP }),
                ...(entry.kMax === undefined ? {} : { k_max: entry.kMax }),
              },
            },
      ]),
    ),
    provenance:
      p.kind === 'manual'
        ? { kind: 'manual' as const }
        : {
            kind: 'fitted' as const,
            job_id: p.jobId,
            task: p.task,
            groups: [...p.groups],
            examples: p.examples,
            budget: { ...p.budget },
            before: { ...p.before },
            after: { ...p.after },
            evaluations: p.evaluations,
            elapsed_ms: p.elapsedMs,
            stopped_by: p.stoppedBy,
          },
    missing_adapters: missing,
  };
}

export function fitJobJson(job: FitJobRecord) {
  return {
    id: job.id,
    kind: 'composition_fit' as const,
    state: job.state,
    created_at: job.createdAt,
    finished_at: job.finishedAt ?? null,
    composition: job.name,
    task: job.task,
    groups: [...job.groups],
    examples: job.examples,
    budget: { ...job.budget },
    ...(job.progress === undefined
      ? {}
      : {
          progress: {
            evaluations: job.progress.evaluations,
            budget_evaluations: job.progress.budgetEvaluations,
            elapsed_ms: job.progress.elapsedMs,
            best: { ...job.progress.best },
          },
        }),
    ...(job.result === undefined
      ? {}
      : {
          result: {
            before: { ...job.result.before },
            after: { ...job.result.after },
            evaluations: job.result.evaluations,
            elapsed_ms: job.result.elapsedMs,
            stopped_by: job.result.stoppedBy,
            weights: job.result.weights as Record<string, Record<string, number>>,
            composition: { ...job.result.composition },
          },
        }),
    ...(job.error === undefined ? {} : { error: job.error }),
  };
}
