/**
 * The one error catalogue. Every error a user can see carries a stable `code` from this table, the
 * HTTP status it maps to, and a message that says what to fix. Modules throw `MoeError`; the HTTP
 * layer (one error handler) turns it into the response format of the route family.
 */
export const ERROR_CATALOGUE = {
  // Request input
  INPUT_INVALID: { status: 400, summary: 'The request body or a parameter is invalid.' },
  INPUT_MALFORMED_JSON: { status: 400, summary: 'The request body is not valid JSON.' },
  INPUT_UNSUPPORTED_MEDIA_TYPE: {
    status: 415,
    summary: 'The request body has a content type the route does not take.',
  },
  INPUT_BODY_TOO_LARGE: {
    status: 413,
    summary: 'The request body is larger than the server accepts.',
  },
  INPUT_TOO_MANY: {
    status: 413,
    summary: 'The request has more inputs than the server accepts at once.',
  },
  INPUT_TOO_LONG: { status: 413, summary: 'An input has more tokens than the model accepts.' },
  INPUT_TOTAL_TOO_LONG: {
    status: 413,
    summary: 'The inputs of one request have more characters in total than the server accepts.',
  },
  INPUT_EMPTY: { status: 422, summary: 'An input text is empty.' },
  // Routing
  ROUTING_UNKNOWN_GROUP: {
    status: 422,
    summary: 'The request names an adapter group the model lacks.',
  },
  ROUTING_UNKNOWN_ADAPTER: {
    status: 422,
    summary: 'The request names an adapter that is not loaded.',
  },
  ROUTING_UNKNOWN_TASK: {
    status: 422,
    summary: 'The request names a task the model has no head for.',
  },
  ROUTING_INVALID_K: { status: 422, summary: 'top-k is outside 1..(adapters in the group).' },
  ROUTING_NO_ADAPTER_LEFT: { status: 422, summary: 'Excludes leave a group with no adapter.' },
  ROUTING_PIN_REQUIRED: { status: 422, summary: 'A group without a gate needs an adapter pinned.' },
  ROUTING_CONFLICT: {
    status: 422,
    summary: 'Two routing fields of the request ask different things of one group.',
  },
  ROUTING_INVALID_WEIGHTS: {
    status: 422,
    summary: 'Explicit adapter weights are negative or do not sum to 1.',
  },
  ROUTING_INVALID_TOP_P: { status: 422, summary: 'top-p is outside (0, 1].' },
  // Adapter registry
  ADAPTER_NOT_FOUND: { status: 404, summary: 'No adapter with this id is registered.' },
  ADAPTER_INVALID: { status: 422, summary: 'The adapter folder is not a valid adapter.' },
  ADAPTER_BUSY: { status: 409, summary: 'The adapter is being loaded or unloaded.' },
  ADAPTER_LAST_IN_GROUP: { status: 409, summary: 'A group must keep at least one adapter.' },
  ADAPTER_IN_USE: {
    status: 409,
    summary: 'The adapter is a default of its group or pinned by a task; it cannot be unloaded.',
  },
  ADAPTER_SLOTS_FULL: {
    status: 409,
    summary: 'Every slot of the group holds an adapter its gate can choose; unload one first.',
  },
  ADAPTER_SLOTS_BUSY: {
    status: 503,
    summary: 'No slot can take the adapter right now (all hold adapters in use); retry shortly.',
  },
  ADAPTER_USED_BY_COMPOSITION: {
    status: 409,
    summary:
      'Named compositions use the adapter; delete or replace them first, or unload with force=true.',
  },
  // Named compositions (src/compositions/)
  COMPOSITION_INVALID: {
    status: 422,
    summary: 'A composition field is invalid (weights, groups, k, top-p); the field is named.',
  },
  COMPOSITION_UNKNOWN_ADAPTER: {
    status: 422,
    summary: 'A composition names an adapter that is not loaded in that group.',
  },
  COMPOSITION_NAME_TAKEN: {
    status: 409,
    summary: 'The composition name is the model id or a loaded adapter id.',
  },
  COMPOSITION_NOT_FOUND: { status: 404, summary: 'No composition with this name.' },
  COMPOSITION_BROKEN: {
    status: 422,
    summary:
      'The composition names an adapter that was unloaded since (force); load it again or replace the composition.',
  },
  COMPOSITION_STORE_FAILED: {
    status: 500,
    summary: 'The composition could not be stored; nothing changed.',
  },
  FIT_INVALID: {
    status: 422,
    summary:
      'A field of the fit request is invalid (unknown task, group or label, too many examples, a budget over the limits); the field is named.',
  },
  FIT_BUSY: {
    status: 429,
    summary: 'This node runs as many composition fits as it may (FIT_MAX_RUNNING); retry later.',
  },
  FIT_CANCELLED: {
    status: 503,
    summary: 'The fit was cancelled because the server shut down; start it again.',
  },
  // Admission and deadlines
  OVERLOADED: { status: 429, summary: 'Too much work is queued; retry after the delay given.' },
  REQUEST_TIMEOUT: { status: 504, summary: 'The request was not answered before its deadline.' },
  DRAINING: { status: 503, summary: 'The server is shutting down and takes no new work.' },
  // nginx's convention; the client never sees it (it left), but logs and metrics do.
  CLIENT_CLOSED: { status: 499, summary: 'The client closed the connection before the answer.' },
  // Queue mode (QUEUE=redis)
  QUEUE_UNAVAILABLE: { status: 503, summary: 'Redis, which queue mode needs, cannot be reached.' },
  QUEUE_MODE_REQUIRED: { status: 501, summary: 'The route needs queue mode (QUEUE=redis).' },
  QUEUE_MODE_UNSUPPORTED: { status: 501, summary: 'The route is not available in queue mode.' },
  JOB_NOT_FOUND: { status: 404, summary: 'No job with this id (or its result has expired).' },
  ADAPTERS_SYNCING: {
    status: 503,
    summary: 'The worker has not applied the adapter change the request was checked against yet.',
  },
  // Routes and access
  ROUTE_NOT_FOUND: { status: 404, summary: 'No route matches the method and path.' },
  MODEL_NOT_FOUND: {
    status: 404,
    summary: 'The request names a model id the server does not serve.',
  },
  ADMIN_UNAUTHORIZED: { status: 401, summary: 'The admin API key is missing or wrong.' },
  ADMIN_DISABLED: {
    status: 403,
    summary: 'Admin routes are disabled: no admin API key is configured.',
  },
  ADAPTER_PATH_FORBIDDEN: {
    status: 403,
    summary: 'Adapter folders must be inside the configured adapter root.',
  },
  // Engine
  ENGINE_WORKER_CRASHED: { status: 503, summary: 'The engine worker running the batch died.' },
  ENGINE_CLOSED: { status: 503, summary: 'The engine is shutting down.' },
  ENGINE_TIMEOUT: {
    status: 503,
    summary: 'The engine did not finish in time; its worker is being replaced.',
  },
  ENGINE_FAILED: { status: 500, summary: 'The engine failed to run a batch.' },
  INTERNAL: { status: 500, summary: 'An unexpected server error; the log has the details.' },
  ENGINE_PROVIDER_UNAVAILABLE: { status: 500, summary: 'The execution provider cannot start.' },
} as const satisfies Record<string, { status: number; summary: string }>;

export type ErrorCode = keyof typeof ERROR_CATALOGUE;

export class MoeError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  /** Machine-readable context, e.g. `{ field: 'inputs[3]', choices: [...] }`. */
  readonly details: Readonly<Record<string, unknown>> | undefined;

  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>) {
    super(message);
    this.name = 'MoeError';
    this.code = code;
    this.status = ERROR_CATALOGUE[code].status;
    this.details = details;
  }

  /** Plain form for crossing a thread boundary (structured clone drops the class). */
  toJSON(): { code: ErrorCode; message: string; details?: Record<string, unknown> } {
    return this.details === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, details: { ...this.details } };
  }
}
