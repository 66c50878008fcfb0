/**
 * Every Prometheus metric the server exports, defined in one place (the only importer of
 * prom-client besides the /metrics route, which asks this module for the text).
 *
 * Conventions: base units (seconds, bytes), counters end in `_total`, label values are bounded
 * (routes are templates, statuses are numbers, adapters and groups come from the registry).
 */
import client from 'prom-client';

const LATENCY_BUCKETS = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
];

export class Metrics {
  readonly registry = new client.Registry();

  readonly httpRequests = new client.Counter({
    name: 'moe_http_requests_total',
    help: 'HTTP requests answered, by route template, method and status code.',
    labelNames: ['route', 'method', 'status'] as const,
    registers: [this.registry],
  });

  readonly httpDuration = new client.Histogram({
    name: 'moe_http_request_duration_seconds',
    help: 'Time from receiving an HTTP request to sending its answer.',
    labelNames: ['route', 'method', 'status'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });

  readonly queueDepth = new client.Gauge({
    name: 'moe_queue_depth_items',
    help: 'Items admitted and waiting for a batch.',
    registers: [this.registry],
  });

  readonly rejected = new client.Counter({
    name: 'moe_requests_rejected_total',
    help: 'Requests refused before running, by reason (overloaded, timeout, draining, client_gone).',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  readonly batchSize = new client.Histogram({
    name: 'moe_batch_size_items',
    help: 'Items per engine batch.',
    buckets: [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256],
    registers: [this.registry],
  });

  readonly batchTokens = new client.Histogram({
    name: 'moe_batch_tokens',
    help: 'Padded tokens per engine batch (items x longest item).',
    buckets: [16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768],
    registers: [this.registry],
  });

  readonly batchPaddingRatio = new client.Histogram({
    name: 'moe_batch_padding_ratio',
    help: 'Share of padded tokens that are padding, per batch.',
    buckets: [0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1],
    registers: [this.registry],
  });

  readonly stageDuration = new client.Histogram({
    name: 'moe_stage_duration_seconds',
    help: 'Time per stage of the request path: tokenize, queue (per item), forward (the model run, per batch).',
    labelNames: ['stage'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });

  readonly inputTokens = new client.Counter({
    name: 'moe_input_tokens_total',
    help: 'Tokens of the inputs run through the model (special tokens included).',
    registers: [this.registry],
  });

  readonly adapterSelections = new client.Counter({
    name: 'moe_adapter_selections_total',
    help: 'Times an adapter was mixed into an item, by group and adapter.',
    labelNames: ['group', 'adapter'] as const,
    registers: [this.registry],
  });

  readonly adapterWeight = new client.Counter({
    name: 'moe_adapter_weight_total',
    help: 'Summed routing weight given to an adapter, by group and adapter (its share of the traffic).',
    labelNames: ['group', 'adapter'] as const,
    registers: [this.registry],
  });

  readonly gateEntropy = new client.Histogram({
    name: 'moe_gate_entropy_nats',
    help: "Entropy of a gated group's gate distribution over all its experts, per item, before any request pin or exclude (0: certain; ln E: no idea).",
    labelNames: ['group'] as const,
    buckets: [0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 1, 1.5, 2, 3],
    registers: [this.registry],
  });

  readonly gateMargin = new client.Histogram({
    name: 'moe_gate_margin',
    help: "Top-1 minus top-2 probability of a gated group's gate, per item (near 0: the gate hesitates between two adapters).",
    labelNames: ['group'] as const,
    buckets: [0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.99, 1],
    registers: [this.registry],
  });

  readonly routedExperts = new client.Histogram({
    name: 'moe_routed_experts',
    help: 'Adapters mixed for an item in a group (k after top-p, pins and explicit weights).',
    labelNames: ['group'] as const,
    // One bucket per k up to 8, so the distribution of k (top-p's point) reads exactly.
    buckets: [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 32],
    registers: [this.registry],
  });

  readonly adapterOperations = new client.Counter({
    name: 'moe_adapter_operations_total',
    help: 'Adapter loads and unloads, by operation and result.',
    labelNames: ['operation', 'result'] as const,
    registers: [this.registry],
  });

  readonly adapterOperationDuration = new client.Histogram({
    name: 'moe_adapter_operation_duration_seconds',
    help: 'Time to load or unload an adapter: read and check the folder, write it into a slot in every engine worker.',
    labelNames: ['operation'] as const,
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });

  readonly adaptersLoaded = new client.Gauge({
    name: 'moe_adapters_loaded',
    help: 'Adapters served, by group.',
    labelNames: ['group'] as const,
    registers: [this.registry],
  });

  readonly adapterSlots = new client.Gauge({
    name: 'moe_adapter_slots',
    help: "Engine slots of a group: 'capacity', and 'used' by adapters (the rest of the group's adapters wait in the host cache).",
    labelNames: ['group', 'state'] as const,
    registers: [this.registry],
  });

  readonly adapterSlotMisses = new client.Counter({
    name: 'moe_adapter_slot_misses_total',
    help: 'Batches that needed an adapter not in a slot, which was then written into one (evicting the least recently used).',
    labelNames: ['group'] as const,
    registers: [this.registry],
  });

  readonly workerRestarts = new client.Counter({
    name: 'moe_engine_worker_restarts_total',
    help: 'Engine worker threads restarted after they died.',
    registers: [this.registry],
  });

  readonly engineWorkers = new client.Gauge({
    name: 'moe_engine_workers',
    help: 'Engine worker threads configured.',
    registers: [this.registry],
  });

  readonly executionProvider = new client.Gauge({
    name: 'moe_execution_provider_info',
    help: 'The execution provider the engine really runs on (value 1), and the one configured.',
    labelNames: ['provider', 'requested'] as const,
    registers: [this.registry],
  });

  readonly buildInfo = new client.Gauge({
    name: 'moe_model_info',
    help: 'The model pack served (value 1).',
    labelNames: ['model', 'version'] as const,
    registers: [this.registry],
  });

  // --- queue mode (QUEUE=redis): API nodes report the queue, workers report their jobs ---------

  readonly queueJobs = new client.Gauge({
    name: 'moe_queue_jobs',
    help: 'Jobs in the Redis queue by state (waiting, active, delayed, failed), read at scrape time.',
    labelNames: ['state'] as const,
    registers: [this.registry],
  });

  readonly jobWaitDuration = new client.Histogram({
    name: 'moe_queue_job_wait_seconds',
    help: 'Worker role: time from a job being queued to a worker taking it (per attempt).',
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });

  readonly jobRunDuration = new client.Histogram({
    name: 'moe_queue_job_run_seconds',
    help: 'Worker role: time a worker spent on a job, batching included.',
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });

  readonly jobsProcessed = new client.Counter({
    name: 'moe_queue_jobs_processed_total',
    help: 'Worker role: job attempts finished, by result (completed, failed, expired: past its deadline, not run).',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  readonly jobRetries = new client.Counter({
    name: 'moe_queue_job_retries_total',
    help: 'Worker role: jobs taken again after a failed attempt or a stall.',
    registers: [this.registry],
  });

  readonly jobsStalled = new client.Counter({
    name: 'moe_queue_jobs_stalled_total',
    help: 'Worker role: jobs whose worker stopped renewing their lock (died or blocked), moved back to the queue by this worker.',
    registers: [this.registry],
  });

  readonly jobsFetched = new client.Histogram({
    name: 'moe_queue_fetch_jobs',
    help: 'Worker role: jobs taken from Redis per round trip (a worker takes jobs in bulk).',
    buckets: [0, 1, 2, 4, 8, 16, 32, 64, 128],
    registers: [this.registry],
  });

  readonly replies = new client.Counter({
    name: 'moe_queue_replies_total',
    help: "API role: replies read from this node's reply stream, by outcome (answered: settled a waiting request; late: its request was answered already, e.g. a job that ran twice, or timed out).",
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });

  readonly registryVersion = new client.Gauge({
    name: 'moe_adapter_registry_version',
    help: 'Queue mode: the adapter registry version this process has applied in full.',
    registers: [this.registry],
  });

  readonly registrySynced = new client.Gauge({
    name: 'moe_adapter_registry_synced',
    help: 'Queue mode: 1 while this process serves the registry state in Redis, 0 while it cannot apply it.',
    registers: [this.registry],
  });

  private readonly collectors: (() => void | Promise<void>)[] = [];

  constructor() {
    // Node's process metrics, event-loop lag (nodejs_eventloop_lag_seconds) among them.
    client.collectDefaultMetrics({ register: this.registry });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /**
   * Run `collect` before every scrape, to set gauges that mirror live state. An async collector
   * is awaited; it must bound its own time and not throw (the scrape waits for it).
   */
  onCollect(collect: () => void | Promise<void>): void {
    this.collectors.push(collect);
  }

  async text(): Promise<string> {
    await Promise.all(this.collectors.map((collect) => collect()));
    return this.registry.metrics();
  }
}
