/**
 * Container health check (the Dockerfile's HEALTHCHECK; the images have no curl): exit 0 when this
 * container's server answers GET /health/ready with 200 within 4 s, else 1 with the reason on
 * stderr. The API role serves it on PORT; `--worker` checks a queue worker's ops server on
 * WORKER_METRICS_PORT instead.
 *
 *   node dist/src/tools/healthcheck.js [--worker]
 */
import { parseArgs } from 'node:util';
import { loadConfig } from '../config.js';

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { worker: { type: 'boolean', default: false } } });
  const config = loadConfig();
  const port = values.worker ? config.WORKER_METRICS_PORT : config.PORT;
  if (port === undefined || port === 0) {
    process.stderr.write('healthcheck: the worker serves no fixed port; set WORKER_METRICS_PORT\n');
    return 1;
  }
  const url = `http://127.0.0.1:${port}/health/ready`;
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(4000) });
    const body = await response.text();
    if (response.status === 200) return 0;
    process.stderr.write(`healthcheck: ${url} answered ${response.status}: ${body}\n`);
  } catch (error) {
    process.stderr.write(`healthcheck: ${url}: ${(error as Error).message}\n`);
  }
  return 1;
}

process.exitCode = await main();
