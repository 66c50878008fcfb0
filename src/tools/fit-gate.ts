/**
 * Fits a token_bag gate for one group of an existing pack from labelled text, and writes the gate
 * file and the group's manifest entry:
 *
 *   node dist/src/tools/fit-gate.js --pack DIR --group ID --data DIR [--out FILE] [--width 32]
 *     [--buckets 0] [--epochs N] [--lr 0.5] [--copies 4] [--heldout 0.1] [--seed 1]
 *
 * `--data` holds one folder per adapter of the group, named by the adapter id, with .txt files of
 * one example per line (blank lines skipped); every adapter of the group needs examples. Each line
 * is tokenized by the pack's own tokenizer (special tokens and truncation as served), a share of
 * each adapter's lines (`--heldout`, seeded shuffle) is kept out to measure the gate, and the rest
 * trains it (src/demo/token-bag.ts), with `--copies` extra copies of each line cut to a random run
 * of 2-8 words (short input routes better when the gate has seen some). The gate goes to `--out`
 * (default gates/<group>.token_bag.safetensors, relative to the pack), the manifest's group gets
 * `gate: {type: 'token_bag', ...}` (an ungated group loses its default_adapter, which only ungated
 * groups may have), and the pack is loaded again to check it. The file of a replaced gate is left
 * where it was, no longer referenced. A JSON summary goes to stdout, progress to stderr.
 */
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import {
  exportTokenBag,
  type TokenBagExample,
  tokenBagGateLogits,
  trainTokenBag,
} from '../demo/token-bag.js';
import { TextTokenizer } from '../inference/tokenizer.js';
import { checkTokenizerFitsGates, loadPack } from '../pack/load.js';
import { MANIFEST_FILE, type Manifest } from '../pack/manifest.js';
import { writeSafetensors } from '../pack/safetensors.js';
import { Random } from '../util/random.js';
import { readTextLines } from './labelled-text.js';

export interface FitGateOptions {
  readonly pack: string;
  readonly group: string;
  readonly data: string;
  /** Gate file, relative to the pack; default gates/<group>.token_bag.safetensors. */
  readonly out?: string;
  readonly width?: number;
  readonly buckets?: number;
  /** Default: enough for about 50,000 SGD steps, 5 to 100. */
  readonly epochs?: number;
  readonly lr?: number;
  /** Extra copies of each training line cut to 2-8 words. */
  readonly copies?: number;
  /** Share of each adapter's lines kept out of training to measure the gate. */
  readonly heldout?: number;
  readonly seed?: number;
  readonly log?: (line: string) => void;
}

export interface FitGateResult {
  readonly group: string;
  readonly file: string;
  readonly experts: readonly string[];
  readonly examples: Readonly<Record<string, { train: number; heldout: number }>>;
  /** Top-1 on the held-out lines (null when none are held out). */
  readonly heldoutAccuracy: number | null;
  /** Top-1 on the training lines (without their cut copies). */
  readonly trainAccuracy: number;
  readonly trainingLoss: number;
  readonly settings: Readonly<Record<string, number>>;
}

const CROP = { min: 2, max: 8 };

/** A random run of CROP.min..CROP.max whitespace-separated words of `text` (all of it if short). */
function crop(text: string, rng: Random): string {
  const words = text.split(/\s+/);
  if (words.length <= CROP.max) return text;
  const length = CROP.min + rng.int(CROP.max - CROP.min + 1);
  const start = rng.int(words.length - length + 1);
  return words.slice(start, start + length).join(' ');
}

function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i]! > values[best]!) best = i;
  return best;
}

