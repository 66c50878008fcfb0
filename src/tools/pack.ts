/**
 * Command line: make a model pack from a model folder, add adapter folders to it, and train task
 * heads on it from labelled text.
 *
 *   npm run --silent pack -- create --backbone <hf-dir> --out models/<name>
 *        [--name ID] [--max-length N] [--pooling mean|cls|max] [--normalize true|false]
 *        [--quantize none|int8] [--onnx-export [--variant quantized]] [--no-build]
 *   npm run --silent pack -- add-adapter --pack models/<name> --group ID --adapter <dir>
 *        [--id ID] [--slots N] [--rank N] [--no-build]
 *   npm run --silent pack -- add-head --pack models/<name> --task ID --data DIR
 *        [--heldout 0.1] [--seed 1] [--epochs 300] [--lr 0.02] [--l2 0.01] [--pin GROUP:ADAPTER]
 *        [--replace] [--no-build]
 *
 * The pack serves embeddings at once (no adapter groups, no heads): `npm run infer -- --pack
 * models/<name> "text"` or `MODEL_DIR=models/<name> npm start`. For a Hugging Face folder the
 * pack graph is built and cached now (src/inference/pack-graph-plan.ts), so the first start does not
 * wait for it; --no-build leaves that to the first start. Errors name the file and field to fix.
 */
import { parseArgs } from 'node:util';
import { prepareEngineGraph } from '../inference/pack-graph-plan.js';
import { addAdapter, createPack } from '../pack/create.js';
import { BACKBONE_QUANTIZE_MODES, type BackboneQuantize } from '../pack/encoder-types.js';
import { isPackError } from '../pack/errors.js';
import { POOLING_MODES, type PoolingMode } from '../pack/types.js';
import { addHead, parsePin } from './add-head.js';

const USAGE = `usage: npm run --silent pack -- create --backbone DIR --out DIR [options]
  --backbone DIR       a Hugging Face model folder (config.json, model.safetensors or an index,
                       tokenizer.json), or with --onnx-export an ONNX export folder
  --out DIR            the new pack folder (must not exist), e.g. models/my-model
  --name ID            pack name (default: the out folder's name)
  --max-length N       most tokens per input (default: what the model allows)
  --pooling MODE       mean, cls or max (default: the folder's sentence-transformers config, else mean)
  --normalize BOOL     L2-normalise embeddings (default: the folder's Normalize module, else true)
  --quantize MODE      none (default) or int8: build the backbone graph with dynamic int8
                       projections (about 2x the items/s on CPU; manifest backbone.quantize)
  --onnx-export        the folder is an ONNX export (onnx/model.onnx or model.onnx)
  --variant quantized  with --onnx-export: run model_quantized.onnx
  --no-build           do not build the pack graph now (the first start builds it)

usage: npm run --silent pack -- add-adapter --pack DIR --group ID --adapter DIR [options]
  --pack DIR           an existing pack
  --group ID           the group to add it to (created, ungated, when the pack has none)
  --adapter DIR        a PEFT LoRA folder or an AdapterHub folder (safetensors weights; inside
                       the backbone's layers), or one of our own adapter folders (on top of it)
  --id ID              the adapter's id (default: the folder's name)
  --slots N, --rank N  for a new group: adapters held ready at once, and the largest rank a slot
                       holds (room for adapters loaded later at run time)
  --no-build           do not build the pack graph now

usage: npm run --silent pack -- add-head --pack DIR --task ID --data DIR [options]
  --pack DIR           an existing pack
  --task ID            the new task (head) id
  --data DIR           one folder per label (its name is the label) of .txt files, one example
                       per line; at least 2 labels. Each line is embedded by the pack as served
                       (the pooled state heads read) and a softmax regression is trained on them
  --heldout SHARE      share of each label's lines kept out to measure the head (default 0.1)
  --seed N             seed of the held-out split (default 1)
  --epochs N           full-batch training steps (default 300)
  --lr X, --l2 X       learning rate (default 0.02) and L2 penalty (default 0.01)
  --pin GROUP:ADAPTER  the task runs through this adapter (k = 1), in training and when served
  --replace            train an existing task again (otherwise its id is an error)
  --no-build           do not build the pack graph now (nor check the head through it)
  prints a JSON summary (held-out accuracy, and through the rebuilt pack, the served one)`;

