/**
 * Command line: run texts through a model pack and print, for each input, one JSON object per line
 * with how it was routed and what each task head says. Nothing else goes to stdout (progress and
 * errors go to stderr), so the output can be piped into `jq`.
 *
 *   npm run --silent infer -- [--pack DIR] [--language ID] [--task ID] [--adapter GROUP=ID]...
 *                             [--exclude ID]... [--top-k N] [--embedding] "text" ...
 */
import { parseArgs } from 'node:util';
import { MoeError } from '../errors.js';
import { Model } from '../inference/model.js';
import { DEFAULT_PACK_DIR, ensurePack } from './default-pack.js';

const USAGE = `usage: npm run --silent infer -- [options] "text" ...
  --pack DIR          model pack folder (default ${DEFAULT_PACK_DIR}, built on first use)
  --language ID       pin this adapter in the 'language' group
  --task ID           return only this task's output (and use the adapter its head pins)
  --adapter GROUP=ID  pin adapter ID in group GROUP (repeatable)
  --exclude ID        never route to adapter ID (repeatable)
  --top-k N           adapters mixed in each gated group that is not pinned
  --truncation MODE   truncate (default) or reject inputs longer than the model's limit
  --embedding         print each input's embedding too (always, for a pack without heads)`;

async function main(): Promise<number> {
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse();
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help === true || positionals.length === 0) {
    process.stderr.write(`${USAGE}\n`);
    return values.help === true ? 0 : 2;
  }
  const adapters: Record<string, string> = {};
  for (const pair of values.adapter ?? []) {
    const [group, id] = pair.split('=');
    if (!group || !id) {
      process.stderr.write(`--adapter takes GROUP=ID, got '${pair}'\n`);
      return 2;
    }
    adapters[group] = id;
  }
  const topK = values['top-k'] === undefined ? undefined : Number(values['top-k']);
  const truncation = values.truncation ?? 'truncate';
  if (truncation !== 'truncate' && truncation !== 'reject') {
    process.stderr.write(`--truncation must be 'truncate' or 'reject', got '${truncation}'\n`);
    return 2;
  }

  const packDir = await ensurePack(values.pack, (line) => process.stderr.write(`${line}\n`));
  const model = await Model.open({ packDir, truncation, engine: { workers: 1 } });
  try {
    const results = await model.infer({
      inputs: positionals,
      ...(values.task === undefined ? {} : { task: values.task }),
      ...(values.language === undefined ? {} : { language: values.language }),
      ...(Object.keys(adapters).length === 0 ? {} : { adapters }),
      ...(values.exclude === undefined ? {} : { exclude: values.exclude }),
      ...(topK === undefined ? {} : { topK }),
    });
    const withEmbedding = values.embedding === true || model.pack.heads.length === 0;
    results.forEach((result, i) => {
      const line = {
        input: positionals[i],
        routing: Object.fromEntries(
          Object.entries(result.routing).map(([group, chosen]) => [
            group,
            chosen.map((c) => ({ adapter: c.adapter, weight: round(c.weight) })),
          ]),
        ),
        outputs: Object.fromEntries(
          Object.entries(result.outputs).map(([task, out]) => [
            task,
            { label: out.label, score: round(out.score) },
          ]),
        ),
        ...(result.truncated ? { truncated: true } : {}),
        ...(withEmbedding ? { embedding: Array.from(result.embedding, round) } : {}),
      };
      process.stdout.write(`${JSON.stringify(line)}\n`);
    });
    return 0;
  } catch (error) {
    if (error instanceof MoeError) {
      process.stderr.write(`error ${error.code}: ${error.message}\n`);
      return 1;
    }
    throw error;
  } finally {
    await model.close();
  }
}

function parse() {
  return parseArgs({
    allowPositionals: true,
    options: {
      pack: { type: 'string' },
      language: { type: 'string' },
      task: { type: 'string' },
      adapter: { type: 'string', multiple: true },
      exclude: { type: 'string', multiple: true },
      'top-k': { type: 'string' },
      truncation: { type: 'string' },
      embedding: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
}

function round(x: number): number {
  return Math.round(x * 1e4) / 1e4;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
    process.exitCode = 1;
  },
);