export async function fitTokenBagGate(options: FitGateOptions): Promise<FitGateResult> {
  const log = options.log ?? (() => {});
  const settings = {
    width: options.width ?? 32,
    buckets: options.buckets ?? 0,
    epochs: options.epochs ?? 0, // 0: chosen from the data below
    lr: options.lr ?? 0.5,
    copies: options.copies ?? 4,
    heldout: options.heldout ?? 0.1,
    seed: options.seed ?? 1,
  };
  if (!(settings.heldout >= 0 && settings.heldout < 1)) {
    throw new Error(`--heldout must be in [0, 1), got ${settings.heldout}`);
  }
  const pack = await loadPack(options.pack);
  const group = pack.groups.find((g) => g.id === options.group);
  if (group === undefined) {
    throw new Error(
      `pack ${options.pack} has no group '${options.group}' (groups: ${pack.groups.map((g) => g.id).join(', ')})`,
    );
  }
  const experts = group.adapters.map((a) => a.id);
  const folders = (await readdir(options.data, { withFileTypes: true }))
    .filter((e) => e.isDirectory())
    .map((e) => e.name);
  const unknown = folders.filter((f) => !experts.includes(f));
  if (unknown.length > 0) {
    throw new Error(
      `${options.data}: folders ${unknown.join(', ')} are not adapters of group '${group.id}' (${experts.join(', ')})`,
    );
  }
  const tokenizer = await TextTokenizer.load(pack.tokenizerPath, pack.maxLength);
  const rng = new Random(settings.seed);
  const train: TokenBagExample[] = []; // the lines and their cut copies
  const lines: TokenBagExample[] = []; // the training lines alone
  const heldout: TokenBagExample[] = [];
  const counts: Record<string, { train: number; heldout: number }> = {};
  const encode = async (text: string) => (await tokenizer.encode(text, 'truncate')).ids;
  for (const [label, id] of experts.entries()) {
    const dir = join(options.data, id);
    const texts = folders.includes(id) ? (await readTextLines(dir)).lines : [];
    if (texts.length === 0) {
      throw new Error(
        `${dir}: no examples for adapter '${id}'; every adapter of group '${group.id}' needs a folder of .txt files, one example per line`,
      );
    }
    const order = rng.shuffle(texts.map((_, i) => i));
    const kept = Math.min(Math.round(texts.length * settings.heldout), texts.length - 1);
    for (const i of order.slice(0, kept)) heldout.push({ ids: await encode(texts[i]!), label });
    for (const i of order.slice(kept)) {
      const example = { ids: await encode(texts[i]!), label };
      lines.push(example);
      train.push(example);
      for (let c = 0; c < settings.copies; c++) {
        train.push({ ids: await encode(crop(texts[i]!, rng)), label });
      }
    }
    counts[id] = { train: texts.length - kept, heldout: kept };
  }
  // Default: enough epochs for about 50,000 SGD steps (5 to 100): a few thousand lines need the 5
  // fastText uses, a few dozen need many more to fit at all.
  if (settings.epochs === 0) {
    settings.epochs = Math.max(5, Math.min(100, Math.ceil(50_000 / train.length)));
  }
  log(
    `fit-gate: ${train.length} training texts (with copies), ${heldout.length} held out, ${settings.epochs} epochs`,
  );

  const fit = trainTokenBag(
    train,
    {
      vocabRows: tokenizer.vocabSize,
      buckets: settings.buckets,
      width: settings.width,
      classes: experts.length,
    },
    { epochs: settings.epochs, lr: settings.lr, seed: settings.seed ^ 0xba9 },
  );
  const gate = exportTokenBag(fit.model, experts);
  const accuracy = (set: readonly TokenBagExample[]) =>
    set.filter((e) => argmax(tokenBagGateLogits(gate, e.ids)) === e.label).length /
    Math.max(set.length, 1);

  // Write the gate file and the manifest entry, then load the pack again to check both.
  const file = options.out ?? `gates/${group.id}.token_bag.safetensors`;
  const target = resolve(options.pack, file);
  const inside = relative(resolve(options.pack), target);
  if (isAbsolute(file) || inside.startsWith(`..${sep}`) || inside === '..') {
    throw new Error(`--out ${file} must be a path inside the pack folder`);
  }
  await mkdir(dirname(target), { recursive: true });
  await writeSafetensors(target, {
    'embedding.weight': gate.embedding,
    'out.weight': gate.outWeight,
    'out.bias': gate.outBias,
  });
  const manifestPath = join(options.pack, MANIFEST_FILE);
  const manifest = JSON.parse(await readFile(manifestPath, 'utf8')) as Manifest;
  const entry = manifest.groups.find((g) => g.id === group.id)!;
  if (entry.gate !== null)
    log(`fit-gate: replacing the ${entry.gate.type} gate ${entry.gate.file}`);
  entry.gate = {
    type: 'token_bag',
    file: inside.split(sep).join('/'),
    experts: [...experts],
    bigram_buckets: settings.buckets,
  };
  if (entry.default_adapter !== undefined) {
    log(`fit-gate: group '${group.id}' is now gated: its default_adapter is removed`);
    delete entry.default_adapter;
  }
  await writeFile(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`);
  const reloaded = await loadPack(options.pack);
  checkTokenizerFitsGates(reloaded, tokenizer.vocabSize);
  return {
    group: group.id,
    file: entry.gate.file,
    experts,
    examples: counts,
    heldoutAccuracy: heldout.length === 0 ? null : Math.round(accuracy(heldout) * 1e4) / 1e4,
    trainAccuracy: Math.round(accuracy(lines) * 1e4) / 1e4,
    trainingLoss: Math.round(fit.loss * 1e4) / 1e4,
    settings,
  };
}

const USAGE =
  'usage: fit-gate --pack DIR --group ID --data DIR [--out FILE] [--width 32] [--buckets 0] [--epochs N] [--lr 0.5] [--copies 4] [--heldout 0.1] [--seed 1]';

async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      pack: { type: 'string' },
      group: { type: 'string' },
      data: { type: 'string' },
      out: { type: 'string' },
      width: { type: 'string' },
      buckets: { type: 'string' },
      epochs: { type: 'string' },
      lr: { type: 'string' },
      copies: { type: 'string' },
      heldout: { type: 'string' },
      seed: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stderr.write(`${USAGE}\n`);
    return;
  }
  const { pack, group, data } = values;
  if (pack === undefined || group === undefined || data === undefined) {
    throw new Error('--pack, --group and --data are required');
  }
  for (const [flag, path] of [
    ['--pack', pack],
    ['--data', data],
  ] as const) {
    if (!(await stat(path).catch(() => undefined))?.isDirectory()) {
      throw new Error(`${flag} ${path} is not a folder`);
    }
  }
  const number = (flag: string, text: string | undefined, integer: boolean) => {
    if (text === undefined) return undefined;
    const value = Number(text);
    if (!Number.isFinite(value) || value < 0 || (integer && !Number.isSafeInteger(value))) {
      throw new Error(
        `${flag} must be a non-negative ${integer ? 'integer' : 'number'}, got '${text}'`,
      );
    }
    return value;
  };
  const result = await fitTokenBagGate({
    pack,
    group,
    data,
    ...(values.out === undefined ? {} : { out: values.out }),
    width: number('--width', values.width, true),
    buckets: number('--buckets', values.buckets, true),
    epochs: number('--epochs', values.epochs, true),
    lr: number('--lr', values.lr, false),
    copies: number('--copies', values.copies, true),
    heldout: number('--heldout', values.heldout, false),
    seed: number('--seed', values.seed, true),
    log: (line) => process.stderr.write(`${line}\n`),
  });
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main(process.argv.slice(2)).catch((error: unknown) => {
    process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n${USAGE}\n`);
    process.exitCode = 1;
  });
}