async function main(): Promise<number> {
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse();
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help === true) {
    process.stderr.write(`${USAGE}\n`);
    return 0;
  }
  const usage = (message: string) => {
    process.stderr.write(`${message}\n${USAGE}\n`);
    return 2;
  };
  if (positionals[0] === 'add-adapter' && positionals.length === 1)
    return addAdapterCommand(values, usage);
  if (positionals[0] === 'add-head' && positionals.length === 1)
    return addHeadCommand(values, usage);
  if (positionals[0] !== 'create' || positionals.length !== 1)
    return usage("the command is 'create', 'add-adapter' or 'add-head'");
  if (values.backbone === undefined || values.out === undefined) {
    return usage('--backbone and --out are required');
  }
  const maxLength = values['max-length'] === undefined ? undefined : Number(values['max-length']);
  if (maxLength !== undefined && (!Number.isInteger(maxLength) || maxLength < 1)) {
    return usage('--max-length must be a positive integer');
  }
  const mode = values.pooling;
  if (mode !== undefined && !(POOLING_MODES as readonly string[]).includes(mode)) {
    return usage(`--pooling must be one of ${POOLING_MODES.join(', ')}`);
  }
  const normalize = values.normalize;
  if (normalize !== undefined && normalize !== 'true' && normalize !== 'false') {
    return usage('--normalize must be true or false');
  }
  if (values.variant !== undefined && (values.variant !== 'quantized' || !values['onnx-export'])) {
    return usage("--variant takes 'quantized', with --onnx-export");
  }
  const quantize = values.quantize;
  if (
    quantize !== undefined &&
    !(BACKBONE_QUANTIZE_MODES as readonly string[]).includes(quantize)
  ) {
    return usage(`--quantize must be one of ${BACKBONE_QUANTIZE_MODES.join(', ')}`);
  }
  if (quantize !== undefined && values['onnx-export']) {
    return usage(
      '--quantize is for a Hugging Face folder; an ONNX export runs as it is (--variant quantized runs its model_quantized.onnx)',
    );
  }
  if ((mode === undefined) !== (normalize === undefined)) {
    return usage('give --pooling and --normalize together (or neither: the folder decides)');
  }
  const log = (line: string) => process.stderr.write(`${line}\n`);
  try {
    const pack = await createPack({
      backbone: values.backbone,
      out: values.out,
      kind: values['onnx-export'] ? 'onnx-export' : 'huggingface',
      ...(values.variant === 'quantized' ? { variant: 'quantized' as const } : {}),
      ...(values.name === undefined ? {} : { name: values.name }),
      ...(quantize === undefined ? {} : { quantize: quantize as BackboneQuantize }),
      ...(maxLength === undefined ? {} : { maxLength }),
      ...(mode === undefined
        ? {}
        : { pooling: { mode: mode as PoolingMode, normalize: normalize === 'true' } }),
    });
    const int8 = pack.backbone.kind === 'huggingface' && pack.backbone.quantize === 'int8';
    log(
      `[pack] ${pack.dir}: ${pack.backbone.kind}${int8 ? ' (int8)' : ''} backbone, hidden size ${pack.hiddenSize}, max_length ${pack.maxLength}, pooling ${pack.pooling.mode}${pack.pooling.normalize ? ' + normalize' : ''}`,
    );
    if (values.build !== false && pack.backbone.kind === 'huggingface') {
      const graph = await prepareEngineGraph(pack, { log });
      log(`[pack] pack graph: ${String(graph.worker.model)}`);
    }
    log(`[pack] try it: npm run --silent infer -- --pack ${pack.dir} "some text"`);
    process.stdout.write(`${pack.dir}\n`);
    return 0;
  } catch (error) {
    if (isPackError(error)) {
      process.stderr.write(`error ${error.code}: ${error.message}\n`);
      return 1;
    }
    process.stderr.write(`error: ${error instanceof Error ? error.message : String(error)}\n`);
    return 1;
  }
}

