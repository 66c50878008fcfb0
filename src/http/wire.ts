/**
 * The one mapping from the wire to an `InferRequest`, for every route family: the native body
 * (/v1/infer, /v1/jobs), OpenAI's `input` + `routing` + model id, KServe's `text` tensor +
 * parameters + model name. The families differ in where the inputs and routing wishes sit; once
 * a route has read them into these shapes, this function is the only place that turns them into
 * the request the model prepares (and that checks nothing: validation is the model's).
 */
import type { Static } from 'typebox';
import type { InferRequest, RequestComposition } from '../inference/model.js';
import type { RoutingObject } from './schemas.js';

/** The routing fields as the wire spells them (snake_case), shared by every family. */
export type WireRouting = Static<typeof RoutingObject>;

/** Texts, or token ids of the model's vocabulary (content only) per input. */
export type WireInputs =
  | { readonly texts: readonly string[] }
  | { readonly tokenIds: readonly (readonly number[])[] };

/** The native body's `inputs`: texts, or token ids per input (exactly as given). */
export function nativeInputs(
  inputs: readonly string[] | readonly (readonly number[])[],
): WireInputs {
  return inputs.every((input) => Array.isArray(input))
    ? { tokenIds: inputs as readonly (readonly number[])[] }
    : { texts: inputs as readonly string[] };
}

export function toInferRequest(
  inputs: WireInputs,
  routing: WireRouting,
  composition?: RequestComposition,
): InferRequest {
  return {
    ...('texts' in inputs ? { inputs: inputs.texts } : { inputs: [], tokenIds: inputs.tokenIds }),
    ...(routing.task === undefined ? {} : { task: routing.task }),
    ...(routing.language === undefined ? {} : { language: routing.language }),
    ...(routing.adapters === undefined ? {} : { adapters: routing.adapters }),
    ...(routing.exclude === undefined ? {} : { exclude: routing.exclude }),
    ...(routing.top_k === undefined ? {} : { topK: routing.top_k }),
    ...(routing.top_p === undefined ? {} : { topP: routing.top_p }),
    ...(composition === undefined ? {} : { composition }),
  };
}