/** `add-adapter`: copy an adapter folder into a pack, list it, check the pack, build its graph. */
async function addAdapterCommand(
  values: ReturnType<typeof parse>['values'],
  usage: (message: string) => number,
): Promise<number> {
  if (values.pack === undefined || values.group === undefined || values.adapter === undefined) {
    return usage('--pack, --group and --adapter are required');
  }
  const count = (name: 'slots' | 'rank') => {
    const raw = values[name];
    if (raw === undefined) return undefined;
    const value = Number(raw);
    if (!Number.isInteger(value) || value < 1)
      throw new Error(`--${name} must be a positive integer`);
    return value;
  };
  const log = (line: string) => process.stderr.write(`${line}\n`);
  try {
    const slots = count('slots');
    const rank = count('rank');
    const pack = await addAdapter({
      pack: values.pack,
      group: values.group,
      adapter: values.adapter,
      ...(values.id === undefined ? {} : { id: values.id }),
      ...(slots === undefined ? {} : { slots }),
      ...(rank === undefined ? {} : { rank }),
    });
    const group = pack.groups.find((g) => g.id === values.group)!;
    log(
      `[pack] ${pack.dir}: group '${group.id}' (${group.structure.kind}) holds ${group.adapters.map((a) => a.id).join(', ')}`,
    );
    if (values.build !== false && pack.backbone.kind === 'huggingface') {
      const graph = await prepareEngineGraph(pack, { log });
      log(`[pack] pack graph: ${String(graph.worker.model)}`);
    }
    process.stdout.write(`${pack.dir}\n`);
    return 0;
  } catch (error) {
    process.stderr.write(
      isPackError(error)
        ? `error ${error.code}: ${error.message}\n`
        : `error: ${error instanceof Error ? error.message : String(error)}\n`,
    );
    return 1;
  }
}

/** `add-head`: train a head on the pack's own features, list it, check it; JSON on stdout. */
async function addHeadCommand(
  values: ReturnType<typeof parse>['values'],
  usage: (message: string) => number,
): Promise<number> {
  if (values.pack === undefined || values.task === undefined || values.data === undefined) {
    return usage('--pack, --task and --data are required');
  }
  const number = (flag: 'heldout' | 'seed' | 'epochs' | 'lr' | 'l2', integer: boolean) => {
    const raw = values[flag];
    if (raw === undefined) return undefined;
    const value = Number(raw);
    if (
      raw.trim() === '' ||
      !Number.isFinite(value) ||
      value < 0 ||
      (integer && !Number.isSafeInteger(value))
    ) {
      throw new Error(
        `--${flag} must be a non-negative ${integer ? 'integer' : 'number'}, got '${raw}'`,
      );
    }
    return value;
  };
  let settings: Record<string, number | undefined>;
  let pin: ReturnType<typeof parsePin> | undefined;
  try {
    settings = {
      heldout: number('heldout', false),
      seed: number('seed', true),
      epochs: number('epochs', true),
      lr: number('lr', false),
      l2: number('l2', false),
    };
    pin = values.pin === undefined ? undefined : parsePin(values.pin);
  } catch (error) {
    return usage((error as Error).message);
  }
  const defined = Object.fromEntries(Object.entries(settings).filter(([, v]) => v !== undefined));
  try {
    const result = await addHead({
      pack: values.pack,
      task: values.task,
      data: values.data,
      ...defined,
      ...(pin === undefined ? {} : { pin }),
      replace: values.replace === true,
      build: values.build !== false,
      log: (line) => process.stderr.write(`${line}\n`),
    });
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    return 0;
  } catch (error) {
    process.stderr.write(
      isPackError(error)
        ? `error ${error.code}: ${error.message}\n`
        : `error: ${error instanceof Error ? error.message : String(error)}\n`,
    );
    return 1;
  }
}

function parse() {
  return parseArgs({
    allowPositionals: true,
    allowNegative: true,
    options: {
      backbone: { type: 'string' },
      out: { type: 'string' },
      name: { type: 'string' },
      'max-length': { type: 'string' },
      pooling: { type: 'string' },
      normalize: { type: 'string' },
      quantize: { type: 'string' },
      'onnx-export': { type: 'boolean' },
      variant: { type: 'string' },
      build: { type: 'boolean' },
      pack: { type: 'string' },
      group: { type: 'string' },
      adapter: { type: 'string' },
      id: { type: 'string' },
      slots: { type: 'string' },
      rank: { type: 'string' },
      task: { type: 'string' },
      data: { type: 'string' },
      heldout: { type: 'string' },
      seed: { type: 'string' },
      epochs: { type: 'string' },
      lr: { type: 'string' },
      l2: { type: 'string' },
      pin: { type: 'string' },
      replace: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
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
